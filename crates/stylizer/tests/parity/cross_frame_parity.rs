//! Cross-frame attention parity with diffusers: `StableDiffusionImg2ImgPipeline` on a batch of
//! real consecutive frames with Text2Video-Zero's `CrossFrameAttnProcessor` (frame 0's keys and
//! values for every frame), the same with [frame 0, own] keys, without guidance, and the plain
//! per-frame baseline, all with the recorded noise replayed. Ours renders the frames one at a
//! time (the anchor's tokens recorded per step and layer, as the stylize stage does), so a
//! match also proves sequential = batched. Tolerance 1e-3 max abs on latents and images.
//!
//! Fixtures: tests/fixtures/sd/golden/<variant>/img2img_crossframe.safetensors
//! (tools/reference/golden_crossframe.py: DDIM, strength 0.6, 10 steps).

use candle_core::Tensor;
use stylizer::nets::sd::cross_frame::CrossFrameKeys;
use stylizer::sampling::frames::{img2img_frames, Across};
use stylizer::sampling::img2img::Img2ImgParams;
use stylizer::sampling::schedulers::SchedulerKind;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd;
use crate::tiny_sd::fixtures;

const TOL: f32 = 1e-3;

fn parity(variant: &str) {
    let (_, text, model, scheduler) = tiny_sd::load(variant);
    let path = fixtures().join(format!("golden/{variant}/img2img_crossframe.safetensors"));
    let g = common::load_tensors(&path);
    assert!(
        max_abs(&text, &g["prompt_embeds"]) < 1e-4,
        "{variant}: text"
    );
    let frames = &g["image_in"];
    let cases = [
        ("crossframe_first", Some(CrossFrameKeys::Anchor), 7.5),
        (
            "crossframe_first_self",
            Some(CrossFrameKeys::AnchorAndSelf),
            7.5,
        ),
        (
            "crossframe_first_noguidance",
            Some(CrossFrameKeys::Anchor),
            1.0,
        ),
        ("independent", None, 7.5),
    ];
    for (case, keys, guidance) in cases {
        let params = Img2ImgParams {
            strength: 0.6,
            steps: 10,
            guidance,
            scheduler: SchedulerKind::Ddim,
        };
        let across = keys.map_or(Across::Nothing, Across::Anchor);
        let (latents, images) = img2img_frames(
            &model,
            &scheduler,
            &params,
            &text,
            frames,
            across,
            &mut |f| tiny_sd::frame_noise(&g, f),
        )
        .unwrap();
        let e_lat = max_abs(&latents, &g[&format!("{case}.final_latents")]);
        let e_img = max_abs(&images, &g[&format!("{case}.image_out")]);
        println!("{variant} {case}: max abs: final latents {e_lat:.2e}, images {e_img:.2e}");
        assert!(e_lat < TOL && e_img < TOL, "{variant} {case}: beyond {TOL}");
    }
    // The golden itself shows the attention matters: later frames differ from the baseline.
    let (a, b) = (
        &g["crossframe_first.final_latents"],
        &g["independent.final_latents"],
    );
    let n = a.dim(0).unwrap();
    let later = |t: &Tensor| t.narrow(0, 1, n - 1).unwrap();
    assert!(max_abs(&later(a), &later(b)) > 10.0 * TOL, "{variant}");
}

#[test]
fn cross_frame_attention_matches_diffusers_tiny_sd() {
    parity("tiny-sd");
}

#[test]
fn cross_frame_attention_matches_diffusers_tiny_sd2() {
    parity("tiny-sd2");
}
