//! Rerender-A-Video's fusion (`--consistency rerender`; Yang et al. 2023, "Rerender A Video:
//! Zero-Shot Text-Guided Video-to-Video Translation", SIGGRAPH Asia), as diffusers'
//! `examples/community/rerender_a_video.py` runs it after the first frame:
//!
//! 1. Shape-aware fusion: in the steps whose place in the whole schedule falls in the `warp`
//!    window, the predicted x0 becomes the first frame's x0 of the same step, warped along the
//!    flow (nearest, on the latent grid), wherever the first frame saw the same surface; the
//!    latents are re-noised with the model's own ε.
//! 2. Pixel-aware fusion, when the `mask` window is not empty: that result decoded is blended
//!    with the first and the previous results warped into the frame, encoded with fidelity
//!    compensation, and the frame is denoised again from the same starting latents, its latents
//!    pulled towards the blend (noised anew at every step) in the `mask` window.
//!
//! The self-attention side (decoder layers attend to the first and the previous frame) is
//! [`super::attention::Attention::FirstAndPrevious`]. The pixel arithmetic is
//! [`crate::temporal::rerender`]. Where the reference hard-codes SD's 8-pixel latent grid we
//! use the model's.

use candle_core::{DType, Tensor};

use super::Diffuse;
use crate::sampling::img2img::{Img2ImgParams, StepAt, StepHook};
use crate::sampling::noise::NoiseDraw;
use crate::sampling::schedulers::{Prediction, SchedulerKind};
use crate::temporal::flow::{Flow, Gray};
use crate::temporal::rerender::{
    consistency_check, downscale_bilinear, flat_region, flow_pair, flow_warp, gaussian_blur,
    max_pool, Sampling,
};
use crate::{Error, Frame, Result};

/// Rerender-A-Video's settings: the reference's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RerenderFusion {
    /// Shape-aware fusion's steps, as fractions of the whole schedule (`warp_start`,
    /// `warp_end`, both ends included).
    pub warp: (f64, f64),
    /// Pixel-aware fusion's steps (`mask_start`, `mask_end`).
    pub mask: (f64, f64),
    /// How far pixel-aware fusion pulls the latents towards the blend (`mask_strength`).
    pub mask_strength: f32,
    /// How much of the noise direction it keeps inside the blend (`inner_strength`).
    pub inner_strength: f32,
    /// Keep the full noise rescale only in flat parts of the mask (`smooth_boundary`).
    pub smooth_boundary: bool,
}

impl Default for RerenderFusion {
    fn default() -> Self {
        Self {
            warp: (0.0, 0.3),
            mask: (0.5, 0.8),
            mask_strength: 0.5,
            inner_strength: 0.9,
            smooth_boundary: true,
        }
    }
}

impl std::fmt::Display for RerenderFusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rerender warp {}..{} mask {}..{} strength {} inner {} smooth {}",
            self.warp.0,
            self.warp.1,
            self.mask.0,
            self.mask.1,
            self.mask_strength,
            self.inner_strength,
            self.smooth_boundary
        )
    }
}

impl RerenderFusion {
    /// Refuses settings the reference's formulas do not cover (DDIM only) and those at which
    /// its shape-aware fusion never fires (the run starts past its window).
    pub fn check(&self, params: &Img2ImgParams) -> Result<()> {
        if params.scheduler != SchedulerKind::Ddim {
            return Err(Error::Config(format!(
                "--consistency rerender steps as DDIM does (its fusions are written for it); \
                 drop --scheduler {} or pick ddim",
                params.scheduler
            )));
        }
        let total = params.steps - params.first_step()?;
        let windows = Windows::new(self, params.steps, params.strength);
        if windows.fused(total).0 == 0 {
            return Err(Error::Config(format!(
                "--consistency rerender: at strength {} with {} steps the run starts past its shape-aware \
                 fusion (the first {} % of the schedule); raise --strength to 0.8 (the reference's) or more",
                params.strength,
                params.steps,
                self.warp.1 * 100.0
            )));
        }
        Ok(())
    }
}

/// The fusions' steps for one schedule, as the reference counts them: over the whole
/// schedule, from `skip = int(steps · (1 − strength))`. That is not always the number of
/// steps img2img skips (`steps − int(steps · strength)`): at strength 0.8 of 10 steps float
/// rounding makes it 1 where 2 are skipped; we keep the reference's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    skip: usize,
    warp: (usize, usize),
    mask: (usize, usize),
}

impl Windows {
    pub fn new(fusion: &RerenderFusion, steps: usize, strength: f64) -> Self {
        let n = steps as f64;
        let at = |share: f64| (share * n) as usize;
        Self {
            skip: (n * (1.0 - strength)) as usize,
            warp: (at(fusion.warp.0), at(fusion.warp.1)),
            mask: (at(fusion.mask.0), at(fusion.mask.1)),
        }
    }

    fn within(&self, (start, end): (usize, usize), i: usize) -> bool {
        (start..=end).contains(&(i + self.skip))
    }

    /// Whether step `i` (from 0 among those that run) fuses shapes.
    pub fn warps(&self, i: usize) -> bool {
        self.within(self.warp, i)
    }

    /// Whether step `i` fuses pixels (in the second pass).
    pub fn masks(&self, i: usize) -> bool {
        self.within(self.mask, i)
    }

    /// Whether pixel-aware fusion runs at all: the reference renders twice when its window is
    /// not empty, even if no step that runs falls in it.
    pub fn two_passes(&self) -> bool {
        self.mask.0 <= self.mask.1
    }

    /// How many of `total` steps that run fuse (shapes, pixels).
    pub fn fused(&self, total: usize) -> (usize, usize) {
        let steps = 0..total;
        (
            steps.clone().filter(|&i| self.warps(i)).count(),
            steps.filter(|&i| self.masks(i)).count(),
        )
    }
}

/// Where the flows between two original frames come from.
pub trait PairFlows: Send {
    /// Flow `earlier` → `later` and back, for frames `(index, gray)`.
    fn pair(&mut self, earlier: (u64, &Gray), later: (u64, &Gray)) -> Result<(Flow, Flow)>;
}

/// DIS on the original frames ([`flow_pair`]).
pub struct DisFlows;

impl PairFlows for DisFlows {
    fn pair(&mut self, earlier: (u64, &Gray), later: (u64, &Gray)) -> Result<(Flow, Flow)> {
        Ok(flow_pair(earlier.1, later.1))
    }
}

/// A frame rendered: its original's luminance and its result as decoded (planar, [−1, 1],
/// not clamped, as the reference keeps `first_result` and `prev_result`).
struct Rendered {
    index: u64,
    gray: Gray,
    image: Vec<f32>,
}

/// The first frame: what it rendered, and its predicted x0 at every step.
struct First {
    rendered: Rendered,
    x0: Vec<Tensor>,
}

/// The fusion axis at run time under Rerender-A-Video.
pub(crate) struct RerenderState {
    choice: RerenderFusion,
    flows: Box<dyn PairFlows>,
    first: Option<First>,
    /// The frame rendered last; `None`: the chain starts again from the first.
    previous: Option<Rendered>,
    /// Steps of the frame rendered last that fused shapes (both passes) and pixels.
    fused: (usize, usize),
}

impl RerenderState {
    pub fn new(choice: RerenderFusion, flows: Box<dyn PairFlows>) -> Self {
        Self {
            choice,
            flows,
            first: None,
            previous: None,
            fused: (0, 0),
        }
    }

    /// A new input: its own first frame.
    pub fn new_input(&mut self) {
        self.first = None;
        self.previous = None;
    }

    /// The next frame follows the first directly.
    pub fn restart(&mut self) {
        self.previous = None;
    }

    /// The first frame, before a segment that starts after it, unless it is held.
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        if start > 0 && self.first.is_none() {
            frames.push(0);
        }
    }

    /// (shape, pixel) steps fused in the frame rendered last.
    pub fn fused(&self) -> (usize, usize) {
        self.fused
    }

    /// Restyles frame `index` with `model`.
    pub fn render(&mut self, frame: &Frame, index: u64, model: &mut dyn Diffuse) -> Result<Frame> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let scale = model.latent_scale()?;
        if w < 2 * scale || h < 2 * scale {
            // The reference's warps normalise by (side − 1): one latent cell has no side.
            return Err(Error::Config(format!(
                "--consistency rerender needs frames of at least {0}×{0} (two latent cells a side), got {w}×{h}",
                2 * scale
            )));
        }
        let gray = Gray::from_rgb(w, h, &frame.data);
        if index == 0 {
            let mut hook = KeepX0(Vec::new());
            let latents = model.denoise(frame, index, &mut hook)?;
            let raw = model.decode_raw(&latents)?;
            self.first = Some(First {
                rendered: Rendered {
                    index,
                    gray,
                    image: planar(&raw)?,
                },
                x0: hook.0,
            });
            self.previous = None;
            self.fused = (0, 0);
            return to_frame(&raw);
        }
        let Some(first) = &self.first else {
            return Err(Error::Model(format!(
                "stylize: frame {index} needs the first frame, which was not rendered first"
            )));
        };
        let previous = self.previous.as_ref().unwrap_or(&first.rendered);
        let now = (index, &gray);
        let (fwd0, bwd0) = self.flows.pair((0, &first.rendered.gray), now)?;
        let from_first = Warped::new(&first.rendered.image, &fwd0, &bwd0);
        let from_previous = match previous.index {
            0 => None,
            p => {
                let (fwd, bwd) = self.flows.pair((p, &previous.gray), now)?;
                Some(Warped::new(&previous.image, &fwd, &bwd))
            }
        };
        let from_previous = from_previous.as_ref().unwrap_or(&from_first);

        let params = model.params()?;
        let windows = Windows::new(&self.choice, params.steps, params.strength);
        let (lw, lh) = (w / scale, h / scale);
        let device = model.device()?;
        // Shape-aware fusion's mask and flow on the latent grid.
        let (pooled, _, _) = max_pool(&from_first.blend, w, h, scale, scale, 0);
        let keep: Vec<f32> = pooled.iter().map(|m| 1.0 - m).collect();
        let flow = latent_flow(&bwd0, scale);
        let shapes = Shapes {
            x0: &first.x0,
            flow: &flow,
            keep: Tensor::from_vec(keep, (1, 1, lh, lw), &device)?,
        };

        let mut hook = Fusing {
            windows,
            shapes: &shapes,
            pixels: None,
            eps: None,
            fused: (0, 0),
        };
        let mut latents = model.denoise(frame, index, &mut hook)?;
        let first_pass = hook.fused;
        if windows.two_passes() {
            let direct = planar(&model.decode_raw(&latents)?)?;
            let pixels = self.pixel_target(
                frame,
                index,
                model,
                [&from_first, from_previous],
                &direct,
                (w, h),
            )?;
            hook = Fusing {
                windows,
                shapes: &shapes,
                pixels: Some(pixels),
                eps: None,
                fused: (0, 0),
            };
            latents = model.denoise(frame, index, &mut hook)?;
        }
        self.fused = match windows.two_passes() {
            true => (first_pass.0 + hook.fused.0, hook.fused.1),
            false => first_pass,
        };
        let raw = model.decode_raw(&latents)?;
        self.previous = Some(Rendered {
            index,
            gray,
            image: planar(&raw)?,
        });
        to_frame(&raw)
    }

    /// Pixel-aware fusion's target: the first pass's result `direct` blended with the first
    /// and the previous results warped into the frame, encoded with fidelity compensation;
    /// and where (and how much) the second pass is pulled towards it.
    fn pixel_target(
        &self,
        frame: &Frame,
        index: u64,
        model: &mut dyn Diffuse,
        [first, previous]: [&Warped; 2],
        direct: &[f32],
        (w, h): (usize, usize),
    ) -> Result<Pixels> {
        let plane = w * h;
        let mut blend = direct.to_vec();
        for warped in [previous, first] {
            for (c, v) in blend.iter_mut().enumerate() {
                let m = warped.blend[c % plane];
                *v = (1.0 - m) * warped.image[c] + m * *v;
            }
        }
        // Where neither earlier frame saw the surface the frame keeps its own pixels.
        let occluded: Vec<f32> = first
            .occluded
            .iter()
            .zip(&previous.occluded)
            .map(|(a, b)| 1.0 - ((1.0 - b) + (1.0 - a)).clamp(0.0, 1.0))
            .collect();
        let own = blend_mask(&occluded, w, h);

        let device = model.device()?;
        let image = Tensor::from_vec(blend.clone(), (1, 3, h, w), &device)?;
        let target = model.encode(frame, index, &image, NoiseDraw::Blend)?;
        let again = model.decode_raw(&target)?;
        let target_again = model.encode(frame, index, &again, NoiseDraw::BlendAgain)?;
        let lost = (&target - &target_again)?;
        let compensated = (&target + &lost)?;
        let rebuilt = planar(&model.decode_raw(&compensated)?)?;
        // Where even the compensated latents do not give the blend back, no compensation.
        let off: Vec<f32> = (0..plane)
            .map(|p| {
                let d: f32 = (0..3)
                    .map(|c| (rebuilt[c * plane + p] - blend[c * plane + p]).abs())
                    .sum();
                (d / 3.0 > 0.25) as u8 as f32
            })
            .collect();
        let scale = model.latent_scale()?;
        let (small, lw, lh) = downscale_bilinear(&off, 1, w, h, scale);
        let marked: Vec<f32> = small.iter().map(|&v| (v > 0.0) as u8 as f32).collect();
        let (unfaithful, _, _) = max_pool(&marked, lw, lh, 3, 1, 1);
        // Pulled only in latent cells that have none of the frame's own pixels.
        let (pooled, _, _) = max_pool(&own, w, h, scale, scale, 0);
        let mask: Vec<f32> = pooled.iter().map(|m| 1.0 - m).collect();
        let rescale = match self.choice.smooth_boundary {
            true => flat_region(&mask, lw, lh),
            false => vec![1.0; mask.len()],
        };
        let grid = |v: Vec<f32>| Tensor::from_vec(v, (1, 1, lh, lw), &device);
        let (mask, unfaithful, rescale) = (grid(mask)?, grid(unfaithful)?, grid(rescale)?);
        let compensation = lost.broadcast_mul(&unfaithful.affine(-1.0, 1.0)?)?;
        let target = (target + compensation)?.broadcast_mul(&mask)?;
        Ok(Pixels {
            target,
            mask: (mask * self.choice.mask_strength as f64)?,
            rescale,
            inner: self.choice.inner_strength as f64,
        })
    }
}

/// One earlier result warped into the frame.
struct Warped {
    /// The result warped (planar, 3 channels).
    image: Vec<f32>,
    /// 1 where the frame shows what the earlier one did not see.
    occluded: Vec<f32>,
    /// Where the frame keeps its own pixels: the occlusion grown and softened.
    blend: Vec<f32>,
}

impl Warped {
    /// `image` of the earlier frame, with the flows earlier → frame and back.
    fn new(image: &[f32], forth: &Flow, back: &Flow) -> Self {
        let (_, occluded) = consistency_check(forth, back);
        Self {
            image: flow_warp(image, 3, back, Sampling::Bilinear),
            blend: blend_mask(&occluded, back.width, back.height),
            occluded,
        }
    }
}

/// blur(max_pool₉(occluded)) + occluded, clamped to 1: the reference's blend mask.
fn blend_mask(occluded: &[f32], w: usize, h: usize) -> Vec<f32> {
    let (grown, _, _) = max_pool(occluded, w, h, 9, 1, 4);
    gaussian_blur(&grown, w, h)
        .into_iter()
        .zip(occluded)
        .map(|(b, o)| (b + o).clamp(0.0, 1.0))
        .collect()
}

/// The flow on the latent grid: divided by `scale` and downscaled bilinearly, as the
/// reference's `F.interpolate(flow / 8, scale_factor=1/8)`.
fn latent_flow(flow: &Flow, scale: usize) -> Flow {
    let plane = flow.width * flow.height;
    let mut planes = vec![0f32; 2 * plane];
    for (p, [dx, dy]) in flow.data.iter().enumerate() {
        planes[p] = dx / scale as f32;
        planes[plane + p] = dy / scale as f32;
    }
    let (small, width, height) = downscale_bilinear(&planes, 2, flow.width, flow.height, scale);
    let n = width * height;
    Flow {
        width,
        height,
        data: (0..n).map(|p| [small[p], small[n + p]]).collect(),
    }
}

/// Shape-aware fusion's sources: the first frame's x0 per step, the flow that carries it into
/// the frame, and where the frame keeps it (1) or its own (0).
struct Shapes<'a> {
    x0: &'a [Tensor],
    flow: &'a Flow,
    keep: Tensor,
}

/// Pixel-aware fusion's pull: the encoded blend, how much of it per latent cell, and how much
/// of the noise direction is kept.
struct Pixels {
    target: Tensor,
    mask: Tensor,
    rescale: Tensor,
    inner: f64,
}

/// The first frame's denoising: its x0 kept at every step.
struct KeepX0(Vec<Tensor>);

impl StepHook for KeepX0 {
    fn replaces_x0(&self, _i: usize, _total: usize) -> bool {
        true
    }

    fn predicted(&mut self, _i: usize, p: &Prediction) -> Result<Option<Tensor>> {
        self.0.push(p.x0.clone());
        Ok(None)
    }
}

/// A later frame's denoising pass.
struct Fusing<'a> {
    windows: Windows,
    shapes: &'a Shapes<'a>,
    /// Only in the second pass.
    pixels: Option<Pixels>,
    /// The ε of the step before, whose direction the pixel pull rescales.
    eps: Option<Tensor>,
    fused: (usize, usize),
}

impl StepHook for Fusing<'_> {
    fn replaces_x0(&self, i: usize, _total: usize) -> bool {
        self.windows.warps(i) || (self.pixels.is_some() && self.windows.masks(i + 1))
    }

    fn predicted(&mut self, i: usize, p: &Prediction) -> Result<Option<Tensor>> {
        if self.pixels.is_some() && self.windows.masks(i + 1) {
            self.eps = Some(p.eps.clone());
        }
        if !self.windows.warps(i) {
            return Ok(None);
        }
        let Some(first) = self.shapes.x0.get(i) else {
            return Err(Error::Model(format!(
                "rerender: the first frame kept {} steps, step {i} was asked for",
                self.shapes.x0.len()
            )));
        };
        let (_, c, h, w) = first.dims4()?;
        let warped = flow_warp(&planar(first)?, c, self.shapes.flow, Sampling::Nearest);
        let warped = Tensor::from_vec(warped, (1, c, h, w), first.device())?;
        let keep = &self.shapes.keep;
        let fused =
            (warped.broadcast_mul(keep)? + p.x0.broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?;
        self.fused.0 += 1;
        Ok(Some(fused))
    }

    fn enters(&self, i: usize, _total: usize) -> bool {
        self.pixels.is_some() && self.windows.masks(i)
    }

    fn entering(&mut self, i: usize, latents: &Tensor, at: &mut StepAt) -> Result<Option<Tensor>> {
        let Some(px) = &self.pixels else {
            return Ok(None);
        };
        // The reference's dir_xt: the ε part of the latents the step before made,
        // √(1 − ᾱ) ε at this step's level (nothing before the first step).
        let dir = match (i, &self.eps) {
            (0, _) => latents.zeros_like()?,
            (_, Some(eps)) => (eps * at.level()?.sigma)?,
            (_, None) => {
                return Err(Error::Model(format!(
                    "rerender: step {i} entered without the noise of the step before"
                )))
            }
        };
        let m = &px.mask;
        let outside = m.affine(-1.0, 1.0)?;
        let inner = (m.sqr()?.affine(-1.0, 1.0)?.sqrt()? * px.inner)?;
        let rescale = outside.maximum(&inner)?;
        let rescale = (outside.broadcast_mul(&px.rescale.affine(-1.0, 1.0)?)?
            + rescale.broadcast_mul(&px.rescale)?)?;
        let pulled = at.noised(&px.target, NoiseDraw::Mask(i))?;
        let entered = (pulled.broadcast_mul(m)?
            + (latents - &dir)?.broadcast_mul(&outside)?
            + dir.broadcast_mul(&rescale)?)?;
        self.fused.1 += 1;
        Ok(Some(entered))
    }
}

/// A `[1, C, H, W]` tensor's values, planar.
fn planar(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// A decoded result as the frame the reference's postprocessing gives: (x/2 + ½) in [0, 1].
fn to_frame(raw: &Tensor) -> Result<Frame> {
    Frame::from_tensor(&raw.affine(0.5, 0.5)?.clamp(0f32, 1f32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_over_the_whole_schedule_as_the_reference() {
        let r = RerenderFusion::default();
        // Strength 0.8 of 10 steps: 8 run; int(10 · 0.19999999999999996) = 1 is the
        // reference's skip, so shapes fuse at i + 1 ∈ [0, 3] and pixels at i + 1 ∈ [5, 8].
        let w = Windows::new(&r, 10, 0.8);
        assert_eq!(w.fused(8), (3, 4));
        assert!(w.warps(2) && !w.warps(3) && w.masks(4) && w.masks(7) && !w.masks(3));
        // The tool's 0.6 of 10: 4 skipped, past the warp window; pixels still fuse.
        let w = Windows::new(&r, 10, 0.6);
        assert_eq!(w.fused(6), (0, 4));
        // The reference's own 0.8 of 50: 40 run.
        assert_eq!(Windows::new(&r, 50, 0.8).fused(40), (7, 16));
        assert!(w.two_passes());
    }

    #[test]
    fn settings_where_shapes_never_fuse_or_not_ddim_are_refused() {
        let r = RerenderFusion::default();
        let params = |strength, scheduler| Img2ImgParams {
            strength,
            steps: 10,
            guidance: 7.5,
            scheduler,
        };
        assert!(r.check(&params(0.8, SchedulerKind::Ddim)).is_ok());
        let e = r.check(&params(0.6, SchedulerKind::Ddim)).unwrap_err();
        assert!(e.to_string().contains("raise --strength to 0.8"), "{e}");
        let e = r.check(&params(0.8, SchedulerKind::Euler)).unwrap_err();
        assert!(e.to_string().contains("pick ddim"), "{e}");
    }
}
