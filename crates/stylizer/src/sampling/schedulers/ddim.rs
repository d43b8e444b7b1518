//! DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models", arXiv 2010.02502), eta = 0.
//! Mirrors diffusers `schedulers/scheduling_ddim.py` (`DDIMScheduler`).

use candle_core::Tensor;

use super::{
    lin2, spaced_timesteps, Common, Defaults, Level, Prediction, PredictionType, Scheduler,
    SchedulerConfig,
};
use crate::Result;

const DEFAULTS: Defaults = Defaults {
    beta_start: 0.0001,
    beta_end: 0.02,
    beta_schedule: "linear",
    spacing: "leading",
};

/// What DDIM and LCM share: timesteps in ᾱ space, the ᾱ after the last step, x0 clipping.
#[derive(Debug, Clone)]
pub(crate) struct AlphaSteps {
    pub common: Common,
    pub timesteps: Vec<f64>,
    /// ᾱ used after the last step: 1 or ᾱ_0 (`set_alpha_to_one`).
    final_alpha_cumprod: f64,
    clip: Option<f64>,
}

impl AlphaSteps {
    /// `clip_by_default`: whether x0 is clipped when the config does not say (`clip_sample`).
    pub fn new(
        common: Common,
        timesteps: Vec<f64>,
        config: &SchedulerConfig,
        clip_by_default: bool,
    ) -> Self {
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            common.alphas_cumprod[0] as f64
        };
        Self {
            timesteps,
            final_alpha_cumprod,
            clip: config
                .clip_sample
                .unwrap_or(clip_by_default)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            common,
        }
    }

    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let a = self.common.alpha_cumprod(self.timesteps[index])?;
        lin2(a.sqrt(), x0, (1.0 - a).sqrt(), noise)
    }

    /// ᾱ at `t`, or after the last step when `t` is negative.
    /// The level of step `index`.
    pub fn level(&self, index: usize) -> Result<Level> {
        Ok(Level::from_alpha_cumprod(
            self.common.alpha_cumprod(self.timesteps[index])?,
        ))
    }

    pub fn alpha_or_final(&self, t: f64) -> Result<f64> {
        if t >= 0.0 {
            self.common.alpha_cumprod(t)
        } else {
            Ok(self.final_alpha_cumprod)
        }
    }

    /// x0 (clipped) and ε predicted from a model output at ᾱ_t.
    pub fn predict(
        &self,
        a_t: f64,
        model_output: &Tensor,
        sample: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Prediction { x0, eps } =
            Level::from_alpha_cumprod(a_t).predict(self.common.prediction, model_output, sample)?;
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        Ok((x0, eps))
    }
}

/// Deterministic DDIM sampling.
#[derive(Debug, Clone)]
pub struct Ddim {
    steps: AlphaSteps,
    /// Distance between two steps in training timesteps (`num_train_timesteps // steps`,
    /// whatever the spacing, as diffusers computes the previous timestep).
    stride: usize,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let common = Common::new(config, &DEFAULTS)?;
        // DDIM rounds "linspace" timesteps to integers (Euler keeps them fractional).
        let timesteps = spaced_timesteps(&common, steps)?
            .into_iter()
            .map(f64::round_ties_even)
            .collect();
        Ok(Self {
            stride: common.num_train_timesteps / steps,
            steps: AlphaSteps::new(common, timesteps, config, true),
        })
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        self.steps.add_noise(x0, noise, index)
    }

    fn prediction(&self) -> PredictionType {
        self.steps.common.prediction
    }

    fn level(&self, index: usize) -> Result<Level> {
        self.steps.level(index)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.steps.timesteps[index];
        let a_t = self.steps.common.alpha_cumprod(t)?;
        let a_prev = self.steps.alpha_or_final(t - self.stride as f64)?;
        let (x0, eps) = self.steps.predict(a_t, model_output, sample)?;
        lin2(a_prev.sqrt(), &x0, (1.0 - a_prev).sqrt(), &eps)
    }
}
