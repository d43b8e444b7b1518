//! The img2img loop against diffusers' recorded runs, with the networks replayed: the stand-in
//! model checks every input the loop gives it (CFG batch, scaled latents, timestep, text) and
//! answers with the golden's recorded outputs. This isolates the loop and the schedulers from
//! the networks' own numerical error; `img2img_parity.rs` runs the real tiny models.
//!
//! Fixtures: tests/fixtures/sd/golden/{tiny-sd,tiny-sd2}/img2img_<scheduler>.safetensors
//! (tools/reference/golden_sd.py: strength 0.6, 10 steps, guidance 7.5).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use stylizer::nets::sd::cross_frame::{FrameAnchor, SelfAttention};
use stylizer::nets::sd::unet::ControlResiduals;
use stylizer::sampling::img2img::{img2img, AfterStep, Control, Img2ImgModel, Img2ImgParams};
use stylizer::sampling::noise::ReplayNoise;
use stylizer::sampling::schedulers::{SchedulerConfig, SchedulerKind};
use stylizer::{NoProgress, Result};

use crate::common;
use crate::common::max_abs;

fn golden_path(variant: &str, kind: SchedulerKind) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../tests/fixtures/sd/golden/{variant}/img2img_{kind}.safetensors"
    ))
}

/// The scheduler config of each tiny fixture model (tools/reference/make_tiny_sd.py).
fn scheduler_config(variant: &str) -> SchedulerConfig {
    let prediction = if variant == "tiny-sd2" {
        "v_prediction"
    } else {
        "epsilon"
    };
    SchedulerConfig::from_json(&format!(
        r#"{{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000,
            "prediction_type": "{prediction}", "set_alpha_to_one": false, "steps_offset": 1,
            "timestep_spacing": "leading", "trained_betas": null}}"#
    ))
    .unwrap()
}

/// Answers with recorded outputs after checking what it is asked.
struct Replayed {
    g: HashMap<String, Tensor>,
    calls: RefCell<usize>,
    /// Largest deviation seen in the loop's inputs to the networks.
    input_err: RefCell<f32>,
}

impl Replayed {
    fn check(&self, what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        let e = max_abs(got, want);
        assert!(e < tol, "{what}: off by {e}");
        let mut m = self.input_err.borrow_mut();
        *m = m.max(e);
    }
}

impl Img2ImgModel for Replayed {
    fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check("vae input", image, &self.g["image_in"], 1e-7);
        Ok((
            self.g["latent_mean"].clone(),
            self.g["latent_logvar"].clone(),
        ))
    }
    fn unet(
        &self,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        _frames: &mut SelfAttention,
        _control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        let i = self.calls.replace_with(|c| *c + 1);
        let want_t = self.g[&format!("step{i}.t")]
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert_eq!(timestep, want_t, "step {i} timestep");
        // The latents drift from the reference's by the loop's own rounding, step after step.
        self.check(
            &format!("step {i} UNet input"),
            latents,
            &self.g[&format!("step{i}.model_input")],
            1e-4,
        );
        self.check("text", text, &self.g["prompt_embeds"], f32::MIN_POSITIVE);
        Ok(self.g[&format!("step{i}.model_output_raw")].clone())
    }
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        let want = (&self.g["final_latents"] / 0.18215)?;
        self.check("decoder input", latents, &want, 1e-4);
        Ok(self.g["image_decoded_raw"].clone())
    }
    fn scaling_factor(&self) -> f64 {
        0.18215
    }
}

#[test]
fn loop_reproduces_diffusers_runs_with_replayed_networks() {
    for variant in ["tiny-sd", "tiny-sd2"] {
        for kind in SchedulerKind::ALL {
            let path = golden_path(variant, kind);
            let g = common::load_tensors(&path);
            let mut noise = ReplayNoise::new(g.clone());
            let model = Replayed {
                g: g.clone(),
                calls: RefCell::new(0),
                input_err: RefCell::new(0.0),
            };
            let params = Img2ImgParams {
                strength: 0.6,
                steps: 10,
                guidance: 7.5,
                scheduler: kind,
            };
            let mut after = Vec::new();
            let (latents, image) = img2img(
                &model,
                &scheduler_config(variant),
                &params,
                &g["prompt_embeds"],
                &g["image_in"],
                &Control::default(),
                FrameAnchor::Independent,
                &mut noise,
                &mut NoProgress,
                &mut AfterStep(|i, l: &Tensor| after.push((i, l.clone()))),
            )
            .unwrap();
            let n = *model.calls.borrow();
            assert_eq!(n, 6, "{variant} {kind}: UNet calls");
            assert_eq!(after.len(), n);
            for (i, l) in &after {
                let e = max_abs(l, &g[&format!("step{i}.latents_after")]);
                assert!(e < 1e-4, "{variant} {kind}: step {i} latents off by {e}");
            }
            let e_lat = max_abs(&latents, &g["final_latents"]);
            let e_img = max_abs(&image, &g["image_out"]);
            assert!(
                e_lat < 1e-4 && e_img < 1e-6,
                "{variant} {kind}: {e_lat} {e_img}"
            );
            assert!(
                noise.unused().is_empty(),
                "{variant} {kind}: unused noise {:?}",
                noise.unused()
            );
            println!(
                "{variant} {kind}: final latents max abs {e_lat:.2e}, UNet inputs {:.2e}",
                *model.input_err.borrow()
            );
        }
    }
}

#[test]
fn guidance_at_most_one_runs_the_prompt_alone() {
    let g = common::load_tensors(golden_path("tiny-sd", SchedulerKind::Ddim));
    struct PromptOnly(Tensor);
    impl Img2ImgModel for PromptOnly {
        fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
            let (_, _, h, w) = image.dims4()?;
            let z = Tensor::zeros((1, 4, h / 2, w / 2), DType::F32, image.device())?;
            Ok((z.clone(), z))
        }
        fn unet(
            &self,
            latents: &Tensor,
            _t: f64,
            text: &Tensor,
            _frames: &mut SelfAttention,
            _control: Option<&ControlResiduals>,
        ) -> Result<Tensor> {
            assert_eq!(latents.dim(0)?, 1, "no unconditional half");
            assert_eq!(
                max_abs(text, &self.0),
                0.0,
                "the prompt half of [negative, prompt]"
            );
            Ok(latents.zeros_like()?)
        }
        fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
            let (_, _, h, w) = latents.dims4()?;
            Ok(Tensor::zeros(
                (1, 3, h * 2, w * 2),
                DType::F32,
                latents.device(),
            )?)
        }
        fn scaling_factor(&self) -> f64 {
            0.18215
        }
    }
    let model = PromptOnly(g["prompt_embeds"].narrow(0, 1, 1).unwrap());
    let params = Img2ImgParams {
        guidance: 1.0,
        ..Img2ImgParams::default()
    };
    let mut noise = stylizer::sampling::noise::SeededNoise::new(1);
    let (_, image) = img2img(
        &model,
        &scheduler_config("tiny-sd"),
        &params,
        &g["prompt_embeds"],
        &g["image_in"],
        &Control::default(),
        FrameAnchor::Independent,
        &mut noise,
        &mut NoProgress,
        &mut (),
    )
    .unwrap();
    assert_eq!(image.dims(), g["image_in"].dims());
}

#[test]
fn settings_that_cannot_run_are_user_errors() {
    let bad = |strength: f64, steps: usize, guidance: f64| {
        Img2ImgParams {
            strength,
            steps,
            guidance,
            scheduler: SchedulerKind::Ddim,
        }
        .first_step()
        .unwrap_err()
        .to_string()
    };
    assert!(bad(1.5, 10, 7.5).contains("strength"));
    assert!(bad(0.05, 10, 7.5).contains("no step"));
    assert!(bad(0.6, 0, 7.5).contains("steps"));
    assert!(bad(0.6, 10, f64::NAN).contains("guidance"));
    let p = Img2ImgParams {
        strength: 0.6,
        steps: 10,
        ..Img2ImgParams::default()
    };
    assert_eq!(
        p.first_step().unwrap(),
        4,
        "int(10 × 0.6) = 6 steps run, from index 4"
    );
}
