//! The flicker metric: the warp error of Lai et al. 2018, "Learning Blind Video Temporal
//! Consistency" (ECCV), as `evaluate_WarpError.py` and `utils.detect_occlusion` in
//! phoenix104104/fast_blind_video_consistency compute it.
//!
//! Flow is measured on the *original* frames (so a restyle cannot hide its flicker by moving
//! things), both ways between neighbours; pixels that the forward–backward check or a motion
//! boundary marks as occluded are left out. For each pair of frames t, t+1:
//!
//! ```text
//! E_t = Σ M · ‖O_t − warp(O_{t+1}, F_fw)‖² / Σ M        (RGB in [0, 1])
//! ```
//!
//! and the score of a video is the mean of E_t. Absolute values depend on the flow method, so
//! the same number is computed for the original itself (the floor a restyle could reach) and
//! reported beside it, with their ratio.
//!
//! The warp error rewards blur (a video averaged toward grey flickers less), so the detail of
//! the frames is measured beside it: the mean squared Laplacian of the luminance, the stylized
//! video's over the original's.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use super::flow::{dis_flow, DisParams, Flow, Gray};
use super::warp::warp;
use crate::video::{decode::can_tonemap, probe, Decoder};
use crate::{Error, Frame, Progress, Result};

/// What `video-stylizer flicker` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarpError {
    /// Mean warp error of the stylized video.
    pub warp_error: f64,
    /// The same measure on the original video (same flows, same masks).
    pub warp_error_original: f64,
    /// `warp_error / warp_error_original`: 1 is as steady as the source; `None` when the
    /// original has no measurable change (a still picture).
    pub ratio: Option<f64>,
    /// Frames compared (pairs are `frames − 1`).
    pub frames: u64,
    /// Share of pixels left out as occluded, over all pairs.
    pub occluded_fraction: f64,
    /// Detail of the stylized frames over the original's ([`laplacian_energy`], summed over
    /// the frames): below 1 the restyle lost detail (blur), above 1 it added some (texture,
    /// or the noise a random model makes: compare modes with each other at the same seed, not
    /// with 1). `None` when the original has no detail (flat frames).
    pub detail: Option<f64>,
}

/// Detail of a frame: the mean squared Laplacian (4-neighbour) of its luminance in 0..255 over
/// the interior pixels; blur removes it first, sharpening adds to it.
pub fn laplacian_energy(g: &Gray) -> f64 {
    let (w, h) = (g.width, g.height);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let sum: f64 = (1..h - 1)
        .into_par_iter()
        .map(|y| {
            let d = &g.data;
            (1..w - 1)
                .map(|x| {
                    let i = y * w + x;
                    let l = 4.0 * d[i] - d[i - 1] - d[i + 1] - d[i - w] - d[i + w];
                    (l as f64) * (l as f64)
                })
                .sum::<f64>()
        })
        .sum();
    sum / ((w - 2) * (h - 2)) as f64
}

/// Occlusion mask of frame t (true = occluded) from the flow t→t+1 (`fw`) and t+1→t (`bw`),
/// as `detect_occlusion(bw, fw)` in the reference code: the forward flow must be undone by the
/// backward flow found where it lands, and motion boundaries of the forward flow are excluded.
pub fn occlusion(fw: &Flow, bw: &Flow) -> Vec<bool> {
    assert_eq!((fw.width, fw.height), (bw.width, bw.height), "flow sizes");
    let (w, h) = (fw.width, fw.height);
    // F̃: the backward flow seen from frame t, i.e. sampled where the forward flow lands.
    let bw_at = warp(bw.data.as_flattened(), 2, fw);
    let mag = |v: [f32; 2]| v[0] * v[0] + v[1] * v[1];
    (0..w * h)
        .into_par_iter()
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let f = fw.data[i];
            let b = [bw_at[2 * i], bw_at[2 * i + 1]];
            let sum = [f[0] + b[0], f[1] + b[1]];
            let inconsistent = mag(sum) > 0.01 * (mag(b) + mag(f)) + 0.5;
            // Forward differences, zero on the last column / row (compute_flow_gradients).
            let right = if x + 1 < w { fw.data[i + 1] } else { f };
            let down = if y + 1 < h { fw.data[i + w] } else { f };
            let du = [f[0] - right[0], f[1] - right[1]];
            let dv = [f[0] - down[0], f[1] - down[1]];
            let boundary = mag(du) + mag(dv) > 0.01 * mag(f) + 0.002;
            inconsistent || boundary
        })
        .collect()
}

/// Σ M‖a − warp(b)‖² / Σ M over the visible pixels (the reference divides by the pixel
/// count when everything is occluded, which then scores 0). Summed in fixed chunks, in order:
/// a work-stealing reduction would add in a different order from run to run.
fn pair_error(a: &[f32], b_warped: &[f32], occluded: &[bool]) -> f64 {
    const CHUNK: usize = 4096;
    let partial: Vec<(f64, u64)> = occluded
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(k, chunk)| {
            let mut acc = (0.0f64, 0u64);
            for (j, _) in chunk.iter().enumerate().filter(|(_, &occ)| !occ) {
                let i = k * CHUNK + j;
                acc.0 += (0..3)
                    .map(|c| (a[3 * i + c] - b_warped[3 * i + c]) as f64)
                    .map(|d| d * d)
                    .sum::<f64>();
                acc.1 += 1;
            }
            acc
        })
        .collect();
    let (sum, visible) = partial
        .into_iter()
        .fold((0.0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
    if visible == 0 {
        0.0
    } else {
        sum / visible as f64
    }
}

/// One frame of both videos, kept until the next one arrives.
struct Previous {
    gray: Gray,
    original: Vec<f32>,
    stylized: Vec<f32>,
}

/// Streaming warp-error meter: feed frames in order with [`FlickerMeter::push`]; only the
/// previous frame is kept, so any length of video measures in bounded memory.
pub struct FlickerMeter {
    params: DisParams,
    previous: Option<Previous>,
    frames: u64,
    sum_stylized: f64,
    sum_original: f64,
    occluded: u64,
    pixels: u64,
    detail_stylized: f64,
    detail_original: f64,
}

impl FlickerMeter {
    /// A meter computing flow with these DIS parameters.
    pub fn new(params: DisParams) -> Self {
        Self {
            params,
            previous: None,
            frames: 0,
            sum_stylized: 0.0,
            sum_original: 0.0,
            occluded: 0,
            pixels: 0,
            detail_stylized: 0.0,
            detail_original: 0.0,
        }
    }

    /// Adds frame t of the original and of the stylized video (same size).
    pub fn push(&mut self, original: &Frame, stylized: &Frame) -> Result<()> {
        if (original.width, original.height) != (stylized.width, stylized.height) {
            return Err(Error::Config(format!(
                "flicker: original frame {}x{} and stylized frame {}x{} differ in size",
                original.width, original.height, stylized.width, stylized.height
            )));
        }
        let next = Previous {
            gray: Gray::from_rgb(
                original.width as usize,
                original.height as usize,
                &original.data,
            ),
            original: original.to_unit_rgb(),
            stylized: stylized.to_unit_rgb(),
        };
        let (w, h) = (stylized.width as usize, stylized.height as usize);
        self.detail_stylized += laplacian_energy(&Gray::from_rgb(w, h, &stylized.data));
        self.detail_original += laplacian_energy(&next.gray);
        if let Some(prev) = &self.previous {
            let (fw, bw) = rayon::join(
                || dis_flow(&prev.gray, &next.gray, &self.params),
                || dis_flow(&next.gray, &prev.gray, &self.params),
            );
            let occluded = occlusion(&fw, &bw);
            let stylized = pair_error(&prev.stylized, &warp(&next.stylized, 3, &fw), &occluded);
            let original = pair_error(&prev.original, &warp(&next.original, 3, &fw), &occluded);
            self.sum_stylized += stylized;
            self.sum_original += original;
            self.occluded += occluded.iter().filter(|&&o| o).count() as u64;
            self.pixels += occluded.len() as u64;
        }
        self.previous = Some(next);
        self.frames += 1;
        Ok(())
    }

    /// The scores so far; needs at least two frames.
    pub fn finish(&self) -> Result<WarpError> {
        if self.frames < 2 {
            return Err(Error::Config(format!(
                "flicker needs at least 2 frames, got {}",
                self.frames
            )));
        }
        let pairs = (self.frames - 1) as f64;
        let (warp_error, warp_error_original) =
            (self.sum_stylized / pairs, self.sum_original / pairs);
        Ok(WarpError {
            warp_error,
            warp_error_original,
            ratio: (warp_error_original > 0.0).then(|| warp_error / warp_error_original),
            frames: self.frames,
            occluded_fraction: self.occluded as f64 / self.pixels as f64,
            detail: (self.detail_original > 0.0)
                .then(|| self.detail_stylized / self.detail_original),
        })
    }
}

/// Measures `stylized` against `original` (two video files): both are decoded at the
/// stylized video's size, frame by frame, up to the shorter of the two (a warning names a
/// difference in length) or `max_frames`.
pub fn measure_files(
    original: &Path,
    stylized: &Path,
    params: DisParams,
    max_frames: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<WarpError> {
    let (orig_info, styl_info) = (probe(original)?, probe(stylized)?);
    let (w, h) = (styl_info.width, styl_info.height);
    if orig_info.frame_count != styl_info.frame_count {
        progress.warn(&format!(
            "{} has {} frames, {} has {}: comparing the first {}",
            original.display(),
            orig_info.frame_count,
            stylized.display(),
            styl_info.frame_count,
            orig_info.frame_count.min(styl_info.frame_count)
        ));
    }
    let total = orig_info
        .frame_count
        .min(styl_info.frame_count)
        .min(max_frames.unwrap_or(u64::MAX));
    let tonemap = can_tonemap();
    let mut orig_frames = Decoder::open(&orig_info, w, h, 0, orig_info.hdr && tonemap)?;
    let mut styl_frames = Decoder::open(&styl_info, w, h, 0, styl_info.hdr && tonemap)?;
    let mut meter = FlickerMeter::new(params);
    progress.stage(crate::Stage::Render);
    while max_frames.is_none_or(|m| meter.frames < m) {
        if crate::cancel::requested() {
            return Err(Error::Config("flicker: interrupted".into()));
        }
        let (Some(o), Some(s)) = (orig_frames.next_frame()?, styl_frames.next_frame()?) else {
            break;
        };
        meter.push(&o, &s)?;
        progress.frame(meter.frames, total.max(meter.frames));
    }
    meter.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant_flow(w: usize, h: usize, d: [f32; 2]) -> Flow {
        Flow {
            width: w,
            height: h,
            data: vec![d; w * h],
        }
    }

    #[test]
    fn consistent_uniform_motion_is_visible_everywhere() {
        let fw = constant_flow(16, 12, [2.0, -1.0]);
        let bw = constant_flow(16, 12, [-2.0, 1.0]);
        assert!(occlusion(&fw, &bw).iter().all(|&o| !o));
    }

    #[test]
    fn flow_not_undone_by_the_backward_flow_is_occluded() {
        let fw = constant_flow(16, 12, [2.0, 0.0]);
        // The backward flow says "nothing moved": 2 px of disagreement, |2|² > 0.01·4 + 0.5.
        let bw = constant_flow(16, 12, [0.0, 0.0]);
        assert!(occlusion(&fw, &bw).iter().all(|&o| o));
    }

    #[test]
    fn motion_boundaries_are_occluded() {
        let (w, h) = (16, 8);
        let mut fw = constant_flow(w, h, [0.0, 0.0]);
        let mut bw = constant_flow(w, h, [0.0, 0.0]);
        // The right half moves by 0.2 px: consistent, but its left edge is a motion boundary.
        for y in 0..h {
            for x in w / 2..w {
                fw.data[y * w + x] = [0.2, 0.0];
                bw.data[y * w + x] = [-0.2, 0.0];
            }
        }
        let occ = occlusion(&fw, &bw);
        for y in 0..h {
            assert!(occ[y * w + w / 2 - 1], "boundary at row {y}");
            assert!(
                !occ[y * w + 2] && !occ[y * w + w - 3],
                "interior at row {y}"
            );
        }
    }

    #[test]
    fn pair_error_averages_over_visible_pixels() {
        let a = vec![0.5f32; 4 * 3];
        let mut b = a.clone();
        b[0] = 0.0; // pixel 0: 0.25
        b[3 * 3 + 1] = 1.0; // pixel 3: 0.25, but occluded
        let occ = [false, false, false, true];
        assert!((pair_error(&a, &b, &occ) - 0.25 / 3.0).abs() < 1e-9);
        assert_eq!(pair_error(&a, &b, &[true; 4]), 0.0);
    }

    #[test]
    fn detail_falls_with_blur_and_rises_with_sharpening() {
        let (w, h) = (48, 32);
        // A textured frame: a sum of two gratings.
        let base: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                128.0 + 50.0 * (x * 0.9).sin() + 40.0 * (y * 0.7 + x * 0.3).cos()
            })
            .collect();
        let gray = |data: Vec<f32>| Gray {
            width: w,
            height: h,
            data,
        };
        // A 3×3 box blur, and the unsharp mask that adds back twice what it removed.
        let blurred: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                let mut s = 0.0;
                for dy in [-1i64, 0, 1] {
                    for dx in [-1i64, 0, 1] {
                        let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                        let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                        s += base[yy * w + xx];
                    }
                }
                s / 9.0
            })
            .collect();
        let sharpened: Vec<f32> = base
            .iter()
            .zip(&blurred)
            .map(|(b, l)| b + 2.0 * (b - l))
            .collect();
        let original = laplacian_energy(&gray(base.clone()));
        assert!(original > 0.0);
        assert!(laplacian_energy(&gray(blurred)) < 0.8 * original);
        assert!(laplacian_energy(&gray(sharpened)) > 1.5 * original);
        assert_eq!(laplacian_energy(&gray(vec![7.0; w * h])), 0.0);
    }
}
