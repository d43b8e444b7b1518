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

/// OpenCV's `cv2.resize(.., INTER_LINEAR)` of one f32 plane to `dw`×`dh`, computed as OpenCV
/// 4.14 does it for float images so that the result matches bit for bit: half-pixel centres,
/// edges clamped, the f32 fraction of an f64 position, a horizontal pass then a vertical one,
/// each `p + f·(q − p)` with a fused multiply-add (a plain `p·(1−f) + q·f` differs in the last
/// bit in ~20 % of pixels, which moves some 8-bit levels). Real-ESRGAN's `--alpha_upsampler`
/// other than `realesrgan` resizes the alpha plane this way.
pub fn linear(src: &[f32], w: usize, h: usize, dw: usize, dh: usize) -> Vec<f32> {
    // (first tap, second tap, fraction) per output position, as cv2's resize tables.
    let taps = |dn: usize, n: usize| -> Vec<(usize, usize, f32)> {
        let scale = 1.0 / (dn as f64 / n as f64);
        (0..dn)
            .map(|d| {
                let pos = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let s = pos.floor();
                let (s, f) = if s < 0.0 {
                    (0, 0.0)
                } else if s as usize >= n - 1 {
                    (n - 1, 0.0)
                } else {
                    (s as usize, pos - s)
                };
                (s, (s + 1).min(n - 1), f)
            })
            .collect()
    };
    let (xs, ys) = (taps(dw, w), taps(dh, h));
    let row = |y: usize| -> Vec<f32> {
        let r = &src[y * w..(y + 1) * w];
        xs.iter().map(|&(a, b, f)| lerp(r[a], r[b], f)).collect()
    };
    let mut out = Vec::with_capacity(dw * dh);
    for &(a, b, f) in &ys {
        let (ra, rb) = (row(a), row(b));
        out.extend(ra.iter().zip(&rb).map(|(&p, &q)| lerp(p, q, f)));
    }
    out
}

fn lerp(p: f32, q: f32, f: f32) -> f32 {
    (q - p).mul_add(f, p)
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

    #[test]
    fn linear_interpolates_between_pixel_centres_and_clamps_edges() {
        // 1-D ramp 0, 1, 2 doubled: centres at (d + 0.5) / 2 − 0.5.
        let up = linear(&[0.0, 1.0, 2.0], 3, 1, 6, 1);
        assert_eq!(up, [0.0, 0.25, 0.75, 1.25, 1.75, 2.0]);
        // Same size is the identity; a constant stays constant.
        let src: Vec<f32> = (0..12).map(|v| v as f32 * 0.1).collect();
        assert_eq!(linear(&src, 4, 3, 4, 3), src);
        assert!(linear(&[0.3; 6], 3, 2, 9, 6)
            .iter()
            .all(|&v| (v - 0.3).abs() < 1e-7));
    }
}
