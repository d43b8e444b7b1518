//! Latent Consistency Model multistep sampling (Luo et al. 2023, "Latent Consistency Models",
//! arXiv 2310.04378). Mirrors diffusers `schedulers/scheduling_lcm.py` (`LCMScheduler`).
//!
//! Meant for LCM-distilled UNets at 2–8 steps; with an ordinary UNet it still runs the same
//! maths (the golden fixtures test exactly that), it just needs more steps to look right.

use candle_core::Tensor;

use super::ddim::predict_x0_eps;
use super::{lin2, numpy_linspace, Common, Defaults, Scheduler, SchedulerConfig};
use crate::{Error, Result};

const DEFAULTS: Defaults = Defaults {
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: "scaled_linear",
    spacing: "leading",
};

/// σ_data of the consistency-model boundary condition (fixed in diffusers).
const SIGMA_DATA: f64 = 0.5;

/// LCM multistep sampler.
#[derive(Debug, Clone)]
pub struct Lcm {
    common: Common,
    timesteps: Vec<f64>,
    final_alpha_cumprod: f64,
    clip: Option<f64>,
    timestep_scaling: f64,
}

impl Lcm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let common = Common::new(config, &DEFAULTS)?;
        let n = common.num_train_timesteps;
        let original = config.original_inference_steps.unwrap_or(50);
        if original > n {
            return Err(Error::Config(format!(
                "scheduler config: original_inference_steps {original} is more than {n} training timesteps"
            )));
        }
        if steps > original {
            return Err(Error::Config(format!(
                "LCM: {steps} steps is more than the {original} steps it was distilled on (original_inference_steps)"
            )));
        }
        // The distillation schedule k−1, 2k−1, …, noisiest first; `steps` of them evenly picked.
        let k = n / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let timesteps = numpy_linspace(0.0, origin.len() as f64, steps + 1)
            .into_iter()
            .take(steps)
            .map(|i| origin[i.floor() as usize] as f64)
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            common.alphas_cumprod[0] as f64
        };
        Ok(Self {
            timesteps,
            final_alpha_cumprod,
            clip: config
                .clip_sample
                .unwrap_or(false)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0),
            common,
        })
    }
}

impl Scheduler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let a = self.common.alpha_cumprod(self.timesteps[index])?;
        lin2(a.sqrt(), x0, (1.0 - a).sqrt(), noise)
    }

    fn needs_noise(&self, index: usize) -> bool {
        index + 1 < self.timesteps.len()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.timesteps[index];
        let prev = self.timesteps.get(index + 1).copied().unwrap_or(t);
        let a_t = self.common.alpha_cumprod(t)?;
        let a_prev = if prev >= 0.0 {
            self.common.alpha_cumprod(prev)?
        } else {
            self.final_alpha_cumprod
        };
        let scaled = t * self.timestep_scaling;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        let (x0, _) = predict_x0_eps(self.common.prediction, a_t, model_output, sample)?;
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let denoised = lin2(c_out, &x0, c_skip, sample)?;
        if !self.needs_noise(index) {
            return Ok(denoised);
        }
        let noise = noise.ok_or_else(|| Error::Model("LCM step without noise".into()))?;
        lin2(a_prev.sqrt(), &denoised, (1.0 - a_prev).sqrt(), noise)
    }
}
