//! Latent Consistency Model multistep sampling (Luo et al. 2023, "Latent Consistency Models",
//! arXiv 2310.04378). Mirrors diffusers `schedulers/scheduling_lcm.py` (`LCMScheduler`).
//!
//! Meant for LCM-distilled UNets at 2–8 steps; with an ordinary UNet it still runs the same
//! maths (the golden fixtures test exactly that), it just needs more steps to look right.

use candle_core::Tensor;

use super::ddim::AlphaSteps;
use super::{
    lin2, numpy_linspace, Common, Defaults, Level, PredictionType, Scheduler, SchedulerConfig,
};
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
    steps: AlphaSteps,
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
        Ok(Self {
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0),
            steps: AlphaSteps::new(common, timesteps, config, false),
        })
    }
}

impl Scheduler for Lcm {
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

    fn needs_noise(&self, index: usize) -> bool {
        index + 1 < self.steps.timesteps.len()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.steps.timesteps[index];
        let prev = self.steps.timesteps.get(index + 1).copied().unwrap_or(t);
        let a_t = self.steps.common.alpha_cumprod(t)?;
        let a_prev = self.steps.alpha_or_final(prev)?;
        let scaled = t * self.timestep_scaling;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        let (x0, _) = self.steps.predict(a_t, model_output, sample)?;
        let denoised = lin2(c_out, &x0, c_skip, sample)?;
        if !self.needs_noise(index) {
            return Ok(denoised);
        }
        let noise = noise.ok_or_else(|| Error::Model("LCM step without noise".into()))?;
        lin2(a_prev.sqrt(), &denoised, (1.0 - a_prev).sqrt(), noise)
    }
}
