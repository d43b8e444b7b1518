//! DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models", arXiv 2010.02502), eta = 0.
//! Mirrors diffusers `schedulers/scheduling_ddim.py` (`DDIMScheduler`).

use candle_core::Tensor;

use super::{lin2, spaced_timesteps, Common, Defaults, PredictionType, Scheduler, SchedulerConfig};
use crate::Result;

const DEFAULTS: Defaults = Defaults {
    beta_start: 0.0001,
    beta_end: 0.02,
    beta_schedule: "linear",
    spacing: "leading",
};

/// Deterministic DDIM sampling.
#[derive(Debug, Clone)]
pub struct Ddim {
    common: Common,
    timesteps: Vec<f64>,
    /// Distance between two steps in training timesteps (`num_train_timesteps // steps`,
    /// whatever the spacing, as diffusers computes the previous timestep).
    stride: usize,
    /// ᾱ used after the last step: 1 or ᾱ_0 (`set_alpha_to_one`).
    final_alpha_cumprod: f64,
    clip: Option<f64>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let common = Common::new(config, &DEFAULTS)?;
        // DDIM rounds "linspace" timesteps to integers (Euler keeps them fractional).
        let timesteps = spaced_timesteps(&common, steps)?
            .into_iter()
            .map(f64::round_ties_even)
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            common.alphas_cumprod[0] as f64
        };
        Ok(Self {
            stride: common.num_train_timesteps / steps,
            timesteps,
            final_alpha_cumprod,
            clip: config
                .clip_sample
                .unwrap_or(true)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            common,
        })
    }
}

/// x0 and ε predicted from a model output at ᾱ_t (shared with LCM).
pub(crate) fn predict_x0_eps(
    prediction: PredictionType,
    a_t: f64,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
    Ok(match prediction {
        PredictionType::Epsilon => (
            lin2(1.0 / sa, sample, -sb / sa, model_output)?,
            model_output.clone(),
        ),
        PredictionType::VPrediction => (
            lin2(sa, sample, -sb, model_output)?,
            lin2(sa, model_output, sb, sample)?,
        ),
        PredictionType::Sample => (
            model_output.clone(),
            lin2(1.0 / sb, sample, -sa / sb, model_output)?,
        ),
    })
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let a = self.common.alpha_cumprod(self.timesteps[index])?;
        lin2(a.sqrt(), x0, (1.0 - a).sqrt(), noise)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.timesteps[index];
        let a_t = self.common.alpha_cumprod(t)?;
        let prev = t - self.stride as f64;
        let a_prev = if prev >= 0.0 {
            self.common.alpha_cumprod(prev)?
        } else {
            self.final_alpha_cumprod
        };
        let (x0, eps) = predict_x0_eps(self.common.prediction, a_t, model_output, sample)?;
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        lin2(a_prev.sqrt(), &x0, (1.0 - a_prev).sqrt(), &eps)
    }
}
