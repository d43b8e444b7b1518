//! Gaussian noise carried along a video's optical flow, so that the noise a diffusion model
//! starts from moves with the scene instead of staying on the screen while the scene moves
//! under it. Go-with-the-Flow's training-free warper (Burgert et al. 2025, "Go-with-the-Flow:
//! Motion-Controllable Video Diffusion Models Using Real-Time Warped Noise", CVPR;
//! RyannDaGreat/CommonSource `noise_warp.py`: `NoiseWarper`, `warp_xyωc`, `regaussianize`, with
//! its defaults: no sub-pixel positions, no extra noise mixed in).
//!
//! The state is a noise image with a weight per pixel. One step along a forward flow F moves
//! every pixel to where F takes it ("shrink": the pixels landing on one spot are merged, the
//! weighted sum divided by the root of the summed squared weights, which keeps N(0, 1)), and
//! fills every spot nothing lands on from where −F comes from ("expand": a copy). Copies are
//! what would correlate pixels; [`regaussianize`] splits every group of identical values into
//! value/√count plus zero-mean fresh noise, which makes them independent N(0, 1) again while
//! their sum is kept.

use std::collections::HashMap;

use super::flow::Flow;

/// A noise image (planar, `channels` × `height` × `width`) and its weights, warped frame by
/// frame.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseWarper {
    pub channels: usize,
    pub width: usize,
    pub height: usize,
    /// Planar noise, channel by channel.
    pub noise: Vec<f32>,
    /// One weight per pixel, > 0.
    pub weight: Vec<f32>,
}

impl NoiseWarper {
    /// Starts from `noise` (planar, N(0, 1) draws), every weight 1.
    pub fn new(channels: usize, width: usize, height: usize, noise: Vec<f32>) -> Self {
        assert_eq!(noise.len(), channels * width * height, "noise size");
        Self {
            channels,
            width,
            height,
            noise,
            weight: vec![1.0; width * height],
        }
    }

    /// One step along the forward flow `flow` (previous → current frame, on this grid):
    /// `warp_xyωc` with `xy_mode="none"`. `fresh` holds `channels` × `height` × `2·width` N(0, 1)
    /// draws for [`regaussianize`] (planar; the reference's `torch.randn_like` on the shrink and
    /// expand images side by side).
    pub fn step(&mut self, flow: &Flow, fresh: &[f32]) {
        let (w, h, c) = (self.width, self.height, self.channels);
        assert_eq!((flow.width, flow.height), (w, h), "flow size");
        assert_eq!(fresh.len(), c * h * 2 * w, "fresh noise size");
        let n = w * h;
        // Nearest sample, as grid_sample(mode="nearest", align_corners=True, zero padding):
        // None where the position rounds outside the grid.
        let at = |x: f32, y: f32| -> Option<usize> {
            let (x, y) = (x.round_ties_even(), y.round_ties_even());
            (x >= 0.0 && y >= 0.0 && x < w as f32 && y < h as f32)
                .then(|| y as usize * w + x as usize)
        };
        // Expand: every pixel copies the state where −F takes it; outside, weight 1, noise 0.
        // Shrink: every pixel moves to where F takes it; a pixel leaving the grid stays put
        // as weight 1, noise 0 (the reference's `init`).
        let mut expand_from = vec![None; n];
        let mut shrink_to = vec![0usize; n];
        let mut shrink_kept = vec![true; n];
        for i in 0..n {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            let [dx, dy] = flow.data[i];
            expand_from[i] = at(x - dx, y - dy);
            match at(x + dx, y + dy) {
                Some(j) => shrink_to[i] = j,
                None => {
                    shrink_to[i] = i;
                    shrink_kept[i] = false;
                }
            }
        }
        let mut landed = vec![false; n];
        for &j in &shrink_to {
            landed[j] = true;
        }
        // The shrink and expand images side by side, (c, h, 2w), with their weights.
        let w2 = 2 * w;
        let mut concat = vec![0f32; c * h * w2];
        let mut weight = vec![0f32; h * w2];
        for i in 0..n {
            let (x, y) = (i % w, i / w);
            let (left, right) = (y * w2 + x, y * w2 + w + x);
            weight[left] = if shrink_kept[i] { self.weight[i] } else { 1.0 };
            weight[right] = match (landed[i], expand_from[i]) {
                (false, Some(j)) => self.weight[j],
                _ => 1.0,
            };
            for ch in 0..c {
                let plane = &self.noise[ch * n..(ch + 1) * n];
                concat[ch * h * w2 + left] = if shrink_kept[i] { plane[i] } else { 0.0 };
                concat[ch * h * w2 + right] = match (landed[i], expand_from[i]) {
                    (false, Some(j)) => plane[j],
                    _ => 0.0,
                };
            }
        }
        let counts = regaussianize(&mut concat, c, h * w2, fresh);
        for (wt, count) in weight.iter_mut().zip(&counts) {
            *wt /= count;
        }
        // Shrink: merge what lands on every pixel, weighted.
        let mut sum_w = vec![0f32; n];
        let mut sum_w2 = vec![0f32; n];
        let mut sum_nw = vec![0f32; c * n];
        for (i, &j) in shrink_to.iter().enumerate() {
            let src = (i / w) * w2 + i % w;
            let wt = weight[src];
            sum_w[j] += wt;
            sum_w2[j] += wt * wt;
            for ch in 0..c {
                sum_nw[ch * n + j] += concat[ch * h * w2 + src] * wt;
            }
        }
        for i in 0..n {
            let (x, y) = (i % w, i / w);
            let right = y * w2 + w + x;
            if landed[i] {
                self.weight[i] = sum_w[i];
                for ch in 0..c {
                    self.noise[ch * n + i] = sum_nw[ch * n + i] / sum_w2[i].sqrt();
                }
            } else {
                self.weight[i] = weight[right];
                for ch in 0..c {
                    self.noise[ch * n + i] = concat[ch * h * w2 + right];
                }
            }
        }
        // Keep the weights near 1: divided by their mean, floored, pulled towards 1.
        let mean = self.weight.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        for v in &mut self.weight {
            *v = (*v / mean as f32 + 1e-5).powf(0.9999);
        }
    }

    /// The noise on a grid `factor` times coarser (a latent grid): the sum over every
    /// `factor`×`factor` block divided by `factor`, which keeps N(0, 1) (the reference's area
    /// resize times the factor). Planar, `channels` × (height/factor) × (width/factor).
    pub fn downscaled(&self, factor: usize) -> Vec<f32> {
        let (w, h) = (self.width, self.height);
        assert!(w % factor == 0 && h % factor == 0, "noise grid and factor");
        let (cw, ch) = (w / factor, h / factor);
        let mut out = vec![0f32; self.channels * cw * ch];
        for c in 0..self.channels {
            let plane = &self.noise[c * w * h..(c + 1) * w * h];
            for y in 0..h {
                for x in 0..w {
                    out[c * cw * ch + (y / factor) * cw + x / factor] += plane[y * w + x];
                }
            }
        }
        for v in &mut out {
            *v /= factor as f32;
        }
        out
    }
}

/// Makes copies independent again: pixels (of `pixels`, planar over `channels`) whose first
/// channel holds the same value form a group; each becomes value/√count plus `fresh` minus the
/// group's mean of `fresh`. Returns every pixel's group size.
pub fn regaussianize(noise: &mut [f32], channels: usize, pixels: usize, fresh: &[f32]) -> Vec<f32> {
    let mut groups: HashMap<u32, usize> = HashMap::new();
    let mut group = Vec::with_capacity(pixels);
    for &v in &noise[..pixels] {
        // -0.0 and 0.0 are one value for torch.unique.
        let key = if v == 0.0 { 0 } else { v.to_bits() };
        let next = groups.len();
        group.push(*groups.entry(key).or_insert(next));
    }
    let mut count = vec![0f32; groups.len()];
    for &g in &group {
        count[g] += 1.0;
    }
    for c in 0..channels {
        let (plane, draws) = (
            &mut noise[c * pixels..(c + 1) * pixels],
            &fresh[c * pixels..(c + 1) * pixels],
        );
        let mut sum = vec![0f32; groups.len()];
        for (&g, &d) in group.iter().zip(draws) {
            sum[g] += d;
        }
        for ((v, &g), &d) in plane.iter_mut().zip(&group).zip(draws) {
            *v = *v / count[g].sqrt() + (d - sum[g] / count[g]);
        }
    }
    group.iter().map(|&g| count[g]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::noise::normals;

    /// Fresh N(0, 1) draws from a counter.
    fn normal(rng: &mut u64, n: usize) -> Vec<f32> {
        *rng += 1;
        normals(*rng, n)
    }

    fn uniform_flow(w: usize, h: usize, f: impl Fn(usize, usize) -> [f32; 2]) -> Flow {
        Flow {
            width: w,
            height: h,
            data: (0..w * h).map(|i| f(i % w, i / w)).collect(),
        }
    }

    #[test]
    fn a_shift_by_whole_pixels_moves_the_noise_unchanged() {
        let (w, h, c) = (16, 12, 2);
        let mut rng = 1;
        let start = normal(&mut rng, c * w * h);
        let mut warper = NoiseWarper::new(c, w, h, start.clone());
        warper.step(
            &uniform_flow(w, h, |_, _| [2.0, -1.0]),
            &normal(&mut rng, c * h * 2 * w),
        );
        // Away from where pixels leave the grid (they stay as fresh noise merged in place).
        for ch in 0..c {
            for y in 1..h - 1 {
                for x in 2..w - 2 {
                    let (now, was) = (ch * w * h + y * w + x, ch * w * h + (y + 1) * w + x - 2);
                    assert_eq!(warper.noise[now], start[was], "({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn warped_noise_stays_standard_normal_and_uncorrelated() {
        // A zoom with a turn: pixels merge, split and leave the grid, at sub-pixel amounts.
        let (w, h, c) = (24, 20, 1);
        let flow = uniform_flow(w, h, |x, y| {
            let (dx, dy) = (x as f32 - 11.3, y as f32 - 9.6);
            [0.13 * dx - 0.21 * dy, 0.21 * dx + 0.13 * dy]
        });
        let mut rng = 1000;
        let (draws, steps) = (400, 6);
        let (mut sum, mut sq, mut cross, mut n) = (0f64, 0f64, 0f64, 0f64);
        let (mut coarse_sq, mut coarse_n) = (0f64, 0f64);
        for _ in 0..draws {
            let mut warper = NoiseWarper::new(c, w, h, normal(&mut rng, c * w * h));
            for _ in 0..steps {
                warper.step(&flow, &normal(&mut rng, c * h * 2 * w));
            }
            for v in warper.downscaled(4) {
                coarse_sq += (v * v) as f64;
                coarse_n += 1.0;
            }
            let v = &warper.noise;
            for y in 0..h {
                for x in 0..w - 1 {
                    let (a, b) = (v[y * w + x] as f64, v[y * w + x + 1] as f64);
                    sum += a;
                    sq += a * a;
                    cross += a * b;
                    n += 1.0;
                }
            }
        }
        let (mean, var, corr) = (sum / n, sq / n - (sum / n).powi(2), cross / n);
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        assert!(corr.abs() < 0.03, "neighbour correlation {corr}");
        // On a grid 4× coarser (a latent grid), still of variance 1.
        let coarse = coarse_sq / coarse_n;
        assert!((coarse - 1.0).abs() < 0.05, "coarse variance {coarse}");
    }
}
