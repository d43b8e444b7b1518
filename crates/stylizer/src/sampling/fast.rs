//! `--fast`: few-step sampling chosen by what the model is, since each family gets there its
//! own way (Luo et al. 2023, "LCM-LoRA"; Sauer et al. 2023, "Adversarial Diffusion
//! Distillation" for SD-Turbo):
//!
//! - a UNet distilled as a Latent Consistency Model (`time_cond_proj_dim` set) samples with the
//!   LCM scheduler and its guidance embedded, no classifier-free guidance batch;
//! - a distilled few-step model (scheduler config with `timestep_spacing: trailing`, as
//!   SD-Turbo ships) samples with Euler and no guidance;
//! - an SD 1.x model gets LCM-LoRA (`latent-consistency/lcm-lora-sdv1-5`) fused in and the LCM
//!   scheduler with guidance 1, as the LCM-LoRA model card runs it;
//! - an SD 2.x model has no LCM-LoRA, so it is refused with the way out.
//!
//! The LCM plans run [`FAST_STEPS`] steps of which `strength × steps` run, as the plain
//! img2img pipeline counts them (diffusers' LCM img2img pipeline would run all of them); a
//! distilled model runs one step at the noise level the strength picks (its model card's
//! img2img: 2 steps at strength 0.5).

use crate::nets::sd::config::ClipActivation;
use crate::sampling::img2img::Img2ImgParams;
use crate::sampling::schedulers::SchedulerKind;
use crate::sd::model::SdFiles;
use crate::weights::ModelSource;
use crate::{Error, Result};

/// The LCM-LoRA for SD 1.x models.
pub const LCM_LORA_SD1: &str = "latent-consistency/lcm-lora-sdv1-5";

/// The model `--fast` uses when none is given: SD 2.1 distilled for few steps, the same
/// family as the default model.
pub const FAST_MODEL: &str = "stabilityai/sd-turbo";

/// Steps of the LCM schedules under `--fast`; at the default strength 0.6, two run.
pub const FAST_STEPS: usize = 4;

/// The guidance an LCM-distilled UNet embeds (the LCM model cards' 8).
const LCM_UNET_GUIDANCE: f64 = 8.0;

/// How `--fast` samples a given model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPlan {
    /// An LCM-distilled UNet: LCM scheduler, guidance embedded.
    LcmUnet,
    /// A few-step distilled model (SD-Turbo): Euler, no guidance.
    Distilled,
    /// An SD 1.x model with LCM-LoRA fused in: LCM scheduler, guidance 1.
    LcmLora,
}

impl FastPlan {
    /// The plan for the model `files` describes; an SD 2.x model that is not distilled is
    /// refused, naming what to use instead.
    pub fn for_model(files: &SdFiles) -> Result<Self> {
        let trailing = files
            .scheduler_config
            .get("timestep_spacing")
            .and_then(|v| v.as_str())
            == Some("trailing");
        if files.unet_config.time_cond_proj_dim.is_some() {
            Ok(Self::LcmUnet)
        } else if trailing {
            Ok(Self::Distilled)
        } else if files.text_config.activation == ClipActivation::QuickGelu {
            // OpenAI's CLIP text encoder (SD 1.x); SD 2.x has OpenCLIP's (GELU).
            Ok(Self::LcmLora)
        } else {
            Err(Error::Config(format!(
                "--fast: {} is an SD 2.x model, and there is no LCM-LoRA for SD 2; use the few-step \
                 SD 2.1 model ({FAST_MODEL}, what --fast runs without --model-id) or an SD 1.5 model, \
                 or drop --fast",
                files.description()
            )))
        }
    }

    /// Sampler, steps and guidance for this plan, at the user's strength.
    pub fn params(self, strength: f64) -> Img2ImgParams {
        let (scheduler, guidance) = match self {
            Self::LcmUnet => (SchedulerKind::Lcm, LCM_UNET_GUIDANCE),
            Self::Distilled => (SchedulerKind::Euler, 0.0),
            Self::LcmLora => (SchedulerKind::Lcm, 1.0),
        };
        let mut p = Img2ImgParams {
            strength,
            steps: FAST_STEPS,
            guidance,
            scheduler,
        };
        if self == Self::Distilled && strength > 0.0 {
            // The fewest steps of which one runs.
            p.steps = 1;
            while (p.steps as f64 * strength) < 1.0 {
                p.steps += 1;
            }
        }
        p
    }

    /// [`FastPlan::params`], refused when the strength leaves no step to run.
    pub fn checked_params(self, strength: f64) -> Result<Img2ImgParams> {
        let p = self.params(strength);
        p.first_step().map_err(|_| {
            Error::Config(format!(
                "--fast runs {} steps here, of which strength {strength} runs none; use --strength {} or more",
                p.steps,
                1.0 / p.steps as f64
            ))
        })?;
        Ok(p)
    }

    /// The LoRA this plan fuses into the model, at scale 1.
    pub fn lora(self) -> Option<ModelSource> {
        (self == Self::LcmLora).then(|| ModelSource::Hub(LCM_LORA_SD1.into()))
    }

    /// One line for the user: what `--fast` picked and why.
    pub fn describe(self, strength: f64) -> String {
        let p = self.params(strength);
        let what = match self {
            Self::LcmUnet => "LCM-distilled UNet".to_string(),
            Self::Distilled => "few-step distilled model".to_string(),
            Self::LcmLora => format!("SD 1.x model, LCM-LoRA {LCM_LORA_SD1}"),
        };
        let run = p.steps - p.first_step().unwrap_or(p.steps);
        format!(
            "--fast: {what}; scheduler {}, {} steps ({run} run at strength {strength}), guidance {}",
            p.scheduler, p.steps, p.guidance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_runs_at_the_default_strength_and_a_low_one() {
        for plan in [FastPlan::LcmUnet, FastPlan::Distilled, FastPlan::LcmLora] {
            for strength in [0.6, 0.25, 1.0] {
                let p = plan.checked_params(strength).unwrap();
                // No classifier-free guidance batch either (an LCM UNet embeds its scale).
                assert!(plan == FastPlan::LcmUnet || !p.guided(), "{plan:?}");
            }
        }
        assert_eq!(FastPlan::LcmLora.params(0.6).first_step().unwrap(), 2);
        assert!(FastPlan::LcmLora.checked_params(0.2).is_err());
        // A distilled model: one step at the strength's noise level, whatever the strength.
        for (strength, steps) in [
            (0.6, 2),
            (0.5, 2),
            (0.3, 4),
            (0.1, 10),
            (1.0, 1),
            (0.07, 15),
        ] {
            let p = FastPlan::Distilled.checked_params(strength).unwrap();
            assert_eq!(p.steps, steps, "{strength}");
            assert_eq!(p.steps - p.first_step().unwrap(), 1, "{strength}");
        }
        assert!(FastPlan::LcmLora.describe(0.6).contains("2 run"));
        assert_eq!(
            FastPlan::LcmLora.lora(),
            Some(ModelSource::Hub(LCM_LORA_SD1.into()))
        );
        assert_eq!(FastPlan::Distilled.lora(), None);
    }
}
