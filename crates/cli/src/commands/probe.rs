//! `probe`: what ffprobe finds in a video, as text or JSON.

use std::path::Path;
use std::process::ExitCode;

use stylizer::video::{probe, Timing, VideoInfo};

pub(crate) fn print_probe(input: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let i: VideoInfo = probe(input)?;
    if json {
        let v = serde_json::json!({
            "width": i.width,
            "height": i.height,
            "fps": i.fps.to_string(),
            "avg_fps": i.avg_fps.map(|r| r.to_string()),
            "frame_count": i.frame_count,
            "duration": i.duration,
            "vfr": i.vfr(),
            "timing": match i.timing {
                Timing::Constant => "constant",
                Timing::Variable { declared: true } => "variable",
                Timing::Variable { declared: false } => "variable (undeclared)",
                Timing::Dropped { .. } => "dropped frames",
            },
            "coded_frames": match i.timing {
                Timing::Dropped { coded } => Some(coded),
                _ => None,
            },
            "has_audio": i.has_audio,
            "audio_codec": i.audio_codec,
            "audio_streams": i.audio_streams,
            "subtitle_streams": i.subtitle_streams,
            "pix_fmt": i.pix_fmt,
            "bit_depth": i.bit_depth,
            "hdr": i.hdr,
            "rotation": i.rotation,
            "codec": i.codec,
            "coded_width": i.coded_width,
            "coded_height": i.coded_height,
            "video_start_offset": i.video_start_offset,
            "format": i.format_name,
        });
        out!("{v}");
    } else {
        out!("{}", i.path.display());
        out!(
            "  video:     {} {}x{} (displayed; stored {}x{}, rotation {}°)",
            i.codec,
            i.width,
            i.height,
            i.coded_width,
            i.coded_height,
            i.rotation
        );
        out!(
            "  frames:    {} at {} fps ({:.3} fps){}, {:.3} s",
            i.frame_count,
            i.fps,
            i.fps.as_f64(),
            match i.timing {
                Timing::Constant => String::new(),
                Timing::Variable { declared: true } => ", variable frame rate".into(),
                Timing::Variable { declared: false } =>
                    ", variable frame rate (found from the timestamps)".into(),
                Timing::Dropped { coded } => format!(
                    ", {} dropped frames (repeats of the picture before)",
                    i.frame_count.saturating_sub(coded)
                ),
            },
            i.duration
        );
        out!(
            "  pixels:    {}, {}-bit{}",
            i.pix_fmt,
            i.bit_depth,
            if i.hdr { ", HDR" } else { "" }
        );
        out!(
            "  audio:     {}",
            match &i.audio_codec {
                Some(c) => format!("{c} ({} stream(s))", i.audio_streams),
                None => "none".into(),
            }
        );
        out!("  subtitles: {}", i.subtitle_streams);
    }
    Ok(ExitCode::SUCCESS)
}
