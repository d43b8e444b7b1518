//! StreamV2V parity with its reference code: Jeff-LiangF/streamv2v's
//! `CachedSTXFormersAttnProcessor` (feature bank, ToMe merges, feature injection) installed in
//! diffusers' `StableDiffusionImg2ImgPipeline`, frames restyled one by one (the reference's
//! `use_denoising_batch=False` order), with the recorded noise and merge orders replayed. Ours
//! runs the frames as the stylize stage does. Cases: the defaults (ToMe bank, injection 0.8 at
//! cosine 0.98) with and without guidance, and a FIFO bank of two entries.
//!
//! Fixtures: tests/fixtures/sd/golden/<variant>/stream.safetensors
//! (tools/reference/golden_stream.py: DDIM, strength 0.6, 10 steps, 3 frames of bikes).

use stylizer::nets::sd::feature_bank::{BankSettings, Keep};
use stylizer::sampling::frames::{img2img_frames, Across};
use stylizer::sampling::img2img::Img2ImgParams;
use stylizer::sampling::noise::ReplayBank;
use stylizer::sampling::schedulers::SchedulerKind;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd;
use crate::tiny_sd::fixtures;

/// img2img's tolerance (max abs on latents and images).
const TOL: f32 = 1e-3;

fn parity(variant: &str) {
    let (_, text, model, scheduler) = tiny_sd::load(variant);
    let g = common::load_tensors(fixtures().join(format!("golden/{variant}/stream.safetensors")));
    assert!(
        max_abs(&text, &g["prompt_embeds"]) < 1e-4,
        "{variant}: text"
    );
    let fifo = BankSettings {
        keep: Keep::Fifo(2),
        ..Default::default()
    };
    let cases = [
        ("tome", 7.5, BankSettings::default()),
        ("tome_noguidance", 1.0, BankSettings::default()),
        ("fifo2", 7.5, fifo),
    ];
    for (case, guidance, settings) in cases {
        let params = Img2ImgParams {
            strength: 0.6,
            steps: 10,
            guidance,
            scheduler: SchedulerKind::Ddim,
        };
        let mut merges = ReplayBank::new(&g, &format!("{case}."));
        let across = Across::Stream(settings, &mut merges);
        let (latents, images) = img2img_frames(
            &model,
            &scheduler,
            &params,
            &text,
            &g["image_in"],
            across,
            &mut |f| tiny_sd::frame_noise(&g, f),
        )
        .unwrap();
        assert_eq!(merges.unused(), Vec::<String>::new(), "{variant} {case}");
        let golden = |what: &str| &g[&format!("{case}.{what}")];
        for f in 0..latents.dim(0).unwrap() {
            let frame = |t: &candle_core::Tensor| t.narrow(0, f, 1).unwrap();
            let e_lat = max_abs(&frame(&latents), &frame(golden("final_latents")));
            let e_img = max_abs(&frame(&images), &frame(golden("image_out")));
            println!(
                "{variant} {case} frame {f}: max abs: latents {e_lat:.2e}, images {e_img:.2e}"
            );
            assert!(
                e_lat < TOL && e_img < TOL,
                "{variant} {case} frame {f}: beyond {TOL}"
            );
        }
        // The reference injected features in every frame, and the bank changed the frames.
        let injected: Vec<i64> = golden("injected").to_vec1().unwrap();
        assert!(
            injected.iter().all(|&n| n > 0),
            "{variant} {case}: {injected:?}"
        );
        let plain = &g["independent.final_latents"];
        assert!(max_abs(&latents, plain) > 10.0 * TOL, "{variant} {case}");
    }
}

#[test]
fn stream_feature_bank_matches_streamv2v_tiny_sd() {
    parity("tiny-sd");
}

#[test]
fn stream_feature_bank_matches_streamv2v_tiny_sd2() {
    parity("tiny-sd2");
}
