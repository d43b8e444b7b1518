//! AnimateDiff parity with diffusers on the tiny fixtures (tools/reference/golden_animatediff.py):
//! the motion UNet's forward (`UNetMotionModel.from_unet2d`) for windows of 1, 2 and 16 frames
//! and a CFG batch of two, with and without the motion mid block, at 1e-4; every loading path
//! (diffusers folder, original `.ckpt` and `.safetensors`); and the refusal of an adapter that
//! does not fit the model.

use candle_core::{DType, Device, Tensor};
use stylizer::stylize::model::{LoadOptions, MotionAdapterFiles, SdModel};
use stylizer::weights::ModelSource;

mod common;
#[path = "common/tiny_sd.rs"]
mod tiny_sd;
use common::max_abs;
use tiny_sd::fixtures;

fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join(format!("golden/tiny-sd/{name}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn adapter(file: &str) -> MotionAdapterFiles {
    let path = fixtures().join("motion").join(file);
    let source = match path.is_dir() {
        true => ModelSource::Folder(path),
        false => ModelSource::File(path),
    };
    MotionAdapterFiles::resolve(&source, &LoadOptions::new(Device::Cpu)).unwrap()
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
