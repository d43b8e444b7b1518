//! Euler and Euler-ancestral samplers in σ space (Karras et al. 2022, "Elucidating the Design
//! Space of Diffusion-Based Generative Models", arXiv 2206.00364; k-diffusion `sample_euler`,
//! `sample_euler_ancestral`). Mirror diffusers `schedulers/scheduling_euler_discrete.py`
//! (`EulerDiscreteScheduler`, no churn) and `scheduling_euler_ancestral_discrete.py`.

use candle_core::Tensor;

use super::{
    f32r, interp, karras_sigmas, lin2, reject, sigma_to_t, spaced_timesteps, Common, Level,
    PredictionType, Scheduler, SchedulerConfig, KARRAS_DEFAULTS,
};
use crate::{Error, Result};

/// The σ-space state both Euler variants share: timesteps and σ per step plus a final σ.
#[derive(Debug, Clone)]
struct SigmaSteps {
    prediction: PredictionType,
    /// float32 values, fractional when they come from Karras σs or "linspace" spacing.
    timesteps: Vec<f64>,
    /// One more than `timesteps`: the σ reached after the last step.
    sigmas: Vec<f64>,
}

impl SigmaSteps {
    /// σ of every inference timestep, interpolated in the training σ table.
    fn new(common: &Common, steps: usize) -> Result<(Self, Vec<f32>)> {
        let timesteps: Vec<f64> = spaced_timesteps(common, steps)?
            .into_iter()
            .map(f32r)
            .collect();
        let table = common.train_sigmas();
        let sigmas = timesteps.iter().map(|&t| interp(t, &table)).collect();
        Ok((
            Self {
                prediction: common.prediction,
                timesteps,
                sigmas,
            },
            table,
        ))
    }

    fn x0(&self, model_output: &Tensor, sigma: f64, sample: &Tensor) -> Result<Tensor> {
        match self.prediction {
            PredictionType::Epsilon => lin2(1.0, sample, -sigma, model_output),
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                lin2(-sigma / s2.sqrt(), model_output, 1.0 / s2, sample)
            }
            PredictionType::Sample => Ok(model_output.clone()),
        }
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        lin2(1.0, x0, self.sigmas[index], noise)
    }

    fn scale_model_input(&self, sample: Tensor, index: usize) -> Result<Tensor> {
        let s = self.sigmas[index];
        Ok((sample / (s * s + 1.0).sqrt())?)
    }
}

/// Euler sampler: deterministic, or ancestral (steps down to σ_down, then adds σ_up of fresh
/// noise).
#[derive(Debug, Clone)]
pub struct Euler {
    steps: SigmaSteps,
    ancestral: bool,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let common = Common::new(config, &KARRAS_DEFAULTS)?;
        reject("use_exponential_sigmas", config.use_exponential_sigmas)?;
        reject("use_beta_sigmas", config.use_beta_sigmas)?;
        for (key, value, supported) in [
            ("interpolation_type", &config.interpolation_type, "linear"),
            ("timestep_type", &config.timestep_type, "discrete"),
        ] {
            if let Some(v) = value.as_deref().filter(|v| *v != supported) {
                return Err(Error::Config(format!(
                    "scheduler config: {key} '{v}' is not supported by Euler"
                )));
            }
        }
        let (mut s, table) = SigmaSteps::new(&common, steps)?;
        if config.use_karras_sigmas == Some(true) {
            // The ramp spans the σs of the chosen timesteps unless the config pins its ends.
            let min = config.sigma_min.unwrap_or(*s.sigmas.last().unwrap_or(&0.0));
            let max = config.sigma_max.unwrap_or(s.sigmas[0]);
            s.sigmas = karras_sigmas(min, max, steps);
            let log_table: Vec<f32> = table.iter().map(|v| v.ln()).collect();
            s.timesteps = s
                .sigmas
                .iter()
                .map(|&v| f32r(sigma_to_t(v, &log_table)))
                .collect();
        }
        let last = final_sigma(config, &table)?;
        s.sigmas.push(last);
        s.sigmas = s.sigmas.into_iter().map(f32r).collect();
        Ok(Self {
            steps: s,
            ancestral: false,
        })
    }

    pub fn ancestral(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let common = Common::new(config, &KARRAS_DEFAULTS)?;
        if common.prediction == PredictionType::Sample {
            return Err(Error::Config(
                "Euler ancestral does not support prediction_type 'sample'".into(),
            ));
        }
        let (mut s, _) = SigmaSteps::new(&common, steps)?;
        s.sigmas.push(0.0);
        s.sigmas = s.sigmas.into_iter().map(f32r).collect();
        Ok(Self {
            steps: s,
            ancestral: true,
        })
    }
}

/// σ after the last step: 0, or the smallest training σ (`final_sigmas_type`).
pub(crate) fn final_sigma(config: &SchedulerConfig, table: &[f32]) -> Result<f64> {
    match config.final_sigmas_type.as_deref().unwrap_or("zero") {
        "zero" => Ok(0.0),
        "sigma_min" => Ok(table[0] as f64),
        other => Err(Error::Config(format!(
            "scheduler config: unsupported final_sigmas_type '{other}'"
        ))),
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        self.steps.add_noise(x0, noise, index)
    }

    fn prediction(&self) -> PredictionType {
        self.steps.prediction
    }

    fn level(&self, index: usize) -> Result<Level> {
        Ok(Level::from_sigma(self.steps.sigmas[index], true))
    }

    fn scale_model_input(&self, sample: Tensor, index: usize) -> Result<Tensor> {
        self.steps.scale_model_input(sample, index)
    }

    fn needs_noise(&self, _index: usize) -> bool {
        self.ancestral
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (from, to) = (self.steps.sigmas[index], self.steps.sigmas[index + 1]);
        let x0 = self.steps.x0(model_output, from, sample)?;
        if !self.ancestral {
            // x + (x − x0)/σ · (σ_next − σ)
            let r = (to - from) / from;
            return lin2(1.0 + r, sample, -r, &x0);
        }
        let noise =
            noise.ok_or_else(|| Error::Model("Euler ancestral step without noise".into()))?;
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let r = (down - from) / from;
        Ok((lin2(1.0 + r, sample, -r, &x0)? + (noise * up)?)?)
    }
}
