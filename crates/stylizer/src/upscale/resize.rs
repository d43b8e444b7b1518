//! Output sizes and the high-quality resize that brings the model's output to them.

use std::str::FromStr;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Rgb};

use crate::{Error, Frame, Result};

/// Where upscaled frames end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Fit inside `long`×`short` (landscape) or `short`×`long` (portrait), keeping the aspect
    /// ratio, even sizes. `1080p` = 1920×1080.
    Fit { long: u32, short: u32 },
    /// `factor` × the input size.
    Scale(u32),
}

impl Default for Target {
    fn default() -> Self {
        Target::Fit {
            long: 1920,
            short: 1080,
        }
    }
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let fit = |long, short| Ok(Target::Fit { long, short });
        match s.to_ascii_lowercase().as_str() {
            "1080p" | "fhd" => fit(1920, 1080),
            "1440p" => fit(2560, 1440),
            "2160p" | "4k" => fit(3840, 2160),
            "x2" => Ok(Target::Scale(2)),
            "x4" => Ok(Target::Scale(4)),
            _ => Err(Error::Config(format!(
                "--upscale-to {s}: expected 1080p, 1440p, 2160p, x2 or x4"
            ))),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fit { short, .. } => write!(f, "{short}p"),
            Target::Scale(k) => write!(f, "x{k}"),
        }
    }
}

fn even(v: f64) -> u32 {
    ((v / 2.0).round() as u32 * 2).max(2)
}

impl Target {
    /// Output size for a `w`×`h` input.
    pub fn size(&self, w: u32, h: u32) -> (u32, u32) {
        match *self {
            Target::Scale(k) => (w * k, h * k),
            Target::Fit { long, short } => {
                let (bw, bh) = if w >= h { (long, short) } else { (short, long) };
                let s = (bw as f64 / w as f64).min(bh as f64 / h as f64);
                (even(w as f64 * s), even(h as f64 * s))
            }
        }
    }
}

/// Lanczos-3 resize (antialiased when shrinking: the kernel widens with the scale factor).
pub fn resize(frame: &Frame, width: u32, height: u32) -> Frame {
    if (frame.width, frame.height) == (width, height) {
        return frame.clone();
    }
    let img: ImageBuffer<Rgb<u8>, &[u8]> =
        ImageBuffer::from_raw(frame.width, frame.height, frame.data.as_slice())
            .expect("Frame holds width*height*3 bytes");
    let out = imageops::resize(&img, width, height, FilterType::Lanczos3);
    Frame::from_rgb(width, height, out.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let fhd: Target = "1080p".parse().unwrap();
        // 854x480 ×4 = 3416x1920 → fits 1920 wide.
        assert_eq!(fhd.size(3416, 1920), (1920, 1080));
        assert_eq!(fhd.size(854, 480), (1920, 1080));
        // Portrait uses the rotated box.
        assert_eq!(fhd.size(480, 854), (1080, 1920));
        // 4:3 is height-bound; sizes stay even.
        assert_eq!(fhd.size(640, 480), (1440, 1080));
        assert_eq!(fhd.size(176, 144), (1320, 1080));
        let k: Target = "2160p".parse().unwrap();
        assert_eq!(k.size(1280, 720), (3840, 2160));
        assert_eq!("x2".parse::<Target>().unwrap().size(427, 240), (854, 480));
        assert!("720".parse::<Target>().is_err());
    }

    #[test]
    fn resize_keeps_flat_colour_and_size() {
        let f = Frame::from_rgb(40, 20, [10u8, 200, 30].repeat(800));
        let r = resize(&f, 18, 10);
        assert_eq!((r.width, r.height), (18, 10));
        assert!(r.data.chunks(3).all(|p| p == [10, 200, 30]));
    }
}
