//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models", arXiv 2211.01095): second-order multistep in data
//! prediction, first order on the first step and (for few steps or a final σ of 0) the last.
//! Mirrors diffusers `schedulers/scheduling_dpmsolver_multistep.py` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2` — the scheduler's name fixes both, so those
//! two config keys are not read.

use candle_core::Tensor;

use super::euler::final_sigma;
use super::{
    f32r, interp, karras_sigmas, lin2, numpy_arange_down, numpy_linspace, reject, sigma_to_t,
    Common, Level, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing, KARRAS_DEFAULTS,
};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// DPM-Solver++ 2M, optionally on Karras σs.
#[derive(Debug, Clone)]
pub struct DpmSolverPp2m {
    prediction: PredictionType,
    solver: SolverType,
    /// Use the first-order update on the last step.
    first_order_last: bool,
    timesteps: Vec<f64>,
    /// One more than `timesteps`: the σ reached after the last step (float32 values).
    sigmas: Vec<f64>,
    /// The previous step's x0 prediction, for the second-order update.
    prev_x0: Option<Tensor>,
}

/// α_t = 1/√(σ²+1), σ_t = σ·α_t and λ = ln α_t − ln σ_t of a σ-space level.
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let Level { alpha, sigma, .. } = Level::from_sigma(sigma, false);
    (alpha, sigma, alpha.ln() - sigma.ln())
}

impl DpmSolverPp2m {
    /// `karras` overrides the config's `use_karras_sigmas` when given.
    pub fn new(config: &SchedulerConfig, steps: usize, karras: Option<bool>) -> Result<Self> {
        let common = Common::new(config, &KARRAS_DEFAULTS)?;
        reject("use_exponential_sigmas", config.use_exponential_sigmas)?;
        reject("use_beta_sigmas", config.use_beta_sigmas)?;
        if let Some(v) = config.variance_type.as_deref() {
            return Err(Error::Config(format!(
                "scheduler config: variance_type '{v}' is not supported by DPM-Solver++"
            )));
        }
        let solver = match config.solver_type.as_deref().unwrap_or("midpoint") {
            "midpoint" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(Error::Config(format!(
                    "scheduler config: unsupported solver_type '{other}'"
                )))
            }
        };
        let n = common.num_train_timesteps;
        if steps > n {
            return Err(Error::Config(format!(
                "{steps} steps is more than the model's {n} training timesteps"
            )));
        }
        let alphas = &common.alphas_cumprod;
        // λ_min clipping shortens the schedule (−∞, i.e. no clipping, by default).
        let lambda_min = config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY);
        let clipped = alphas
            .iter()
            .rev()
            .map(|&a| (a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64)
            .take_while(|&l| l < lambda_min)
            .count();
        let last_t = n - clipped;
        if last_t == 0 {
            // Found by fuzzing: a λ_min above every λ_t left no timestep (and underflowed).
            return Err(Error::Config(format!(
                "scheduler config: lambda_min_clipped = {lambda_min} clips every timestep"
            )));
        }
        let mut timesteps: Vec<f64> = match common.spacing {
            TimestepSpacing::Linspace => numpy_linspace(0.0, (last_t - 1) as f64, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(f64::round_ties_even)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = last_t / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + common.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => numpy_arange_down(last_t as f64, n as f64 / steps as f64)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect(),
        };
        let table = common.train_sigmas();
        let sigmas: Vec<f64> = if karras.unwrap_or(config.use_karras_sigmas == Some(true)) {
            let s = karras_sigmas(table[0] as f64, table[n - 1] as f64, steps);
            let log_table: Vec<f32> = table.iter().map(|v| v.ln()).collect();
            // Rounded to integer timesteps, except for the cosine schedule where diffusers
            // keeps them fractional and then truncates them to int64.
            let cosine = config.beta_schedule.as_deref() == Some("squaredcos_cap_v2");
            timesteps = s
                .iter()
                .map(|&v| {
                    let t = sigma_to_t(v, &log_table);
                    if cosine {
                        t.trunc()
                    } else {
                        t.round_ties_even()
                    }
                })
                .collect();
            s
        } else {
            timesteps.iter().map(|&t| interp(t, &table)).collect()
        };
        let final_zero = config.final_sigmas_type.as_deref().unwrap_or("zero") == "zero";
        let mut sigmas = sigmas;
        sigmas.push(final_sigma(config, &table)?);
        let first_order_last = config.euler_at_final == Some(true)
            || (config.lower_order_final.unwrap_or(true) && timesteps.len() < 15)
            || final_zero;
        Ok(Self {
            prediction: common.prediction,
            solver,
            first_order_last,
            timesteps,
            sigmas: sigmas.into_iter().map(f32r).collect(),
            prev_x0: None,
        })
    }
}

impl Scheduler for DpmSolverPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let (alpha, sigma, _) = alpha_sigma_lambda(self.sigmas[index]);
        lin2(alpha, x0, sigma, noise)
    }

    fn prediction(&self) -> PredictionType {
        self.prediction
    }

    fn level(&self, index: usize) -> Result<Level> {
        Ok(Level::from_sigma(self.sigmas[index], false))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(self.sigmas[index]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[index + 1]);
        // The data prediction x0 at this step.
        let x0 = match self.prediction {
            PredictionType::Epsilon => {
                lin2(1.0 / alpha_s, sample, -sigma_s / alpha_s, model_output)?
            }
            PredictionType::VPrediction => lin2(alpha_s, sample, -sigma_s, model_output)?,
            PredictionType::Sample => model_output.clone(),
        };
        let h = lambda_t - lambda_s;
        let em1 = (-h).exp() - 1.0;
        let last = index + 1 == self.timesteps.len();
        let prev_x0 = self.prev_x0.replace(x0.clone());
        let out = match prev_x0 {
            Some(m1) if !(last && self.first_order_last) => {
                let (_, _, lambda_p) = alpha_sigma_lambda(self.sigmas[index - 1]);
                let r0 = (lambda_s - lambda_p) / h;
                // D1 = (x0 − x0_prev) / r0
                let d1 = ((&x0 - &m1)? / r0)?;
                let c1 = match self.solver {
                    SolverType::Midpoint => -0.5 * alpha_t * em1,
                    SolverType::Heun => alpha_t * (em1 / h + 1.0),
                };
                (lin2(sigma_t / sigma_s, sample, -alpha_t * em1, &x0)? + (d1 * c1)?)?
            }
            // First order (DPM-Solver++ 1 = DDIM in data prediction). With σ_t = 0 this is x0.
            _ => lin2(sigma_t / sigma_s, sample, -alpha_t * em1, &x0)?,
        };
        Ok(out)
    }
}
