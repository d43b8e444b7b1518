//! The img2img sampling loop, as diffusers' `StableDiffusionImg2ImgPipeline.__call__`
//! (`pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py`; SDEdit, Meng et al. 2021,
//! arXiv 2108.01073): encode the frame, noise it to the timestep `strength` picks, denoise the
//! rest of the schedule with classifier-free guidance, decode.

use candle_core::{DType, Tensor};

use crate::nets::sd::cross_frame::{FrameAnchor, SelfAttention};
use crate::nets::sd::unet::ControlResiduals;
use crate::sampling::noise::{NoiseDraw, NoiseSource};
use crate::sampling::schedulers::{Level, Prediction, Scheduler, SchedulerConfig, SchedulerKind};
use crate::sd::model::SdModel;
use crate::{Error, Progress, Result};

/// The networks the loop runs. Tensors crossing this trait are f32; an implementation that
/// runs in f16 converts at its boundary. The loop itself keeps latents in f32.
pub trait Img2ImgModel {
    /// VAE posterior of `image` [1,3,H,W] in [-1, 1]: (mean, logvar), unscaled latent space.
    fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)>;
    /// UNet output for `latents` [B,4,h,w] at `timestep`, conditioned on `text` [B,77,D];
    /// `frames` says what the self-attention layers attend to; `control` is added to the
    /// skip connections and the mid block.
    fn unet(
        &self,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        frames: &mut SelfAttention,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor>;
    /// ControlNet `net`'s residuals for the UNet input `latents` [B,4,h,w], `text` [B,77,D]
    /// and the control image `image` [1 or B,3,H,W] in [0, 1], times `scale`.
    #[allow(clippy::too_many_arguments)]
    fn controlnet(
        &self,
        net: usize,
        _latents: &Tensor,
        _timestep: f64,
        _text: &Tensor,
        _image: &Tensor,
        _scale: f64,
        _guess_mode: bool,
    ) -> Result<ControlResiduals> {
        Err(Error::Model(format!(
            "ControlNet {net}: this model has none"
        )))
    }
    /// VAE decode of unscaled latents to an image [1,3,H,W], about [-1, 1], not clamped.
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor>;
    /// The VAE's `scaling_factor` (0.18215 for SD 1.x/2.x).
    fn scaling_factor(&self) -> f64;
    /// Whether [`Img2ImgModel::vae_encode`] gives a posterior to sample (the KL VAE) or the
    /// latents themselves (a tiny VAE: no noise is drawn, as diffusers' `retrieve_latents`).
    fn samples_posterior(&self) -> bool {
        true
    }
    /// Whether the UNet takes the guidance scale itself (an LCM UNet): no classifier-free
    /// guidance batch then, whatever the scale.
    fn embeds_guidance(&self) -> bool {
        false
    }
}

/// The loop over the real model: SdModel takes a list of timesteps, one per batch entry.
impl Img2ImgModel for SdModel {
    fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        SdModel::vae_encode(self, image)
    }

    fn unet(
        &self,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        frames: &mut SelfAttention,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        SdModel::unet(self, latents, &[timestep], text, frames, control)
    }

    fn controlnet(
        &self,
        net: usize,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        image: &Tensor,
        scale: f64,
        guess_mode: bool,
    ) -> Result<ControlResiduals> {
        SdModel::controlnet(
            self,
            net,
            latents,
            &[timestep],
            text,
            image,
            scale,
            guess_mode,
        )
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        SdModel::vae_decode(self, latents)
    }

    fn scaling_factor(&self) -> f64 {
        SdModel::scaling_factor(self)
    }

    fn samples_posterior(&self) -> bool {
        SdModel::samples_posterior(self)
    }

    fn embeds_guidance(&self) -> bool {
        SdModel::embeds_guidance(self)
    }
}

/// The knobs of one img2img call.
#[derive(Debug, Clone, PartialEq)]
pub struct Img2ImgParams {
    /// How much of the schedule runs: 0 keeps the frame, 1 ignores it.
    pub strength: f64,
    /// Steps of the full schedule; about `strength × steps` of them run.
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 runs the UNet on the prompt alone.
    pub guidance: f64,
    pub scheduler: SchedulerKind,
}

impl Default for Img2ImgParams {
    /// diffusers' img2img defaults, except 20 steps instead of 50.
    fn default() -> Self {
        Self {
            strength: 0.6,
            steps: 20,
            guidance: 7.5,
            scheduler: SchedulerKind::Ddim,
        }
    }
}

impl Img2ImgParams {
    /// Rejects settings that cannot run; returns the index of the first step that runs.
    pub fn first_step(&self) -> Result<usize> {
        if !(0.0..=1.0).contains(&self.strength) {
            return Err(Error::Config(format!(
                "strength must be between 0 and 1, got {}",
                self.strength
            )));
        }
        if self.steps == 0 {
            return Err(Error::Config("steps must be at least 1".into()));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(Error::Config(format!(
                "guidance must be a number ≥ 0, got {}",
                self.guidance
            )));
        }
        // Same rounding as diffusers' get_timesteps.
        let run = ((self.steps as f64 * self.strength) as usize).min(self.steps);
        if run == 0 {
            return Err(Error::Config(format!(
                "strength {} × {} steps leaves no step to run; raise --strength or --steps",
                self.strength, self.steps
            )));
        }
        Ok(self.steps - run)
    }

    /// Whether the UNet also runs on the negative prompt (classifier-free guidance).
    pub fn guided(&self) -> bool {
        self.guidance > 1.0
    }
}

/// One ControlNet's part in a frame's denoising.
#[derive(Debug, Clone)]
pub struct ControlInput {
    /// Which of the model's nets.
    pub net: usize,
    /// The control image [1,3,H,W] in [0, 1], the frame's size.
    pub image: Tensor,
    pub weight: ControlWeight,
}

/// How strongly, and over which part of the denoising, a ControlNet steers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlWeight {
    /// `controlnet_conditioning_scale`: the residuals are multiplied by it.
    pub scale: f64,
    /// The fractions of the steps that run where the net starts and stops acting
    /// (`control_guidance_start` / `control_guidance_end`).
    pub start: f64,
    pub end: f64,
}

impl ControlWeight {
    /// The scale at step `i` of `n` that run: diffusers' `controlnet_keep[i]` =
    /// 1 − (i/n < start or (i+1)/n > end), times the scale.
    pub fn at(&self, i: usize, n: usize) -> f64 {
        let (i, n) = (i as f64, n as f64);
        let off = i / n < self.start || (i + 1.0) / n > self.end;
        if off {
            0.0
        } else {
            self.scale
        }
    }
}

/// The ControlNets a frame is denoised with (none: plain img2img).
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub inputs: Vec<ControlInput>,
    /// Guess mode: with guidance the nets see the prompt half only and add nothing to the
    /// unconditional half; their residuals grow from 0.1 to 1 along the skip connections.
    pub guess_mode: bool,
}

impl Control {
    /// The residuals of every net at step `i` of `n` for the UNet batch `input` (and its
    /// text), summed; `None` when no net acts at this step.
    #[allow(clippy::too_many_arguments)]
    fn residuals(
        &self,
        model: &dyn Img2ImgModel,
        input: &Tensor,
        timestep: f64,
        text: &Tensor,
        guided: bool,
        i: usize,
        n: usize,
    ) -> Result<Option<ControlResiduals>> {
        // Guess mode under guidance: the nets see the prompt half only.
        let prompt_only = self.guess_mode && guided;
        let (latents, text) = match prompt_only {
            true => (input.narrow(0, 1, 1)?, text.narrow(0, 1, 1)?),
            false => (input.clone(), text.clone()),
        };
        let mut sum: Option<ControlResiduals> = None;
        for c in &self.inputs {
            let scale = c.weight.at(i, n);
            // A net out of its window adds scale 0 × its residuals: nothing, so it is not run.
            if scale == 0.0 {
                continue;
            }
            // One image for the whole batch: the net embeds it once per frame.
            let r = model.controlnet(
                c.net,
                &latents,
                timestep,
                &text,
                &c.image,
                scale,
                self.guess_mode,
            )?;
            sum = Some(match sum {
                None => r,
                Some(s) => s.sum(&r)?,
            });
        }
        match (sum, prompt_only) {
            (Some(r), true) => Ok(Some(r.with_zero_uncond()?)),
            (sum, _) => Ok(sum),
        }
    }
}

/// The schedule a denoising run steps through: the scheduler set for `params.steps`, its
/// timesteps, the index of the first that runs at `params.strength`, and how many run.
pub(crate) struct Schedule {
    pub scheduler: Box<dyn Scheduler>,
    pub timesteps: Vec<f64>,
    pub first: usize,
    pub total: usize,
}

impl Schedule {
    pub fn new(params: &Img2ImgParams, config: &SchedulerConfig) -> Result<Self> {
        let first = params.first_step()?;
        let scheduler = params.scheduler.build(config, params.steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        Ok(Self {
            total: timesteps.len() - first,
            scheduler,
            timesteps,
            first,
        })
    }
}

/// What a caller of the denoising loop sees of it, and may change, step by step.
pub trait StepHook {
    /// Whether [`StepHook::predicted`] may replace step `i`'s x0 (of the `total` that run);
    /// only then does the loop work out the prediction.
    fn replaces_x0(&self, _i: usize, _total: usize) -> bool {
        false
    }

    /// Step `i`'s prediction, the clean latents x0 and the noise ε (after guidance, before
    /// the scheduler steps), asked where [`StepHook::replaces_x0`] says so: returns the x0 to
    /// step from instead, which the loop re-noises with the same ε (x0-space fusion), or
    /// `None` to go on unchanged.
    fn predicted(&mut self, _i: usize, _p: &Prediction) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Whether [`StepHook::entering`] may replace the latents step `i` (of `total`) starts from.
    fn enters(&self, _i: usize, _total: usize) -> bool {
        false
    }

    /// The latents step `i` starts from, asked where [`StepHook::enters`] says so: returns
    /// the latents to start from instead (pixel-aware fusion), or `None`.
    fn entering(
        &mut self,
        _i: usize,
        _latents: &Tensor,
        _at: &mut StepAt,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The latents after step `i`.
    fn stepped(&mut self, _i: usize, _latents: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// The loop as it is.
impl StepHook for () {}

/// What a hook entering a step may use: the step's place in the schedule and the frame's
/// random draws.
pub struct StepAt<'a> {
    scheduler: &'a dyn Scheduler,
    index: usize,
    noise: &'a mut dyn NoiseSource,
}

impl StepAt<'_> {
    /// How noisy the step's sample is.
    pub fn level(&self) -> Result<Level> {
        self.scheduler.level(self.index)
    }

    /// `x0` noised to this step's level with the draw `draw`.
    pub fn noised(&mut self, x0: &Tensor, draw: NoiseDraw) -> Result<Tensor> {
        let eps = self.noise.noise(draw, x0.dims(), x0.device())?;
        self.scheduler.add_noise(x0, &eps, self.index)
    }
}

/// A hook that only looks at the latents after every step.
pub struct AfterStep<F>(pub F);

impl<F: FnMut(usize, &Tensor)> StepHook for AfterStep<F> {
    fn stepped(&mut self, i: usize, latents: &Tensor) -> Result<()> {
        (self.0)(i, latents);
        Ok(())
    }
}

/// Restyles one image: [`denoise`], then [`decode`].
///
/// Returns the final latents (scaled, as the UNet sees them) and the image [1,3,H,W] in [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn img2img(
    model: &dyn Img2ImgModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    image: &Tensor,
    control: &Control,
    anchor: FrameAnchor,
    noise: &mut dyn NoiseSource,
    progress: &mut dyn Progress,
    hook: &mut dyn StepHook,
) -> Result<(Tensor, Tensor)> {
    let latents = denoise(
        model,
        scheduler_config,
        params,
        text,
        image,
        control,
        anchor,
        noise,
        progress,
        hook,
    )?;
    let image = decode(model, &latents)?;
    Ok((latents, image))
}

/// Encodes, noises and denoises one image; returns the final latents (scaled, as the UNet
/// sees them).
///
/// * `text`: prompt embeddings [2,77,D] as [negative, prompt] (only the prompt half is used when
///   guidance ≤ 1; a [1,77,D] prompt-only tensor is accepted then).
/// * `image`: [1,3,H,W] in [-1, 1], H and W multiples of the VAE's downscale factor.
/// * `control`: the ControlNets and their images (diffusers'
///   `StableDiffusionControlNetImg2ImgPipeline`; empty for plain img2img).
/// * `anchor`: what the UNet's self-attention attends to at each step (the frame alone, or a
///   recorded anchor frame: [`crate::nets::sd::cross_frame`]).
/// * `hook` sees every step that runs (i from 0): its predicted x0, which it may replace
///   (flow fusion, [`crate::stylize::temporal::fusion`]), and the latents after it (tests and
///   replays); `progress.step` is told too.
#[allow(clippy::too_many_arguments)]
pub fn denoise(
    model: &dyn Img2ImgModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    image: &Tensor,
    control: &Control,
    mut anchor: FrameAnchor,
    noise: &mut dyn NoiseSource,
    progress: &mut dyn Progress,
    hook: &mut dyn StepHook,
) -> Result<Tensor> {
    // 1. Schedule: the full schedule for `steps`, entered at the step `strength` picks.
    let Schedule {
        mut scheduler,
        timesteps,
        first,
        total,
    } = Schedule::new(params, scheduler_config)?;

    // 2. Text conditioning: [negative, prompt] for guidance, the prompt alone otherwise.
    let (negative, prompt) = conditioning(model, params, text)?;
    let guided = negative.is_some();
    let text = match &negative {
        Some(_) => text.clone(),
        None => prompt,
    };

    // 3. Encode.
    let device = image.device().clone();
    let x0 = encode(model, image, noise, NoiseDraw::Posterior)?;

    // 4. Noise the encoded frame to the first timestep that runs.
    let eps = noise.noise(NoiseDraw::Start, x0.dims(), &device)?;
    let mut latents = scheduler.add_noise(&x0, &eps, first)?;

    // 5. Denoise: UNet (on [negative, prompt] when guided), guidance, scheduler step.
    for (i, index) in (first..timesteps.len()).enumerate() {
        if hook.enters(i, total) {
            let mut at = StepAt {
                scheduler: scheduler.as_ref(),
                index,
                noise: &mut *noise,
            };
            if let Some(entered) = hook.entering(i, &latents, &mut at)? {
                latents = entered;
            }
        }
        let input = if guided {
            Tensor::cat(&[&latents, &latents], 0)?
        } else {
            latents.clone()
        };
        let input = scheduler.scale_model_input(input, index)?;
        let t = timesteps[index];
        let residuals = control.residuals(model, &input, t, &text, guided, i, total)?;
        let out = model.unet(&input, t, &text, &mut anchor.step(i)?, residuals.as_ref())?;
        let out = if guided {
            let (uncond, cond) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
            (&uncond + ((cond - &uncond)? * params.guidance)?)?
        } else {
            out
        };
        let replaced = match hook.replaces_x0(i, total) {
            true => {
                let predicted = scheduler.predict(&out, index, &latents)?;
                hook.predicted(i, &predicted)?.map(|x0| (x0, predicted.eps))
            }
            false => None,
        };
        let (latents_now, out) = match replaced {
            Some((x0, eps)) => scheduler.restate(&Prediction { x0, eps }, index)?,
            None => (latents, out),
        };
        let step_noise = if scheduler.needs_noise(index) {
            Some(noise.noise(NoiseDraw::Step(i), latents_now.dims(), &device)?)
        } else {
            None
        };
        latents = scheduler.step(&out, index, &latents_now, step_noise.as_ref())?;
        hook.stepped(i, &latents)?;
        progress.step(i + 1, total);
    }
    Ok(latents)
}

/// The negative prompt's embeddings when the run uses classifier-free guidance (not for an
/// LCM UNet, which is given the scale itself), and the prompt's, from `text` `[negative,
/// prompt]` (or `[prompt]` without guidance).
pub fn conditioning(
    model: &dyn Img2ImgModel,
    params: &Img2ImgParams,
    text: &Tensor,
) -> Result<(Option<Tensor>, Tensor)> {
    let guided = params.guided() && !model.embeds_guidance();
    match (guided, text.dim(0)?) {
        (true, 2) => Ok((Some(text.narrow(0, 0, 1)?), text.narrow(0, 1, 1)?)),
        (false, 2) => Ok((None, text.narrow(0, 1, 1)?)),
        (false, 1) => Ok((None, text.clone())),
        (_, b) => Err(Error::Model(format!(
            "prompt embeddings have batch {b}; guidance {} needs [negative, prompt]",
            params.guidance
        ))),
    }
}

/// The scaled latents of `image` [1,3,H,W] in [-1, 1]: the VAE posterior sampled with `draw`,
/// z = mean + exp(½·clamp(logvar, −30, 20))·ε (a tiny VAE gives z outright), times the
/// scaling factor.
pub fn encode(
    model: &dyn Img2ImgModel,
    image: &Tensor,
    noise: &mut dyn NoiseSource,
    draw: NoiseDraw,
) -> Result<Tensor> {
    let (mean, logvar) = model.vae_encode(&image.to_dtype(DType::F32)?)?;
    let z = match model.samples_posterior() {
        true => {
            let std = (logvar.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
            let eps = noise.noise(draw, mean.dims(), image.device())?;
            (mean + (std * eps)?)?
        }
        false => mean,
    };
    Ok((z * model.scaling_factor())?)
}

/// Decodes final latents (scaled) to an image [1,3,H,W] in [0, 1].
pub fn decode(model: &dyn Img2ImgModel, latents: &Tensor) -> Result<Tensor> {
    Ok(decode_raw(model, latents)?
        .affine(0.5, 0.5)?
        .clamp(0f32, 1f32)?)
}

/// Decodes latents (scaled) as the VAE gives them: [1,3,H,W], about [-1, 1], not clamped.
pub fn decode_raw(model: &dyn Img2ImgModel, latents: &Tensor) -> Result<Tensor> {
    model.vae_decode(&(latents / model.scaling_factor())?)
}
