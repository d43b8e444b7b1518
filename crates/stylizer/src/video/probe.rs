//! What is in a video file, from `ffprobe -print_format json`.
//!
//! Frame rates are kept as exact rationals: `30000/1001` must reach the encoder as
//! `30000/1001`, not as 29.97, or a long clip drifts out of sync with its audio.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::process::{output, Tool};
use crate::{Error, Result};

/// An exact, positive rational number (a frame rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rational {
    pub num: u64,
    pub den: u64,
}

impl Rational {
    /// Parses ffprobe's `"30000/1001"` (or a bare integer); `None` for `0/0` and other
    /// non-positive values, which ffprobe prints when it does not know.
    pub fn parse(s: &str) -> Option<Self> {
        let (n, d) = s.split_once('/').unwrap_or((s, "1"));
        let (num, den) = (n.trim().parse::<u64>().ok()?, d.trim().parse::<u64>().ok()?);
        (num > 0 && den > 0).then(|| Self::new(num, den))
    }

    /// Reduced `num/den`.
    pub fn new(num: u64, den: u64) -> Self {
        fn gcd(a: u64, b: u64) -> u64 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let g = gcd(num, den).max(1);
        Self {
            num: num / g,
            den: den / g,
        }
    }

    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl std::fmt::Display for Rational {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// Everything the pipeline needs to know about an input video.
#[derive(Debug, Clone, Serialize)]
pub struct VideoInfo {
    /// The probed file.
    pub path: PathBuf,
    /// Size as displayed: after rotation and with square pixels.
    pub width: u32,
    pub height: u32,
    /// Size of the stored (coded) picture.
    pub coded_width: u32,
    pub coded_height: u32,
    /// Rotation to apply for display, clockwise degrees (0, 90, 180, 270).
    pub rotation: u32,
    /// The frame rate the output is rendered at: `r_frame_rate` for constant-rate input,
    /// `avg_frame_rate` for variable-rate input.
    pub fps: Rational,
    /// The container's average frame rate (frames / duration).
    pub avg_fps: Option<Rational>,
    /// Variable frame rate: frames are re-timed to `fps` (dropped or repeated) on decode.
    pub vfr: bool,
    /// Frames in the video stream (from the container, else counted).
    pub frame_count: u64,
    /// Seconds.
    pub duration: f64,
    /// When the video stream starts relative to the file's start (seconds); carried over to
    /// the output so that audio stays aligned.
    pub video_start_offset: f64,
    pub pix_fmt: String,
    pub bit_depth: u32,
    /// PQ (smpte2084) or HLG (arib-std-b67) transfer: tone-mapped to SDR on decode.
    pub hdr: bool,
    pub color_transfer: Option<String>,
    pub codec: String,
    pub has_audio: bool,
    pub audio_codec: Option<String>,
    pub audio_streams: u32,
    pub subtitle_streams: u32,
    pub subtitle_codecs: Vec<String>,
    /// Index of the chosen stream among the file's video streams (for `-map 0:v:N`).
    pub video_stream: usize,
    /// ffprobe's `format_name` ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...).
    pub format_name: String,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Deserialize, Default)]
struct FormatJson {
    #[serde(default)]
    format_name: String,
    duration: Option<String>,
    start_time: Option<String>,
}

#[derive(Deserialize, Default)]
struct StreamJson {
    #[serde(default)]
    codec_type: String,
    #[serde(default)]
    codec_name: String,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    bits_per_raw_sample: Option<String>,
    sample_aspect_ratio: Option<String>,
    r_frame_rate: Option<String>,
    avg_frame_rate: Option<String>,
    nb_frames: Option<String>,
    duration: Option<String>,
    start_time: Option<String>,
    color_transfer: Option<String>,
    #[serde(default)]
    disposition: std::collections::HashMap<String, i64>,
    #[serde(default)]
    tags: std::collections::HashMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

fn parse_f64(s: &Option<String>) -> Option<f64> {
    s.as_deref()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// Checks that `path` is a readable regular file before handing it to ffprobe, so the
/// common mistakes get a precise message.
fn check_input_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(path, "no such file"),
        std::io::ErrorKind::PermissionDenied => Error::input(path, "permission denied"),
        _ => Error::input(path, e.to_string()),
    })?;
    if meta.is_dir() {
        return Err(Error::input(path, "is a folder, not a video file"));
    }
    if meta.len() == 0 {
        return Err(Error::input(path, "is empty (0 bytes)"));
    }
    std::fs::File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
    Ok(())
}

/// Probes `path` and describes its first video stream (cover art is skipped).
pub fn probe(path: &Path) -> Result<VideoInfo> {
    check_input_file(path)?;
    let mut cmd = Tool::Ffprobe.command();
    cmd.args(["-print_format", "json", "-show_format", "-show_streams"])
        .arg(path);
    let json = match output(Tool::Ffprobe, cmd) {
        Ok(json) => json,
        // ffprobe failing on an existing file means it is not a media file ffmpeg can read.
        Err(Error::Ffmpeg { stderr, .. }) => {
            return Err(Error::input(
                path,
                format!("not a video file ffmpeg can read ({stderr})"),
            ))
        }
        Err(e) => return Err(e),
    };
    let parsed: ProbeJson = serde_json::from_slice(&json)
        .map_err(|e| Error::input(path, format!("unreadable ffprobe output: {e}")))?;
    info_from_json(path, parsed)
}

fn info_from_json(path: &Path, p: ProbeJson) -> Result<VideoInfo> {
    let format = p.format.unwrap_or_default();
    let videos: Vec<&StreamJson> = p
        .streams
        .iter()
        .filter(|s| s.codec_type == "video")
        .collect();
    let (video_stream, v) = videos
        .iter()
        .enumerate()
        .find(|(_, s)| s.disposition.get("attached_pic").copied().unwrap_or(0) == 0)
        .map(|(i, s)| (i, *s))
        .ok_or_else(|| {
            let has_audio = p.streams.iter().any(|s| s.codec_type == "audio");
            Error::input(
                path,
                if has_audio {
                    "has no video stream (audio only)"
                } else {
                    "has no video stream"
                },
            )
        })?;
    let (coded_width, coded_height) = match (v.width, v.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(Error::input(path, "video stream has no picture size")),
    };

    let rotation = rotation_of(v);
    let sar = v
        .sample_aspect_ratio
        .as_deref()
        .map(|s| s.replace(':', "/"))
        .and_then(|s| Rational::parse(&s))
        .unwrap_or(Rational { num: 1, den: 1 });
    // Square pixels: stretch the width by the sample aspect ratio, then rotate.
    let square_w = ((coded_width as u64 * sar.num) as f64 / sar.den as f64).round() as u32;
    let (width, height) = if rotation % 180 == 90 {
        (coded_height, square_w)
    } else {
        (square_w, coded_height)
    };

    let r_fps = v.r_frame_rate.as_deref().and_then(Rational::parse);
    let avg_fps = v.avg_frame_rate.as_deref().and_then(Rational::parse);
    let (fps, vfr) = match (r_fps, avg_fps) {
        (Some(r), Some(a)) => {
            let differ = (r.as_f64() - a.as_f64()).abs() / a.as_f64() > 0.01;
            if differ {
                (a, true)
            } else {
                (r, false)
            }
        }
        (Some(r), None) => (r, false),
        (None, Some(a)) => (a, false),
        (None, None) => return Err(Error::input(path, "video stream has no frame rate")),
    };

    let duration = parse_f64(&v.duration)
        .or_else(|| parse_f64(&format.duration))
        .unwrap_or(0.0);
    let video_start_offset = match (parse_f64(&v.start_time), parse_f64(&format.start_time)) {
        (Some(v), Some(f)) => (v - f).max(0.0),
        _ => 0.0,
    };
    let frame_count = match v.nb_frames.as_deref().and_then(|n| n.parse::<u64>().ok()) {
        Some(n) if n > 0 && !vfr => n,
        // VFR is re-timed to `fps` on decode, so the container's count is not what we render.
        _ if vfr && duration > 0.0 => (duration * fps.as_f64()).round() as u64,
        _ => count_frames(path, video_stream)?,
    };
    if frame_count == 0 {
        return Err(Error::input(path, "video stream has no frames"));
    }

    let pix_fmt = v.pix_fmt.clone().unwrap_or_default();
    let bit_depth = v
        .bits_per_raw_sample
        .as_deref()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| bit_depth_of(&pix_fmt));
    let hdr = matches!(
        v.color_transfer.as_deref(),
        Some("smpte2084") | Some("arib-std-b67")
    );

    let audio: Vec<&StreamJson> = p
        .streams
        .iter()
        .filter(|s| s.codec_type == "audio")
        .collect();
    let subtitle_codecs: Vec<String> = p
        .streams
        .iter()
        .filter(|s| s.codec_type == "subtitle")
        .map(|s| s.codec_name.clone())
        .collect();

    Ok(VideoInfo {
        path: path.to_path_buf(),
        width,
        height,
        coded_width,
        coded_height,
        rotation,
        fps,
        avg_fps,
        vfr,
        frame_count,
        duration,
        video_start_offset,
        pix_fmt,
        bit_depth,
        hdr,
        color_transfer: v.color_transfer.clone(),
        codec: v.codec_name.clone(),
        has_audio: !audio.is_empty(),
        audio_codec: audio.first().map(|a| a.codec_name.clone()),
        audio_streams: audio.len() as u32,
        subtitle_streams: subtitle_codecs.len() as u32,
        subtitle_codecs,
        video_stream,
        format_name: format.format_name,
    })
}

/// Clockwise display rotation from the display-matrix side data (ffprobe reports it
/// counter-clockwise) or the legacy `rotate` tag.
fn rotation_of(v: &StreamJson) -> u32 {
    let ccw = v
        .side_data_list
        .iter()
        .find_map(|sd| sd.get("rotation").and_then(|r| r.as_f64()))
        .map(|r| -r)
        .or_else(|| v.tags.get("rotate").and_then(|r| r.parse::<f64>().ok()));
    let deg = ccw.unwrap_or(0.0).round() as i64;
    // Snap to quarter turns; odd angles are not something ffmpeg's autorotate applies.
    (((deg + 45).rem_euclid(360)) / 90 * 90) as u32
}

/// Bits per component from the pixel format's name (yuv420p10le → 10).
fn bit_depth_of(pix_fmt: &str) -> u32 {
    let digits: String = pix_fmt
        .trim_end_matches("le")
        .trim_end_matches("be")
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse::<u32>()
        .ok()
        .filter(|d| (9..=16).contains(d))
        .unwrap_or(8)
}

/// Counts video packets when the container does not store a frame count (Matroska, ...).
fn count_frames(path: &Path, video_stream: usize) -> Result<u64> {
    let mut cmd: Command = Tool::Ffprobe.command();
    cmd.args(["-select_streams", &format!("v:{video_stream}")])
        .args(["-count_packets", "-show_entries", "stream=nb_read_packets"])
        .args(["-print_format", "csv=p=0"])
        .arg(path);
    let out = output(Tool::Ffprobe, cmd)?;
    let text = String::from_utf8_lossy(&out);
    Ok(text.trim().trim_end_matches(',').parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationals_parse_and_reduce() {
        assert_eq!(
            Rational::parse("30000/1001"),
            Some(Rational {
                num: 30000,
                den: 1001
            })
        );
        assert_eq!(Rational::parse("50/2").unwrap().to_string(), "25/1");
        assert_eq!(Rational::parse("25").unwrap().to_string(), "25/1");
        assert_eq!(Rational::parse("0/0"), None);
        assert_eq!(Rational::parse("abc"), None);
    }

    #[test]
    fn bit_depth_from_pix_fmt() {
        assert_eq!(bit_depth_of("yuv420p"), 8);
        assert_eq!(bit_depth_of("yuv420p10le"), 10);
        assert_eq!(bit_depth_of("yuv444p12be"), 12);
        assert_eq!(bit_depth_of("rgb24"), 8);
        assert_eq!(bit_depth_of("gray16le"), 16);
    }

    fn stream(json: serde_json::Value) -> StreamJson {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn rotation_from_display_matrix_and_tag() {
        let s = stream(
            serde_json::json!({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}),
        );
        assert_eq!(rotation_of(&s), 90);
        let s = stream(serde_json::json!({"side_data_list": [{"rotation": 90}]}));
        assert_eq!(rotation_of(&s), 270);
        let s = stream(serde_json::json!({"tags": {"rotate": "180"}}));
        assert_eq!(rotation_of(&s), 180);
        assert_eq!(rotation_of(&stream(serde_json::json!({}))), 0);
    }

    #[test]
    fn vfr_uses_average_rate_and_rotation_swaps_sides() {
        let p: ProbeJson = serde_json::from_value(serde_json::json!({
            "streams": [
                {"codec_type": "video", "codec_name": "mjpeg", "width": 10, "height": 10,
                 "disposition": {"attached_pic": 1}, "r_frame_rate": "90000/1", "avg_frame_rate": "0/0"},
                {"codec_type": "video", "codec_name": "h264", "width": 640, "height": 360,
                 "sample_aspect_ratio": "1:1", "r_frame_rate": "60/1", "avg_frame_rate": "24000/1001",
                 "duration": "10.0", "pix_fmt": "yuv420p",
                 "side_data_list": [{"rotation": -90}]},
                {"codec_type": "audio", "codec_name": "aac"}
            ],
            "format": {"format_name": "mov,mp4", "duration": "10.0"}
        }))
        .unwrap();
        let info = info_from_json(Path::new("x.mp4"), p).unwrap();
        assert_eq!(info.video_stream, 1);
        assert!(info.vfr);
        assert_eq!(info.fps.to_string(), "24000/1001");
        assert_eq!((info.width, info.height), (360, 640));
        assert_eq!(info.frame_count, 240);
        assert_eq!(info.audio_codec.as_deref(), Some("aac"));
    }

    #[test]
    fn anamorphic_width_is_stretched() {
        let p: ProbeJson = serde_json::from_value(serde_json::json!({
            "streams": [{"codec_type": "video", "codec_name": "mpeg2video", "width": 720, "height": 576,
                "sample_aspect_ratio": "64:45", "r_frame_rate": "25/1", "avg_frame_rate": "25/1",
                "nb_frames": "50"}],
        }))
        .unwrap();
        let info = info_from_json(Path::new("x.mpg"), p).unwrap();
        assert_eq!((info.width, info.height), (1024, 576));
        assert!(!info.vfr);
    }

    #[test]
    fn audio_only_is_refused() {
        let p: ProbeJson = serde_json::from_value(serde_json::json!({
            "streams": [{"codec_type": "audio", "codec_name": "mp3"}],
        }))
        .unwrap();
        let e = info_from_json(Path::new("a.mp3"), p).unwrap_err();
        assert!(e.to_string().contains("audio only"), "{e}");
    }
}
