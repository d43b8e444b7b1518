//! The GPU dtypes on the CPU: every model in f16 through candle's own ops (the path CUDA
//! runs), against the f32 goldens of diffusers / PyTorch; in bf16 only the text encoder, since
//! candle's CPU convolution (an im2col matmul) has no bf16 kernel ("unsupported dtype BF16 for
//! op matmul"), so bf16 convolution nets can only be checked on a GPU (tools/gpu_check.sh). Allowed: a few times the error
//! diffusers itself makes in that dtype on the same inputs (tools/reference/half_precision.py
//! → tests/fixtures/half_precision.json), so a port that is as exact as the reference passes
//! and one that loses precision (f16 accumulation, a wrong cast) fails. Each model's output
//! must also come out in the dtype it ran in: a model that silently upcasts to f32 would pass
//! the precision check and then not fit on the GPU.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use stylizer::nets::esrgan::{SrConfig, SrNet};
use stylizer::nets::sd::attention::AttentionSlicing;
use stylizer::nets::sd::config::TinyVaeConfig;
use stylizer::nets::sd::cross_frame::SelfAttention;
use stylizer::nets::sd::taesd::AutoencoderTiny;
use stylizer::nets::sd::unet::UNet2DConditionModel;
use stylizer::nets::sd::vae::{AutoencoderKL, VaeTiling};
use stylizer::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles, SdFiles, SdModel};
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

use crate::common;
use crate::common::max_abs;

/// Reference error × this is allowed: rounding lands differently in another implementation of
/// the same maths, but stays of the same size.
const SLACK: f32 = 4.0;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => unreachable!(),
    }
}

/// Checks `out` (run in `dtype`) against the f32 golden `want`: in `dtype`, and [`within`].
fn check(dtype: DType, group: &str, part: &str, out: &Tensor, want: &Tensor) {
    assert_eq!(
        out.dtype(),
        dtype,
        "{group} {part}: ran in {dtype:?} but gave {:?}",
        out.dtype()
    );
    within(dtype, group, part, max_abs(out, want));
}

/// Error `ours` is within SLACK × what diffusers / PyTorch gets wrong in `dtype`
/// (`group`/`part` of the json).
fn within(dtype: DType, group: &str, part: &str, ours: f32) {
    static REFERENCE: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let reference = REFERENCE.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("half_precision.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    });
    let theirs = reference[name(dtype)][group][part].as_f64().unwrap() as f32;
    println!(
        "{} {group} {part}: ours {ours:.2e}, reference {theirs:.2e}",
        name(dtype)
    );
    assert!(
        ours <= SLACK * theirs,
        "{} {group} {part}: max abs {ours:.2e} > {SLACK} × the reference's {theirs:.2e}",
        name(dtype)
    );
}

fn weights(path: &Path, dtype: DType) -> VarBuilder<'static> {
    let ts = common::load_tensors(path);
    VarBuilder::from_tensors(ts, dtype, &common::device())
}

/// Text encoder, UNet and VAE of a tiny SD pipeline, each built in `dtype` (the text encoder
/// only, unless `convolutions`).
fn sd_parts(variant: &str, dtype: DType, convolutions: bool) {
    let dir = fixtures().join("sd").join(variant);
    let gold = fixtures().join("sd/golden").join(variant);
    let opts = LoadOptions {
        dtype: Some(dtype),
        vae_tiling: VaeTiling::Off,
        ..LoadOptions::new(common::device())
    };
    let files =
        SdFiles::resolve(&ModelSource::Folder(dir.clone()), &opts, &mut NoProgress).unwrap();

    let g = common::load_tensors(gold.join("text_encoder.safetensors"));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let out = files.text_encoder().unwrap().forward(&ids).unwrap();
    check(
        dtype,
        variant,
        "text_encoder",
        &out.last_hidden_state,
        &g["last_hidden_state"],
    );
    if !convolutions {
        return;
    }

    let g = common::load_tensors(gold.join("unet.safetensors"));
    let unet = UNet2DConditionModel::new(
        weights(&dir.join("unet/diffusion_pytorch_model.safetensors"), dtype),
        &files.unet_config,
        AttentionSlicing::Auto,
    )
    .unwrap();
    let t = g["timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let out = unet
        .forward(
            &g["sample"].to_dtype(dtype).unwrap(),
            &[t],
            &g["encoder_hidden_states"].to_dtype(dtype).unwrap(),
            &mut SelfAttention::Own,
            None,
            None,
            None,
        )
        .unwrap();
    check(dtype, variant, "unet", &out, &g["out"]);

    // The VAE itself in `dtype` (the pipeline keeps a force_upcast VAE in f32, below).
    let g = common::load_tensors(gold.join("vae.safetensors"));
    let vae = AutoencoderKL::new(
        weights(&dir.join("vae/diffusion_pytorch_model.safetensors"), dtype),
        &files.vae_config,
        VaeTiling::Off,
    )
    .unwrap();
    let (mean, _) = vae.encode(&g["image"].to_dtype(dtype).unwrap()).unwrap();
    check(dtype, variant, "vae_encode", &mean, &g["latent_mean"]);
    let decoded = vae
        .decode(&g["latent_mean"].to_dtype(dtype).unwrap())
        .unwrap();
    check(dtype, variant, "vae_decode", &decoded, &g["decoded"]);
}

#[test]
fn stable_diffusion_in_f16_and_bf16() {
    for variant in ["tiny-sd", "tiny-sd2"] {
        sd_parts(variant, DType::F16, true);
        sd_parts(variant, DType::BF16, false);
    }
}

#[test]
fn the_pipeline_keeps_its_dtype_and_upcasts_only_a_force_upcast_vae() {
    let opts = LoadOptions {
        dtype: Some(DType::F16),
        vae_tiling: VaeTiling::Off,
        ..LoadOptions::new(common::device())
    };
    let dir = fixtures().join("sd/tiny-sd2");
    let files = SdFiles::resolve(&ModelSource::Folder(dir), &opts, &mut NoProgress).unwrap();
    assert!(files.vae_config.force_upcast);
    let text = files.encode_prompts("a cat", Some("")).unwrap();
    assert_eq!(text.dtype(), DType::F16);
    let model = SdModel::load(&files, &mut NoProgress).unwrap();
    assert_eq!(model.dtype(), DType::F16);
    assert_eq!(model.unet_dtype(), DType::F16);
    assert_eq!(
        model.vae_dtype(),
        DType::F32,
        "force_upcast: the VAE in f32, as diffusers"
    );
}

fn f16_options() -> LoadOptions {
    LoadOptions {
        dtype: Some(DType::F16),
        vae_tiling: VaeTiling::Off,
        ..LoadOptions::new(common::device())
    }
}

fn tiny_sd_f16() -> SdModel {
    let source = ModelSource::Folder(fixtures().join("sd/tiny-sd"));
    let files = SdFiles::resolve(&source, &f16_options(), &mut NoProgress).unwrap();
    SdModel::load(&files, &mut NoProgress).unwrap()
}

#[test]
fn controlnet_in_f16() {
    let mut model = tiny_sd_f16();
    let source = ModelSource::Folder(fixtures().join("sd/controlnet/tiny-sd-a"));
    let files = ControlNetFiles::resolve(&source, &f16_options(), model.unet_config()).unwrap();
    model.add_controlnet(&files).unwrap();
    let g = common::load_tensors(fixtures().join("sd/golden/tiny-sd/controlnet.safetensors"));
    let t = g["timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = g["conditioning_scale"].to_scalar::<f32>().unwrap() as f64;
    let r = model
        .controlnet(
            0,
            &g["sample"],
            &[t],
            &g["encoder_hidden_states"],
            &g["controlnet_cond"],
            scale,
            false,
        )
        .unwrap();
    // The worst residual, as the reference records it.
    let mut worst = max_abs(&r.mid, &g["a.mid"]);
    for (i, d) in r.down.iter().chain([&r.mid]).enumerate() {
        assert_eq!(d.dtype(), DType::F16, "residual {i}");
        if i < r.down.len() {
            worst = worst.max(max_abs(d, &g[&format!("a.down_{i}")]));
        }
    }
    within(DType::F16, "controlnet", "tiny-sd-a", worst);
}

#[test]
fn motion_unet_in_f16() {
    let mut model = tiny_sd_f16();
    let source = ModelSource::Folder(fixtures().join("sd/motion/tiny-v2"));
    let adapter = MotionAdapterFiles::resolve(&source, &f16_options()).unwrap();
    model.set_motion_adapter(&adapter).unwrap();
    assert_eq!(model.unet_dtype(), DType::F16);
    let g = common::load_tensors(fixtures().join("sd/golden/tiny-sd/animatediff_unet.safetensors"));
    let t = g["timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    // [1, c, f, h, w] (diffusers' video layout) ↔ [f, c, h, w] (frames as batch).
    let sample = g["f16.sample"]
        .squeeze(0)
        .unwrap()
        .permute((1, 0, 2, 3))
        .unwrap();
    let out = model
        .unet_window(&sample, &[t], &g["f16.encoder_hidden_states"], 16, None)
        .unwrap();
    let out = out.permute((1, 0, 2, 3)).unwrap().unsqueeze(0).unwrap();
    // unet_window hands back f32: the check is on the values, the dtype is asserted above.
    check(
        DType::F16,
        "motion",
        "tiny-v2.f16",
        &out.to_dtype(DType::F16).unwrap(),
        &g["v2.f16.out"],
    );
}

#[test]
fn tiny_vae_in_f16() {
    let dir = fixtures().join("sd/taesd");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = TinyVaeConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    let g = common::load_tensors(fixtures().join("sd/golden/taesd/taesd.safetensors"));
    let dtype = DType::F16;
    let vb = weights(&dir.join("diffusion_pytorch_model.safetensors"), dtype);
    let taesd = AutoencoderTiny::new(vb, &config).unwrap();
    let latents = taesd.encode(&g["image"].to_dtype(dtype).unwrap()).unwrap();
    check(dtype, "taesd", "encode", &latents, &g["latents"]);
    let decoded = taesd
        .decode(&g["decode_in"].to_dtype(dtype).unwrap())
        .unwrap();
    check(dtype, "taesd", "decode", &decoded, &g["decoded"]);
}

#[test]
fn upscalers_in_f16() {
    let tiny = fixtures().join("esrgan/tiny");
    let g = common::load_tensors(tiny.join("tiny_golden.safetensors"));
    let dtype = DType::F16;
    for net in ["rrdb_x2", "srvgg_x4"] {
        let ts = common::load_tensors(tiny.join(format!("{net}.safetensors")));
        let cfg = SrConfig::detect(&ts).unwrap();
        let model =
            SrNet::new(VarBuilder::from_tensors(ts, dtype, &common::device()), &cfg).unwrap();
        let out = model.forward(&g["input"].to_dtype(dtype).unwrap()).unwrap();
        check(dtype, "esrgan", net, &out, &g[&format!("{net}.output")]);
    }
}

#[test]
fn offload_keeps_the_vae_in_f32_off_the_device_and_out_of_the_plan() {
    let opts = LoadOptions {
        offload_vae: true,
        ..f16_options()
    };
    let source = ModelSource::Folder(fixtures().join("sd/tiny-sd"));
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress).unwrap();
    let model = SdModel::load(&files, &mut NoProgress).unwrap();
    assert_eq!(model.unet_dtype(), DType::F16);
    assert_eq!(model.vae_dtype(), DType::F32);
    assert!(model.vae_device().is_cpu());
    let names: Vec<&str> = model
        .weight_bytes()
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["UNet"], "the offloaded VAE holds no device memory");
    let estimate = stylizer::sd::vram::estimate(&model, (64, 48), 2);
    assert_eq!(estimate.vae, 0);
    // f16 UNet weights: 2 bytes a parameter, as counted while loading.
    let unet = tiny_sd_f16().weight_bytes()[0].1;
    assert_eq!(model.weight_bytes()[0].1, unet);
    // The f32 VAE decodes as the f32 parity test expects.
    let g = common::load_tensors(fixtures().join("sd/golden/tiny-sd/vae.safetensors"));
    let decoded = model.vae_decode(&g["latent_mean"]).unwrap();
    let d = max_abs(&decoded, &g["decoded"]);
    assert!(d <= 5e-4, "offloaded VAE decode off by {d}");
}
