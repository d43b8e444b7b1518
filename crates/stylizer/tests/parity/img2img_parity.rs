//! Full img2img parity with diffusers' StableDiffusionImg2ImgPipeline on the tiny fixture
//! models: real tokenizer, text encoder, UNet and VAE, every scheduler, the recorded noise
//! replayed. Tolerance 1e-3 max abs on latents and image (shared/reference/README.md).
//!
//! Fixtures: tests/fixtures/sd/{tiny-sd,tiny-sd2} (models) and
//! tests/fixtures/sd/golden/<variant>/img2img_<scheduler>.safetensors
//! (tools/reference/golden_sd.py: prompt below, negative "", strength 0.6, 10 steps, guidance 7.5).

use candle_core::Tensor;
use stylizer::nets::sd::cross_frame::FrameAnchor;
use stylizer::sampling::img2img::{img2img, AfterStep, Control, Img2ImgParams};
use stylizer::sampling::noise::ReplayNoise;
use stylizer::sampling::schedulers::SchedulerKind;
use stylizer::NoProgress;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd;
use crate::tiny_sd::{fixtures, PROMPT};

const TOL: f32 = 1e-3;

fn parity(variant: &str) {
    let (files, text, model, scheduler) = tiny_sd::load(variant);
    for kind in SchedulerKind::ALL {
        let path = fixtures().join(format!("golden/{variant}/img2img_{kind}.safetensors"));
        let g = common::load_tensors(&path);
        let ids: Vec<i64> = g["prompt_input_ids"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours: Vec<i64> = files
            .tokenizer()
            .encode(PROMPT)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(ours, ids, "{variant}: prompt token ids");
        let e_text = max_abs(&text, &g["prompt_embeds"]);
        assert!(
            e_text < 1e-4,
            "{variant}: prompt embeddings off by {e_text}"
        );

        let params = Img2ImgParams {
            strength: 0.6,
            steps: 10,
            guidance: 7.5,
            scheduler: kind,
        };
        let mut noise = ReplayNoise::new(g.clone());
        let mut e_steps = 0f32;
        let (latents, image) = img2img(
            &model,
            &scheduler,
            &params,
            &text,
            &g["image_in"],
            &Control::default(),
            FrameAnchor::Independent,
            &mut noise,
            &mut NoProgress,
            &mut AfterStep(|i, l: &Tensor| {
                e_steps = e_steps.max(max_abs(l, &g[&format!("step{i}.latents_after")]));
            }),
        )
        .unwrap();
        assert!(
            noise.unused().is_empty(),
            "{variant} {kind}: unused noise {:?}",
            noise.unused()
        );
        let e_lat = max_abs(&latents, &g["final_latents"]);
        let e_img = max_abs(&image, &g["image_out"]);
        println!("{variant} {kind}: max abs: steps {e_steps:.2e}, final latents {e_lat:.2e}, image {e_img:.2e}");
        assert!(
            e_steps < TOL && e_lat < TOL && e_img < TOL,
            "{variant} {kind}: beyond {TOL}"
        );
    }
}

#[test]
fn img2img_matches_diffusers_tiny_sd() {
    parity("tiny-sd");
}

#[test]
fn img2img_matches_diffusers_tiny_sd2() {
    parity("tiny-sd2");
}

/// An SD-Turbo-class setup (tools/reference/golden_turbo.py): Euler with `trailing` timestep
/// spacing, guidance 0 (no classifier-free guidance), 2 steps at strength 0.5 (one runs, at
/// t = 499), on the tiny SD-2 model; the scheduler is built from the config diffusers used.
#[test]
fn few_step_turbo_schedule_matches_diffusers() {
    let (_, text, model, _) = tiny_sd::load("tiny-sd2");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/tiny-sd2/img2img_turbo.json")).unwrap(),
    )
    .unwrap();
    let scheduler =
        stylizer::sampling::schedulers::SchedulerConfig::from_value(&meta["scheduler_config"])
            .unwrap();
    let g = candle_core::safetensors::load(
        fixtures().join("golden/tiny-sd2/img2img_turbo.safetensors"),
        &common::device(),
    )
    .unwrap();
    let params = Img2ImgParams {
        strength: 0.5,
        steps: 2,
        guidance: 0.0,
        scheduler: SchedulerKind::Euler,
    };
    // Strength 0.5 of 2 steps: one runs (the replay asserts its draws are used).
    let (latents, image) =
        tiny_sd::replay_img2img(&model, &scheduler, &params, &text, &g, &Control::default());
    let e_lat = max_abs(&latents, &g["final_latents"]);
    let e_img = max_abs(&image, &g["image_out"]);
    println!("turbo: latents {e_lat:.2e}, image {e_img:.2e}");
    assert!(e_lat < TOL && e_img < TOL, "latents {e_lat}, image {e_img}");
}

/// An LCM UNet (`time_cond_proj_dim`: the guidance scale embedded into the time embedding,
/// tools/reference/golden_lcm_unet.py) in tiny-sd's pipeline: the UNet forward with the
/// embedding of guidance 8, and img2img with the LCM scheduler, which then runs without
/// classifier-free guidance as diffusers does.
#[test]
fn lcm_unet_embeds_the_guidance_scale_as_diffusers() {
    // tiny-sd with the LCM UNet in place of its own.
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    for part in ["text_encoder", "tokenizer", "vae", "scheduler"] {
        copy(
            &fixtures().join("tiny-sd").join(part),
            &dir.path().join(part),
        );
    }
    copy(&fixtures().join("tiny-lcm-unet"), &dir.path().join("unet"));
    let opts = stylizer::sd::model::LoadOptions::new(common::device());
    let source = stylizer::weights::ModelSource::Folder(dir.path().to_path_buf());
    let files = stylizer::sd::model::SdFiles::resolve(&source, &opts, &mut NoProgress).unwrap();
    let text = files.encode_prompts(PROMPT, Some("")).unwrap();
    let mut model = stylizer::sd::model::SdModel::load(&files, &mut NoProgress).unwrap();
    model.set_guidance(8.0).unwrap();
    assert!(model.embeds_guidance());
    let g = candle_core::safetensors::load(
        fixtures().join("golden/tiny-sd/lcm_unet.safetensors"),
        &common::device(),
    )
    .unwrap();
    let out = model
        .unet(
            &g["sample"],
            &[501.0],
            &g["encoder_hidden_states"],
            &mut stylizer::nets::sd::cross_frame::SelfAttention::Own,
            None,
        )
        .unwrap();
    let e_unet = max_abs(&out, &g["out"]);
    let scheduler =
        stylizer::sampling::schedulers::SchedulerConfig::from_value(&files.scheduler_config)
            .unwrap();
    let params = Img2ImgParams {
        strength: 0.6,
        steps: 4,
        guidance: 8.0,
        scheduler: SchedulerKind::Lcm,
    };
    let (latents, image) =
        tiny_sd::replay_img2img(&model, &scheduler, &params, &text, &g, &Control::default());
    let e_lat = max_abs(&latents, &g["final_latents"]);
    let e_img = max_abs(&image, &g["image_out"]);
    println!("LCM UNet: forward {e_unet:.2e}, img2img latents {e_lat:.2e}, image {e_img:.2e}");
    assert!(e_unet < 1e-4, "forward {e_unet}");
    assert!(e_lat < TOL && e_img < TOL, "latents {e_lat}, image {e_img}");
}
