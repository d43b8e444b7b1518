//! AnimateDiff parity with diffusers on the tiny fixtures (tools/reference/golden_animatediff.py):
//! the motion UNet's forward (`UNetMotionModel.from_unet2d`) for windows of 1, 2 and 16 frames
//! and a CFG batch of two, with and without the motion mid block, at 1e-4; every loading path
//! (diffusers folder, original `.ckpt` and `.safetensors`); the refusal of an adapter that
//! does not fit the model; and video-to-video sampling (`AnimateDiffVideoToVideoPipeline`, DDIM
//! and Euler, with and without the mid block) in one window and in overlapping context
//! windows fused flat or pyramid (ComfyUI-AnimateDiff-Evolved's semantics), at 1e-3 with the
//! recorded noise replayed.

use candle_core::{DType, Tensor};
use stylizer::sampling::animate::{decode_video, denoise_video, ContextOptions, Fuse};
use stylizer::sampling::img2img::Img2ImgParams;
use stylizer::sampling::noise::ReplayNoise;
use stylizer::sampling::schedulers::SchedulerKind;
use stylizer::sd::model::{LoadOptions, MotionAdapterFiles, SdModel};
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd;
use crate::tiny_sd::fixtures;

fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join(format!("golden/tiny-sd/{name}.safetensors"));
    common::load_tensors(path)
}

fn adapter(file: &str) -> MotionAdapterFiles {
    let path = fixtures().join("motion").join(file);
    let source = match path.is_dir() {
        true => ModelSource::Folder(path),
        false => ModelSource::File(path),
    };
    MotionAdapterFiles::resolve(&source, &LoadOptions::new(common::device())).unwrap()
}

/// `[b, c, f, h, w]` (diffusers' video layout) → `[b·f, c, h, w]`, and back.
fn to_frames(x: &Tensor) -> Tensor {
    let (b, c, f, h, w) = x.dims5().unwrap();
    x.permute((0, 2, 1, 3, 4))
        .unwrap()
        .reshape((b * f, c, h, w))
        .unwrap()
}

fn to_video(x: &Tensor, b: usize) -> Tensor {
    let (bf, c, h, w) = x.dims4().unwrap();
    x.reshape((b, bf / b, c, h, w))
        .unwrap()
        .permute((0, 2, 1, 3, 4))
        .unwrap()
}

fn forward_parity(model: &SdModel, name: &str) {
    let g = golden("animatediff_unet");
    let t: f64 = g["timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap();
    for case in ["f1", "f2", "f16", "b2f2"] {
        let sample = &g[&format!("{case}.sample")];
        let (b, _, f, _, _) = sample.dims5().unwrap();
        let out = model
            .unet_window(
                &to_frames(sample),
                &[t],
                &g[&format!("{case}.encoder_hidden_states")],
                f,
                None,
            )
            .unwrap();
        let err = max_abs(&to_video(&out, b), &g[&format!("{name}.{case}.out")]);
        eprintln!("{name} {case}: max |Δ| {err:.2e}");
        assert!(err < 1e-4, "{name} {case}: {err}");
    }
}

#[test]
fn motion_unet_matches_diffusers_with_and_without_the_mid_block() {
    let (_, _, mut model, _) = tiny_sd::load("tiny-sd");
    for (name, file) in [("v2", "tiny-v2"), ("v1", "tiny-v1")] {
        model.set_motion_adapter(&adapter(file)).unwrap();
        forward_parity(&model, name);
    }
}

#[test]
fn original_motion_module_files_load_as_the_diffusers_folder() {
    let folder = adapter("tiny-v2");
    let (_, _, mut model, _) = tiny_sd::load("tiny-sd");
    for file in ["tiny-v2.ckpt", "tiny-v2.safetensors"] {
        let original = adapter(file);
        // Heads are not stored: the original modules' 8 (the tiny adapter's too).
        assert_eq!(original.config, folder.config, "{file}");
        model.set_motion_adapter(&original).unwrap();
        forward_parity(&model, "v2");
    }
}

#[test]
fn an_adapter_for_another_unet_is_refused() {
    let (_, _, mut model, _) = tiny_sd::load("tiny-sd2");
    let err = model
        .set_motion_adapter(&adapter("tiny-v2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit the model"), "{err}");
}

#[test]
fn video_to_video_matches_diffusers_in_one_window_and_in_context_windows() {
    let (_, text, mut model, scheduler) = tiny_sd::load("tiny-sd");
    let g = golden("animatediff_img2img");
    let windows = |fuse| ContextOptions {
        length: 4,
        overlap: 2,
        fuse,
    };
    let cases = [
        (
            "ddim.one",
            "tiny-v2",
            6,
            SchedulerKind::Ddim,
            ContextOptions::default(),
        ),
        (
            "euler.one",
            "tiny-v2",
            6,
            SchedulerKind::Euler,
            ContextOptions::default(),
        ),
        (
            "v1.ddim.one",
            "tiny-v1",
            6,
            SchedulerKind::Ddim,
            ContextOptions::default(),
        ),
        (
            "ddim.windows_pyramid",
            "tiny-v2",
            10,
            SchedulerKind::Ddim,
            windows(Fuse::Pyramid),
        ),
        (
            "ddim.windows_flat",
            "tiny-v2",
            10,
            SchedulerKind::Ddim,
            windows(Fuse::Flat),
        ),
        (
            "ddim.windows_pyramid_shift",
            "tiny-v2",
            11,
            SchedulerKind::Ddim,
            windows(Fuse::Pyramid),
        ),
    ];
    let mut loaded = "";
    for (case, adapter_dir, f, kind, context) in cases {
        if loaded != adapter_dir {
            model.set_motion_adapter(&adapter(adapter_dir)).unwrap();
            loaded = adapter_dir;
        }
        if let Some(w) = g.get(&format!("{case}.windows")) {
            let expected: Vec<Vec<i64>> = w.to_vec2().unwrap();
            let ours: Vec<Vec<i64>> = context
                .windows(f)
                .into_iter()
                .map(|r| r.map(|i| i as i64).collect())
                .collect();
            assert_eq!(ours, expected, "{case} windows");
            let weights: Vec<f32> = g[&format!("{case}.weights")].to_vec1().unwrap();
            assert_eq!(context.weights(4), weights, "{case} weights");
        }
        let params = Img2ImgParams {
            strength: 0.6,
            steps: 10,
            guidance: 7.5,
            scheduler: kind,
        };
        let (vae, add) = (
            &g[&format!("f{f}.noise_vae")],
            &g[&format!("f{f}.noise_add")],
        );
        let frames = g["frames_in"].narrow(0, 0, f).unwrap();
        let latents = denoise_video(
            &model,
            &scheduler,
            &params,
            &text,
            &frames,
            &context,
            &mut |row| {
                // Frame `row`'s draws: its rows of the stack's recorded noise.
                let draws = [("noise_vae", vae), ("noise_add", add)]
                    .map(|(k, t)| (k.to_string(), t.narrow(0, row, 1).unwrap()));
                Ok(Box::new(ReplayNoise::new(draws.into_iter().collect())))
            },
            &mut NoProgress,
        )
        .unwrap();
        let err = max_abs(&latents, &g[&format!("{case}.final_latents")]);
        let images = decode_video(&model, &latents).unwrap();
        let err_img = max_abs(&images, &g[&format!("{case}.frames_out")]);
        eprintln!("{case}: latents max |Δ| {err:.2e}, frames {err_img:.2e}");
        assert!(err < 1e-3 && err_img < 1e-3, "{case}: {err} {err_img}");
    }
}
