//! `stylize --preview [N]`: before committing hours, render N frames spread over the video
//! with the run's own settings and seed, write a contact sheet (originals above, results
//! below, the settings and the measured seconds per frame written under them) next to the
//! output, and print how long the whole video would take. Each frame is rendered as a run
//! renders it at the start of a segment: the same frame as the full video's under cross-frame
//! attention and keyframes; under flow fusion the video's frame also carries the frames
//! before it along the flow, which the preview's starts afresh from the frame before.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{imageops, Rgb, RgbImage};
use stylizer::pipeline::{self, Job, PreviewFrame};
use stylizer::video::probe;
use stylizer::{Frame, FrameStage, Progress};

use crate::progress::CliProgress;

/// The frames a preview of `n` frames shows out of `count`: the middles of n equal parts.
pub fn spread(count: u64, n: u64) -> Vec<u64> {
    let n = n.clamp(1, count.max(1));
    (0..n).map(|i| (2 * i + 1) * count / (2 * n)).collect()
}

/// `<output stem>_preview.png` beside the output.
pub fn sheet_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    output.with_file_name(format!("{stem}_preview.png"))
}

/// Renders the preview of `job`, writes its sheet and prints the estimate. `frames_per_render`:
/// the video frames one preview render pays for (1; under AnimateDiff a frame renders its
/// whole chunk, and the video advances by the chunk's stride per chunk).
pub fn run(
    job: &Job,
    stages: &mut [Box<dyn FrameStage>],
    n: u64,
    settings: &[String],
    frames_per_render: u64,
    progress: &mut CliProgress,
) -> anyhow::Result<()> {
    progress.stage(stylizer::Stage::Probe);
    let info = probe(&job.input)?;
    let indices = spread(info.frame_count, n);
    let frames = pipeline::preview(job, &info, stages, &indices, progress)?;
    progress.finish();
    let per_frame = frames.iter().map(|f| f.seconds).sum::<f64>()
        / frames.len() as f64
        / frames_per_render.max(1) as f64;
    let mut lines = settings.to_vec();
    lines.push(format!(
        "frames {} of {}; {per_frame:.2} s per frame",
        indices
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        info.frame_count
    ));
    let sheet = contact_sheet(&frames, &lines);
    let path = sheet_path(&job.output);
    let partial = path.with_extension("png.partial");
    sheet
        .save_with_format(&partial, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    out!(
        "preview: {} frames at {per_frame:.2} s/frame; the whole video ({} frames) would take about {} plus model loading; wrote {}",
        frames.len(),
        info.frame_count,
        duration(per_frame * info.frame_count as f64),
        path.display()
    );
    Ok(())
}

/// "2 h 05 min", "14 min", "38 s".
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=5999 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

fn to_image(frame: &Frame) -> RgbImage {
    RgbImage::from_raw(frame.width, frame.height, frame.data.clone())
        .expect("a frame's buffer matches its size")
}

/// Originals in the top row, results (scaled to the originals' size) below, then the text.
fn contact_sheet(frames: &[PreviewFrame], lines: &[String]) -> RgbImage {
    let (w, h) = (frames[0].original.width, frames[0].original.height);
    let width = w * frames.len() as u32;
    let cols = (width / GLYPH).max(1) as usize;
    let wrapped: Vec<String> = lines
        .iter()
        .flat_map(|l| {
            let chars: Vec<char> = l.chars().collect();
            chars
                .chunks(cols)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
        })
        .collect();
    let text_h = (wrapped.len() as u32) * (GLYPH + 2) + 4;
    let mut sheet = RgbImage::new(width, 2 * h + text_h);
    for (i, f) in frames.iter().enumerate() {
        let x = i as u32 * w;
        imageops::replace(&mut sheet, &to_image(&f.original), x as i64, 0);
        let mut out = to_image(&f.rendered);
        if (out.width(), out.height()) != (w, h) {
            out = imageops::resize(&out, w, h, imageops::FilterType::Triangle);
        }
        imageops::replace(&mut sheet, &out, x as i64, h as i64);
    }
    for (row, line) in wrapped.iter().enumerate() {
        let y = 2 * h + 3 + row as u32 * (GLYPH + 2);
        for (col, c) in line.chars().enumerate() {
            draw_char(&mut sheet, col as u32 * GLYPH, y, c);
        }
    }
    sheet
}

/// Glyph cell size of the 8×8 font.
const GLYPH: u32 = 8;

fn draw_char(img: &mut RgbImage, x: u32, y: u32, c: char) {
    let code = if c.is_ascii() {
        c as usize
    } else {
        b'?' as usize
    };
    let rows = font8x8::legacy::BASIC_LEGACY[code];
    for (dy, bits) in rows.iter().enumerate() {
        for dx in 0..8u32 {
            let (px, py) = (x + dx, y + dy as u32);
            if bits >> dx & 1 == 1 && px < img.width() && py < img.height() {
                img.put_pixel(px, py, Rgb([255, 255, 255]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_spread_and_names_derived() {
        assert_eq!(spread(100, 4), vec![12, 37, 62, 87]);
        assert_eq!(spread(3, 4), vec![0, 1, 2]);
        assert_eq!(spread(1, 4), vec![0]);
        assert_eq!(
            sheet_path(Path::new("/v/clip_stylized.mp4")),
            PathBuf::from("/v/clip_stylized_preview.png")
        );
        assert_eq!(duration(38.2), "38 s");
        assert_eq!(duration(14.0 * 60.0), "14 min");
        assert_eq!(duration(2.0 * 3600.0 + 5.0 * 60.0), "2 h 05 min");
    }
}
