//! Noise schedulers for img2img, built from a model's `scheduler/scheduler_config.json`.
//!
//! Each scheduler mirrors its diffusers class (diffusers 0.42, `src/diffusers/schedulers/`):
//! DDIM (`scheduling_ddim.py`), Euler (`scheduling_euler_discrete.py`), Euler ancestral
//! (`scheduling_euler_ancestral_discrete.py`), DPM-Solver++ 2M (`scheduling_dpmsolver_multistep.py`)
//! and LCM (`scheduling_lcm.py`). Like diffusers' `X.from_config(pipe.scheduler.config)`, keys
//! missing from the model's config take the defaults of the class being built, so the same
//! config file gives e.g. "leading" spacing to DDIM and "linspace" to Euler.
//!
//! Tables follow torch's float32 arithmetic where it changes results (betas, ᾱ and σ are f32);
//! the per-step scalars are computed in f64 from those tables.

mod ddim;
mod dpm_solver;
mod euler;
mod lcm;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::Tensor;
use serde::Deserialize;

use crate::{Error, Result};

pub use ddim::Ddim;
pub use dpm_solver::DpmSolverPp2m;
pub use euler::Euler;
pub use lcm::Lcm;

/// One denoising schedule, set for a number of inference steps.
///
/// Steps are addressed by their index in [`Scheduler::timesteps`]; img2img starts part-way
/// through the schedule and then steps through every following index in order.
pub trait Scheduler: Send {
    /// The whole schedule, noisiest first, as the UNet receives them.
    fn timesteps(&self) -> &[f64];

    /// Noises clean latents `x0` to the level of step `index` (img2img's starting point).
    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor>;

    /// Scales the latents given to the UNet at step `index` (σ-based schedulers divide by
    /// √(σ²+1)); the identity for the others.
    fn scale_model_input(&self, sample: Tensor, _index: usize) -> Result<Tensor> {
        Ok(sample)
    }

    /// Whether [`Scheduler::step`] at `index` needs fresh noise (ancestral samplers).
    fn needs_noise(&self, _index: usize) -> bool {
        false
    }

    /// One step from `index` to `index + 1`, given the (guided) model output at `index`.
    /// `noise` must be `Some` exactly when [`Scheduler::needs_noise`] says so.
    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// What the UNet predicts.
    fn prediction(&self) -> PredictionType;

    /// How noisy a sample at step `index` is.
    fn level(&self, index: usize) -> Result<Level>;

    /// The clean latents x0 and the noise ε that a (guided) model output at step `index`
    /// says `sample` is made of.
    fn predict(&self, model_output: &Tensor, index: usize, sample: &Tensor) -> Result<Prediction> {
        self.level(index)?
            .predict(self.prediction(), model_output, sample)
    }

    /// The sample and model output at step `index` that say `p`: [`Scheduler::predict`]'s
    /// inverse, for a loop that edits the prediction before it steps (x0-space fusion).
    fn restate(&self, p: &Prediction, index: usize) -> Result<(Tensor, Tensor)> {
        self.level(index)?.restate(self.prediction(), p)
    }
}

/// A model output read as what it says about the sample.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The clean latents.
    pub x0: Tensor,
    /// The noise.
    pub eps: Tensor,
}

/// How noisy a sample is: it is `scale · (alpha · x0 + sigma · ε)`, with alpha² + sigma² = 1.
/// Schedulers in ᾱ space (DDIM, LCM, DPM-Solver) have scale 1; those in σ space (Euler) keep
/// samples as x0 + σ·ε, i.e. scale 1/alpha, and hand the UNet the sample divided by it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub alpha: f64,
    pub sigma: f64,
    pub scale: f64,
}

impl Level {
    /// At ᾱ (a sample in ᾱ space).
    pub fn from_alpha_cumprod(alpha_cumprod: f64) -> Self {
        Self {
            alpha: alpha_cumprod.sqrt(),
            sigma: (1.0 - alpha_cumprod).sqrt(),
            scale: 1.0,
        }
    }

    /// At k-diffusion's σ; the sample in σ space when `sigma_space`, else in ᾱ space.
    pub fn from_sigma(sigma: f64, sigma_space: bool) -> Self {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        Self {
            alpha,
            sigma: sigma * alpha,
            scale: if sigma_space { 1.0 / alpha } else { 1.0 },
        }
    }

    /// x0 and ε from a model output predicting `prediction` for `sample` at this level.
    pub fn predict(
        &self,
        prediction: PredictionType,
        model_output: &Tensor,
        sample: &Tensor,
    ) -> Result<Prediction> {
        let (sa, sb) = (self.alpha, self.sigma);
        let scaled;
        let sample = match self.scale {
            1.0 => sample,
            k => {
                scaled = (sample / k)?;
                &scaled
            }
        };
        let (x0, eps) = match prediction {
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
        };
        Ok(Prediction { x0, eps })
    }

    /// The sample at this level made of `p`, and the output a model predicting `prediction`
    /// gives for it.
    pub fn restate(&self, prediction: PredictionType, p: &Prediction) -> Result<(Tensor, Tensor)> {
        let (sa, sb) = (self.alpha, self.sigma);
        let sample = lin2(sa * self.scale, &p.x0, sb * self.scale, &p.eps)?;
        let output = match prediction {
            PredictionType::Epsilon => p.eps.clone(),
            PredictionType::VPrediction => lin2(sa, &p.eps, -sb, &p.x0)?,
            PredictionType::Sample => p.x0.clone(),
        };
        Ok((sample, output))
    }
}

/// The schedulers a user can pick (`--scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulerKind {
    /// DDIM, deterministic (eta = 0). The default.
    #[default]
    Ddim,
    /// Euler (k-diffusion `sample_euler`, no churn).
    Euler,
    /// Euler ancestral: fresh noise at every step.
    EulerAncestral,
    /// DPM-Solver++ 2M; Karras σs when the config asks for them.
    DpmPp2m,
    /// DPM-Solver++ 2M with Karras σs, whatever the config says.
    DpmPp2mKarras,
    /// Latent Consistency Model sampler: meant for LCM-distilled UNets and few steps.
    Lcm,
}

impl SchedulerKind {
    /// All kinds, in the order they are listed to users.
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPp2m,
        SchedulerKind::DpmPp2mKarras,
        SchedulerKind::Lcm,
    ];

    /// The name used on the command line and in fingerprints.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler_a",
            SchedulerKind::DpmPp2m => "dpmpp_2m",
            SchedulerKind::DpmPp2mKarras => "dpmpp_2m_karras",
            SchedulerKind::Lcm => "lcm",
        }
    }

    /// Builds this scheduler from a model's scheduler config, set for `steps` inference steps.
    pub fn build(self, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
        if steps == 0 {
            return Err(Error::Config(
                "the number of steps must be at least 1".into(),
            ));
        }
        Ok(match self {
            SchedulerKind::Ddim => Box::new(Ddim::new(config, steps)?),
            SchedulerKind::Euler => Box::new(Euler::new(config, steps)?),
            SchedulerKind::EulerAncestral => Box::new(Euler::ancestral(config, steps)?),
            SchedulerKind::DpmPp2m => Box::new(DpmSolverPp2m::new(config, steps, None)?),
            SchedulerKind::DpmPp2mKarras => {
                Box::new(DpmSolverPp2m::new(config, steps, Some(true))?)
            }
            SchedulerKind::Lcm => Box::new(Lcm::new(config, steps)?),
        })
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase().replace('-', "_");
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
                Error::Config(format!(
                    "unknown scheduler '{s}' (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

/// `scheduler_config.json` as diffusers writes it. Every key is optional: each scheduler fills
/// in its own class defaults, as `from_config` does. Keys no scheduler here reads are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<usize>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub final_sigmas_type: Option<String>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str::<Self>(text)
            .map_err(|e| Error::Weights(format!("scheduler config: {e}")))?
            .checked()
    }

    /// From an already parsed `scheduler_config.json`.
    pub fn from_value(value: &serde_json::Value) -> Result<Self> {
        Self::deserialize(value)
            .map_err(|e| Error::Weights(format!("scheduler config: {e}")))?
            .checked()
    }

    /// Refuses sizes no trained model has (tables of this length are built from them;
    /// fuzzing found `num_train_timesteps` near 2^64).
    fn checked(self) -> Result<Self> {
        const MAX: usize = 100_000;
        let sizes = [
            ("num_train_timesteps", self.num_train_timesteps),
            ("original_inference_steps", self.original_inference_steps),
            ("steps_offset", self.steps_offset),
            ("trained_betas", self.trained_betas.as_ref().map(Vec::len)),
        ];
        for (key, value) in sizes {
            if let Some(v) = value.filter(|&v| v > MAX || (key == "num_train_timesteps" && v == 0))
            {
                return Err(Error::Weights(format!(
                    "scheduler config: {key} = {v} (expected 1 to {MAX})"
                )));
            }
        }
        Ok(self)
    }

    /// Reads a `scheduler_config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_json(&text).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))
    }
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε (SD 1.x, SD-2-base).
    Epsilon,
    /// v = √ᾱ ε − √(1−ᾱ) x0 (SD-2 768-v models).
    VPrediction,
    /// The clean sample x0.
    Sample,
}

/// How inference timesteps are spread over the training timesteps (Table 2 of
/// "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The keys every scheduler shares, resolved against one class's defaults.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub num_train_timesteps: usize,
    pub prediction: PredictionType,
    pub spacing: TimestepSpacing,
    pub steps_offset: usize,
    /// ᾱ_t for t in 0..num_train_timesteps, float32 as torch keeps it.
    pub alphas_cumprod: Vec<f32>,
    /// Betas were rescaled to zero terminal SNR: ᾱ ends at 0, σ would be infinite.
    zero_snr: bool,
}

/// A class's defaults for the shared keys (they differ between diffusers classes).
pub(crate) struct Defaults {
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: &'static str,
    pub spacing: &'static str,
}

/// Defaults of DDIM, Euler, Euler ancestral and DPM-Solver multistep.
pub(crate) const KARRAS_DEFAULTS: Defaults = Defaults {
    beta_start: 0.0001,
    beta_end: 0.02,
    beta_schedule: "linear",
    spacing: "linspace",
};

impl Common {
    pub fn new(c: &SchedulerConfig, d: &Defaults) -> Result<Self> {
        let n = c.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(Error::Config(format!(
                "num_train_timesteps {n} is too small"
            )));
        }
        if c.thresholding == Some(true) {
            return Err(Error::Config(
                "scheduler config: dynamic thresholding is not supported (it is meant for pixel-space models)".into(),
            ));
        }
        let prediction = match c.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            other => {
                return Err(Error::Config(format!(
                    "scheduler config: unsupported prediction_type '{other}'"
                )))
            }
        };
        let spacing = match c.timestep_spacing.as_deref().unwrap_or(d.spacing) {
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            "linspace" => TimestepSpacing::Linspace,
            other => {
                return Err(Error::Config(format!(
                    "scheduler config: unsupported timestep_spacing '{other}'"
                )))
            }
        };
        let betas = betas(c, d, n)?;
        let zero_snr = c.rescale_betas_zero_snr == Some(true);
        let betas = if zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        Ok(Self {
            num_train_timesteps: n,
            prediction,
            spacing,
            steps_offset: c.steps_offset.unwrap_or(0),
            alphas_cumprod: cumprod_alphas(&betas),
            zero_snr,
        })
    }

    /// σ_t = √((1−ᾱ_t)/ᾱ_t) for every training timestep, float32 like diffusers' table.
    pub fn train_sigmas(&self) -> Vec<f32> {
        let last = self.alphas_cumprod.len() - 1;
        self.alphas_cumprod
            .iter()
            .enumerate()
            // With zero terminal SNR, diffusers' σ-space schedulers floor the last ᾱ at 2⁻²⁴.
            .map(|(i, &a)| {
                if self.zero_snr && i == last {
                    2f32.powi(-24)
                } else {
                    a
                }
            })
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// ᾱ at an integer timestep.
    pub fn alpha_cumprod(&self, t: f64) -> Result<f64> {
        let i = t as usize;
        self.alphas_cumprod
            .get(i)
            .map(|&a| a as f64)
            .ok_or_else(|| Error::Model(format!("timestep {t} outside the training schedule")))
    }
}

/// β_t as torch builds them (float32).
fn betas(c: &SchedulerConfig, d: &Defaults, n: usize) -> Result<Vec<f32>> {
    if let Some(b) = &c.trained_betas {
        if b.len() != n {
            return Err(Error::Config(format!(
                "scheduler config: {} trained_betas for {n} timesteps",
                b.len()
            )));
        }
        return Ok(b.iter().map(|&v| v as f32).collect());
    }
    let start = c.beta_start.unwrap_or(d.beta_start);
    let end = c.beta_end.unwrap_or(d.beta_end);
    Ok(
        match c.beta_schedule.as_deref().unwrap_or(d.beta_schedule) {
            "linear" => torch_linspace_f32(start, end, n),
            "scaled_linear" => torch_linspace_f32(start.sqrt(), end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            // Glide's cosine schedule. Computed in f64 then stored as f32, as diffusers does
            // (candle's version divides integers and yields garbage). β_0 ≈ 4e-5 is a small
            // difference of two numbers near 1, so the operations keep Python's order exactly.
            "squaredcos_cap_v2" => {
                let alpha_bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let t1 = i as f64 / n as f64;
                        let t2 = (i + 1) as f64 / n as f64;
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
            other => {
                return Err(Error::Config(format!(
                    "scheduler config: unsupported beta_schedule '{other}'"
                )))
            }
        },
    )
}

/// `torch.linspace(start, end, n, dtype=float32)`: f32 arithmetic, filled from both ends.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// ᾱ_t = Π(1−β): torch accumulates a float32 cumprod in double on the CPU.
fn cumprod_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0 - b) as f64;
            acc as f32
        })
        .collect()
}

/// Zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 as diffusers computes it.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let sqrt_acp: Vec<f32> = cumprod_alphas(betas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_acp[0], sqrt_acp[sqrt_acp.len() - 1]);
    let scale = first / (first - last);
    let acp: Vec<f32> = sqrt_acp
        .iter()
        .map(|&s| ((s - last) * scale).powi(2))
        .collect();
    let mut out = Vec::with_capacity(acp.len());
    out.push(1.0 - acp[0]);
    out.extend(acp.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// Integer timesteps for `steps` inference steps, as DDIM / Euler / Euler-a space them.
/// Returned as f64 before any dtype cast the caller applies.
pub(crate) fn spaced_timesteps(common: &Common, steps: usize) -> Result<Vec<f64>> {
    let n = common.num_train_timesteps;
    if steps > n {
        return Err(Error::Config(format!(
            "{steps} steps is more than the model's {n} training timesteps"
        )));
    }
    Ok(match common.spacing {
        TimestepSpacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + common.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => numpy_arange_down(n as f64, n as f64 / steps as f64)
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    })
}

/// `np.linspace(start, stop, num)` (endpoint included).
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.arange(start, 0, -step)`.
pub(crate) fn numpy_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil() as usize;
    (0..len).map(|i| start + i as f64 * -step).collect()
}

/// `np.interp(x, arange(len(fp)), fp)`.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    let (a, b) = (fp[j] as f64, fp[j + 1] as f64);
    (b - a) * (x - j as f64) + a
}

/// Karras et al. 2022 (arXiv 2206.00364) σ ramp with ρ = 7, from σ_max down to σ_min.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    numpy_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose σ is `sigma`: linear interpolation in log σ
/// (diffusers `_sigma_to_t`). `log_sigmas` is ln of the f32 training σ table.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // Last index whose log σ is ≤ log_sigma (0 when there is none), kept below the end.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Rounds to the nearest f32, where diffusers stores a table as float32.
pub(crate) fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// `a·x + b·y`.
pub(crate) fn lin2(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok(((x * a)? + (y * b)?)?)
}

/// Rejects config keys that select something none of these schedulers implements, instead of
/// silently sampling differently from diffusers.
pub(crate) fn reject(what: &str, value: Option<bool>) -> Result<()> {
    if value == Some(true) {
        return Err(Error::Config(format!(
            "scheduler config: {what} is not supported"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_restated_steps_where_the_model_output_does() {
        use candle_core::Device;
        let dev = Device::Cpu;
        let sample = Tensor::randn(0f32, 1.5, (1, 4, 3, 5), &dev).unwrap();
        let output = Tensor::randn(0f32, 1.0, (1, 4, 3, 5), &dev).unwrap();
        let max_abs = |a: &Tensor, b: &Tensor| {
            let d: Vec<f32> = (a - b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            d.into_iter().map(f32::abs).fold(0f32, f32::max)
        };
        for prediction in ["epsilon", "v_prediction", "sample"] {
            let config = SchedulerConfig {
                prediction_type: Some(prediction.into()),
                ..Default::default()
            };
            for kind in SchedulerKind::ALL {
                if kind == SchedulerKind::EulerAncestral && prediction == "sample" {
                    continue;
                }
                let (mut plain, mut restated) = (
                    kind.build(&config, 10).unwrap(),
                    kind.build(&config, 10).unwrap(),
                );
                let noise = Tensor::randn(0f32, 1.0, (1, 4, 3, 5), &dev).unwrap();
                for index in [4, 5, 9] {
                    let p = restated.predict(&output, index, &sample).unwrap();
                    let (s, o) = restated.restate(&p, index).unwrap();
                    assert!(max_abs(&s, &sample) < 1e-4, "{kind} {prediction}: sample");
                    let n = plain.needs_noise(index).then_some(&noise);
                    let want = plain.step(&output, index, &sample, n).unwrap();
                    let got = restated.step(&o, index, &s, n).unwrap();
                    let e = max_abs(&want, &got);
                    assert!(e < 1e-4, "{kind} {prediction} step {index}: off by {e}");
                }
            }
        }
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>().unwrap(), k);
        }
        assert_eq!(
            "Euler-A".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::EulerAncestral
        );
        let err = "pndm".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(
            err.contains("pndm") && err.contains("dpmpp_2m_karras"),
            "{err}"
        );
    }

    #[test]
    fn squaredcos_betas_follow_the_cosine_schedule() {
        let c = SchedulerConfig {
            beta_schedule: Some("squaredcos_cap_v2".into()),
            ..Default::default()
        };
        let b = betas(&c, &KARRAS_DEFAULTS, 1000).unwrap();
        // ᾱ(t) = cos²((t+0.008)/1.008·π/2) / cos²(0.008/1.008·π/2) telescopes from the betas.
        let f = |t: f64| {
            ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        let acp = cumprod_alphas(&b);
        for t in [0usize, 10, 500, 900] {
            let want = f((t + 1) as f64 / 1000.0) / f(0.0);
            assert!(
                (acp[t] as f64 - want).abs() < 1e-5,
                "t={t}: {} vs {want}",
                acp[t]
            );
        }
        assert_eq!(b[999], 0.999, "the last beta is capped");
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero_and_keeps_the_start() {
        let c = SchedulerConfig {
            beta_schedule: Some("scaled_linear".into()),
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            rescale_betas_zero_snr: Some(true),
            ..Default::default()
        };
        let common = Common::new(&c, &KARRAS_DEFAULTS).unwrap();
        let plain = Common::new(
            &SchedulerConfig {
                rescale_betas_zero_snr: None,
                ..c.clone()
            },
            &KARRAS_DEFAULTS,
        )
        .unwrap();
        assert!(common.alphas_cumprod[999].abs() < 1e-7);
        assert!((common.alphas_cumprod[0] - plain.alphas_cumprod[0]).abs() < 1e-6);
    }

    #[test]
    fn unsupported_config_values_are_errors() {
        let bad = |c: SchedulerConfig| Common::new(&c, &KARRAS_DEFAULTS).unwrap_err().to_string();
        assert!(bad(SchedulerConfig {
            prediction_type: Some("flow".into()),
            ..Default::default()
        })
        .contains("prediction_type"));
        assert!(bad(SchedulerConfig {
            timestep_spacing: Some("random".into()),
            ..Default::default()
        })
        .contains("timestep_spacing"));
        assert!(bad(SchedulerConfig {
            thresholding: Some(true),
            ..Default::default()
        })
        .contains("thresholding"));
    }
}
