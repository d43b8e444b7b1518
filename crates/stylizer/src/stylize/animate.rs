//! AnimateDiff video-to-video: a stack of frames denoised together through the motion UNet
//! ([`super::motion`]), as diffusers' `AnimateDiffVideoToVideoPipeline`
//! (`pipelines/animatediff/pipeline_animatediff_video2video.py`) does for one window, with
//! stacks longer than a window covered by sliding context windows as
//! ComfyUI-AnimateDiff-Evolved's context options do (`animatediff/context.py`,
//! `create_windows_static_standard`; `animatediff/sampling.py`, `sliding_calc_cond_batch`):
//! at every step the whole UNet runs once per window on that window's frames, and each
//! frame's predictions from the windows that hold it are averaged with per-position weights
//! (flat or pyramid) before the scheduler step on all frames.

use std::ops::Range;

use candle_core::{DType, Tensor};

use super::img2img::{decode, Img2ImgParams};
use super::model::SdModel;
use super::noise::{NoiseDraw, NoiseSource};
use super::schedulers::SchedulerConfig;
use crate::{Error, Progress, Result};

/// How the predictions of overlapping windows are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    /// Every position of a window counts the same.
    Flat,
    /// A window's middle counts most: 1, 2, …, 2, 1 (ComfyUI's `create_weights_pyramid`).
    Pyramid,
}

impl std::str::FromStr for Fuse {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flat" => Ok(Fuse::Flat),
            "pyramid" => Ok(Fuse::Pyramid),
            _ => Err(Error::Config(format!(
                "unknown context fuse `{s}` (flat or pyramid)"
            ))),
        }
    }
}

impl std::fmt::Display for Fuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fuse::Flat => "flat",
            Fuse::Pyramid => "pyramid",
        })
    }
}

/// The sliding context windows (`--context-length`, `--context-overlap`, `--context-fuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Frames the motion modules see at once (16, what the adapters were trained on).
    pub length: usize,
    /// Frames two neighbouring windows share.
    pub overlap: usize,
    pub fuse: Fuse,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            length: 16,
            overlap: 4,
            fuse: Fuse::Pyramid,
        }
    }
}

impl ContextOptions {
    /// Rejects windows that cannot slide (no overlap-free step) or that the adapter's
    /// position encoding cannot cover.
    pub fn check(&self, max_seq_length: usize) -> Result<()> {
        if self.length < 2 || self.overlap >= self.length {
            return Err(Error::Config(format!(
                "--context-length {} with --context-overlap {}: the length must be at least 2 and the overlap smaller",
                self.length, self.overlap
            )));
        }
        if self.length > max_seq_length {
            return Err(Error::Config(format!(
                "--context-length {}: the motion adapter encodes positions for {max_seq_length} frames at most",
                self.length
            )));
        }
        Ok(())
    }

    /// The windows over `frames` frames: one of all of them when they fit, else windows
    /// starting every `length − overlap` frames, the first that reaches the end moved back
    /// to end there (and the last).
    pub fn windows(&self, frames: usize) -> Vec<Range<usize>> {
        if frames <= self.length {
            return vec![0..frames];
        }
        let stride = self.length - self.overlap;
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            if start + self.length >= frames {
                windows.push(frames - self.length..frames);
                return windows;
            }
            windows.push(start..start + self.length);
            start += stride;
        }
    }

    /// The weight of each position in a window of `n` frames.
    pub fn weights(&self, n: usize) -> Vec<f32> {
        match self.fuse {
            Fuse::Flat => vec![1.0; n],
            // min(i + 1, n − i) is ComfyUI's 1..n/2, n/2..1 (odd n: a single peak).
            Fuse::Pyramid => (0..n).map(|i| (i + 1).min(n - i) as f32).collect(),
        }
    }
}

/// Denoises `frames` `[F, 3, H, W]` in [−1, 1] together; returns the final latents
/// `[F, 4, h, w]` (scaled, as the UNet sees them).
///
/// * `text`: `[negative, prompt]` embeddings `[2, 77, D]` (the prompt alone when guidance is
///   off), repeated for every frame of a window.
/// * `noise(i)`: the random draws of frame `i` of the stack (`[1, 4, h, w]` each), so that a
///   frame's noise does not depend on which stack it is part of.
#[allow(clippy::too_many_arguments)]
pub fn denoise_video(
    model: &SdModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    frames: &Tensor,
    context: &ContextOptions,
    noise: &mut dyn FnMut(usize) -> Box<dyn NoiseSource>,
    progress: &mut dyn Progress,
) -> Result<Tensor> {
    let first = params.first_step()?;
    let mut scheduler = params.scheduler.build(scheduler_config, params.steps)?;
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - first;
    let n = frames.dim(0)?;
    let device = frames.device().clone();
    let mut sources: Vec<Box<dyn NoiseSource>> = (0..n).map(noise).collect();

    // Text: [negative, prompt] for guidance, the prompt alone otherwise.
    let guided = params.guided() && !model.embeds_guidance();
    let (negative, prompt) = match (guided, text.dim(0)?) {
        (true, 2) => (Some(text.narrow(0, 0, 1)?), text.narrow(0, 1, 1)?),
        (false, 2) => (None, text.narrow(0, 1, 1)?),
        (false, 1) => (None, text.clone()),
        (_, b) => {
            return Err(Error::Model(format!(
                "prompt embeddings have batch {b}; guidance {} needs [negative, prompt]",
                params.guidance
            )))
        }
    };

    // Encode every frame (one at a time: memory), sample the posterior, scale, noise.
    let mut x0 = Vec::with_capacity(n);
    for (i, source) in sources.iter_mut().enumerate() {
        let (mean, logvar) = model.vae_encode(&frames.narrow(0, i, 1)?.to_dtype(DType::F32)?)?;
        let z = match model.samples_posterior() {
            true => {
                let std = (logvar.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
                let eps = source.noise(NoiseDraw::Posterior, mean.dims(), &device)?;
                (mean + (std * eps)?)?
            }
            false => mean,
        };
        x0.push((z * model.scaling_factor())?);
    }
    let x0 = Tensor::cat(&x0, 0)?;
    let shape = x0.dims()[1..].to_vec();
    let per_frame = |sources: &mut [Box<dyn NoiseSource>], draw: NoiseDraw| -> Result<Tensor> {
        let one: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
        let rows = sources
            .iter_mut()
            .map(|s| s.noise(draw, &one, &device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    };
    let eps = per_frame(&mut sources, NoiseDraw::Start)?;
    let mut latents = scheduler.add_noise(&x0, &eps, first)?;

    // Denoise: per window the UNet on its frames (twice with guidance), the windows'
    // predictions averaged per frame, one scheduler step for all frames.
    let windows = context.windows(n);
    let weights = context.weights(windows[0].len());
    let mut totals = vec![0f32; n];
    for w in &windows {
        for (j, f) in w.clone().enumerate() {
            totals[f] += weights[j];
        }
    }
    let repeat = |t: &Tensor, k: usize| -> Result<Tensor> {
        let (_, tokens, dim) = t.dims3()?;
        Ok(t.broadcast_as((k, tokens, dim))?.contiguous()?)
    };
    for (i, index) in (first..timesteps.len()).enumerate() {
        let t = timesteps[index];
        let input = scheduler.scale_model_input(latents.clone(), index)?;
        let mut fused: Option<Tensor> = None;
        for w in &windows {
            let k = w.len();
            let x = input.narrow(0, w.start, k)?;
            let out = match &negative {
                Some(neg) => {
                    let text = Tensor::cat(&[repeat(neg, k)?, repeat(&prompt, k)?], 0)?;
                    let out =
                        model.unet_window(&Tensor::cat(&[&x, &x], 0)?, &[t], &text, k, None)?;
                    let (uncond, cond) = (out.narrow(0, 0, k)?, out.narrow(0, k, k)?);
                    (&uncond + ((cond - &uncond)? * params.guidance)?)?
                }
                None => model.unet_window(&x, &[t], &repeat(&prompt, k)?, k, None)?,
            };
            // Weighted into the whole stack: weight / the frame's total weight.
            let scale: Vec<f32> = (0..n)
                .map(|f| match w.contains(&f) {
                    true => weights[f - w.start] / totals[f],
                    false => 0.0,
                })
                .collect();
            let scale = Tensor::from_vec(scale, (n, 1, 1, 1), &device)?;
            let out = out
                .pad_with_zeros(0, w.start, n - w.end)?
                .broadcast_mul(&scale)?;
            fused = Some(match fused {
                Some(f) => (f + out)?,
                None => out,
            });
        }
        let out = fused.expect("at least one window");
        let step_noise = match scheduler.needs_noise(index) {
            true => Some(per_frame(&mut sources, NoiseDraw::Step(i))?),
            false => None,
        };
        latents = scheduler.step(&out, index, &latents, step_noise.as_ref())?;
        progress.step(i + 1, total);
    }
    Ok(latents)
}

/// Decodes final latents `[F, 4, h, w]` one frame at a time to images `[F, 3, H, W]` in [0, 1].
pub fn decode_video(model: &SdModel, latents: &Tensor) -> Result<Tensor> {
    let frames = (0..latents.dim(0)?)
        .map(|i| decode(model, &latents.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&frames, 0)?)
}
