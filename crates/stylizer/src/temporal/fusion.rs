//! Flow-guided fusion: what the previous restyled frame showed is carried into the current one
//! wherever the original video shows the same surface. The predicted x0 of the early steps is
//! replaced by the previous frame's, warped, as Rerender-A-Video's shape-aware fusion does
//! (Yang et al. 2023, "Rerender A Video: Zero-Shot Text-Guided Video-to-Video Translation",
//! SIGGRAPH Asia; diffusers `examples/community/rerender_a_video.py`, which warps the first
//! frame's x0 where we chain the previous frame's), and decoded pixels may be blended.
//!
//! Flow is measured on the *original* frames, current → previous, with DIS ([`super::flow`]);
//! pixels that the forward–backward check marks occluded ([`super::flicker::occlusion`]) keep
//! the fresh result. The same motion is used on the latent grid (1/8 of the frame), with the
//! flow averaged over each 8×8 block and the share of visible pixels as a soft mask.

use rayon::prelude::*;

use super::flicker::occlusion;
use super::flow::{dis_flow, DisParams, DisPreset, Flow, Gray};
use super::warp::warp;

/// How the previous restyled frame, warped along the original's motion, is carried into the
/// current one where the previous frame saw the same surface.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowFusion {
    /// The share of the denoising steps that run, from the first, whose predicted x0 is
    /// replaced by the previous frame's x0 of the same step (re-noised with the model's own ε),
    /// as Rerender-A-Video's shape-aware fusion; the steps after it refine the frame on its
    /// own, so its detail is the model's, not an average's. 0: none.
    pub steps: f32,
    /// How much of the previous decoded image is blended into the decoded frame (0..1).
    pub pixel: f32,
}

impl Default for FlowFusion {
    fn default() -> Self {
        Self {
            steps: 0.5,
            pixel: 0.0,
        }
    }
}

impl FlowFusion {
    /// How many of `total` steps that run are fused: the share rounded up, so that a share
    /// above 0 fuses at least one step, but never the last, which would copy the previous frame.
    pub fn fused_steps(&self, total: usize) -> usize {
        ((self.steps as f64 * total as f64).ceil() as usize).min(total.saturating_sub(1))
    }
}

impl std::fmt::Display for FlowFusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "x0 steps {} pixel {}", self.steps, self.pixel)
    }
}

impl std::str::FromStr for FlowFusion {
    type Err = crate::Error;
    /// `STEPS,PIXEL` (`--flow-fusion`), each between 0 and 1.
    fn from_str(s: &str) -> crate::Result<Self> {
        let share = |v: &str| match v.trim().parse::<f32>() {
            Ok(w) if (0.0..=1.0).contains(&w) => Ok(w),
            _ => Err(crate::Error::Value(format!(
                "`{v}` is not a share between 0 and 1"
            ))),
        };
        match s.split_once(',') {
            Some((steps, pixel)) => Ok(FlowFusion {
                steps: share(steps)?,
                pixel: share(pixel)?,
            }),
            None => Err(crate::Error::Value(
                "expected STEPS,PIXEL, e.g. 0.5,0".into(),
            )),
        }
    }
}

/// The DIS preset fusion measures motion with: MEDIUM's variational refinement keeps edges
/// in place, and at 0.15 s for a 480p pair on 2 cores it is small beside a diffusion pass.
pub const FUSION_FLOW: DisPreset = DisPreset::Medium;

/// Where every pixel of the current frame was in the previous one, and whether it was seen.
#[derive(Debug, Clone)]
pub struct FrameMotion {
    /// Current → previous: pixel (x, y) of the current frame shows what (x + dx, y + dy) of
    /// the previous one showed.
    pub back: Flow,
    /// 1 where the previous frame saw the same surface, 0 where it was occluded (fractions
    /// on a coarser grid).
    pub visible: Vec<f32>,
}

impl FrameMotion {
    /// The motion from `previous` to `current` (two original frames, same size).
    pub fn between(previous: &Gray, current: &Gray, params: &DisParams) -> Self {
        let (back, forth) = rayon::join(
            || dis_flow(current, previous, params),
            || dis_flow(previous, current, params),
        );
        let visible = occlusion(&back, &forth)
            .into_iter()
            .map(|occluded| if occluded { 0.0 } else { 1.0 })
            .collect();
        Self { back, visible }
    }

    /// The same motion on a grid `factor` times coarser (the latents of a frame): the flow is
    /// averaged over each `factor`×`factor` block and divided by `factor`; visibility becomes
    /// the share of the block's pixels that are visible. The sides must be multiples of
    /// `factor`.
    pub fn downscale(&self, factor: usize) -> Self {
        let (w, h) = (self.back.width, self.back.height);
        assert!(
            factor > 0 && w % factor == 0 && h % factor == 0,
            "motion {w}x{h} does not divide by {factor}"
        );
        let (cw, ch) = (w / factor, h / factor);
        let n = (factor * factor) as f32;
        let cells: Vec<([f32; 2], f32)> = (0..cw * ch)
            .into_par_iter()
            .map(|c| {
                let (cx, cy) = (c % cw, c / cw);
                let (mut flow, mut vis) = ([0f32; 2], 0f32);
                for y in cy * factor..(cy + 1) * factor {
                    for x in cx * factor..(cx + 1) * factor {
                        let [dx, dy] = self.back.data[y * w + x];
                        flow[0] += dx;
                        flow[1] += dy;
                        vis += self.visible[y * w + x];
                    }
                }
                let scale = n * factor as f32;
                ([flow[0] / scale, flow[1] / scale], vis / n)
            })
            .collect();
        Self {
            back: Flow {
                width: cw,
                height: ch,
                data: cells.iter().map(|c| c.0).collect(),
            },
            visible: cells.iter().map(|c| c.1).collect(),
        }
    }

    /// Blends the `previous` image (interleaved, `channels` channels, same grid), warped into
    /// the current frame, into `current`: `current += weight · visible · (warp(previous) −
    /// current)`. Weight 0 keeps `current`, 1 copies the previous frame where it was visible.
    pub fn fuse(&self, current: &mut [f32], previous: &[f32], channels: usize, weight: f32) {
        let warped = warp(previous, channels, &self.back);
        current
            .par_chunks_mut(channels)
            .zip(warped.par_chunks(channels))
            .zip(self.visible.par_iter())
            .for_each(|((cur, prev), &vis)| {
                let k = weight * vis;
                for (c, p) in cur.iter_mut().zip(prev) {
                    *c += k * (p - *c);
                }
            });
    }
}

/// A frame between keyframes, from their restyled images (EbSynth's and Rerender-A-Video's
/// propagation, with flow warps in place of patch synthesis): each keyframe `(motion, image,
/// weight)` is warped into the frame along `motion` (from [`FrameMotion::between`]`(key, frame)`),
/// and every pixel blends the keyframes that saw it, by `weight` (temporal closeness) ×
/// visibility. A pixel no keyframe saw blends them by `weight` alone. Images are interleaved
/// with `channels` channels.
pub fn interpolate(keys: &[(&FrameMotion, &[f32], f32)], channels: usize) -> Vec<f32> {
    let warped: Vec<Vec<f32>> = keys
        .par_iter()
        .map(|(m, image, _)| warp(image, channels, &m.back))
        .collect();
    let pixels = keys.first().map_or(0, |(m, _, _)| m.visible.len());
    let total: f32 = keys.iter().map(|k| k.2).sum();
    let mut out = vec![0f32; pixels * channels];
    out.par_chunks_mut(channels)
        .enumerate()
        .for_each(|(i, px)| {
            let seen: f32 = keys.iter().map(|(m, _, w)| w * m.visible[i]).sum();
            for (k, (m, _, w)) in keys.iter().enumerate() {
                let share = if seen > 0.0 {
                    w * m.visible[i] / seen
                } else {
                    w / total
                };
                for (c, v) in px.iter_mut().enumerate() {
                    *v += share * warped[k][i * channels + c];
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shifted(w: usize, h: usize, shift: usize) -> Gray {
        // A smooth pattern with texture everywhere, moved `shift` pixels to the right.
        let data = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32 - shift as f32, (i / w) as f32);
                128.0
                    + 60.0 * (x * 0.21).sin() * (y * 0.17).cos()
                    + 40.0 * (x * 0.05 + y * 0.09).sin()
            })
            .collect();
        Gray {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn fusion_carries_the_previous_frame_along_the_motion() {
        let (w, h) = (96, 64);
        let (prev, cur) = (shifted(w, h, 0), shifted(w, h, 2));
        let motion = FrameMotion::between(&prev, &cur, &DisParams::default());
        // Away from the borders the current frame's (x, y) was at (x − 2, y).
        let mean_dx: f32 = (16..h - 16)
            .flat_map(|y| (16..w - 16).map(move |x| (x, y)))
            .map(|(x, y)| motion.back.data[y * w + x][0])
            .sum::<f32>()
            / ((w - 32) * (h - 32)) as f32;
        assert!((mean_dx + 2.0).abs() < 0.2, "mean dx {mean_dx}");

        // Fusing a previous "stylized" image that is the previous frame's pattern gives the
        // current frame's pattern where visible; weight 0 changes nothing.
        let mut current = vec![0f32; w * h];
        motion.fuse(&mut current, &prev.data, 1, 0.0);
        assert!(current.iter().all(|&v| v == 0.0));
        motion.fuse(&mut current, &prev.data, 1, 1.0);
        let (mut err, mut n) = (0f32, 0);
        for y in 16..h - 16 {
            for x in 16..w - 16 {
                if motion.visible[y * w + x] == 1.0 {
                    err += (current[y * w + x] - cur.data[y * w + x]).abs();
                    n += 1;
                }
            }
        }
        assert!(n > (w - 32) * (h - 32) / 2, "too much marked occluded: {n}");
        assert!(err / (n as f32) < 2.0, "mean error {}", err / n as f32);

        let coarse = motion.downscale(8);
        assert_eq!((coarse.back.width, coarse.back.height), (12, 8));
        let inner = coarse.back.data[4 * 12 + 6];
        assert!((inner[0] + 0.25).abs() < 0.05, "coarse flow {inner:?}");
        assert!(coarse.visible.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn interpolation_weighs_the_keyframes_that_saw_a_pixel() {
        let (w, h) = (96, 64);
        let (a, t, b) = (shifted(w, h, 0), shifted(w, h, 2), shifted(w, h, 4));
        let params = DisParams::default();
        let (ma, mb) = (
            FrameMotion::between(&a, &t, &params),
            FrameMotion::between(&b, &t, &params),
        );
        // Restyled keyframes that are the originals: the frame between comes back.
        let out = interpolate(&[(&ma, &a.data, 0.5), (&mb, &b.data, 0.5)], 1);
        let err: f32 = (16..h - 16)
            .flat_map(|y| (16..w - 16).map(move |x| y * w + x))
            .map(|i| (out[i] - t.data[i]).abs())
            .sum::<f32>()
            / ((w - 32) * (h - 32)) as f32;
        assert!(err < 2.0, "mean error {err}");
        // A keyframe of weight 0 contributes nothing.
        let only_a = interpolate(&[(&ma, &a.data, 1.0), (&mb, &[0f32; 96 * 64], 0.0)], 1);
        assert_eq!(only_a, warp(&a.data, 1, &ma.back));
    }
}
