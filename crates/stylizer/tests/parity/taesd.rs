//! The tiny auto-encoder (TAESD, diffusers `AutoencoderTiny`) against diffusers on random
//! weights with the real config (tools/reference/golden_taesd.py): encode and decode at 1e-4
//! relative to the output's range, and img2img with the tiny SD-2 model at 1e-3 (the only draw
//! replayed is the start noise: TAESD has no posterior).

use candle_core::{DType, Tensor};
use stylizer::nets::sd::vae::VaeTiling;
use stylizer::sampling::img2img::{Control, Img2ImgParams};
use stylizer::sampling::schedulers::{SchedulerConfig, SchedulerKind};
use stylizer::sd::model::{LoadOptions, SdFiles, SdModel};
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd;
use crate::tiny_sd::{fixtures, PROMPT};

fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join(format!("golden/taesd/{name}.safetensors"));
    common::load_tensors(path)
}

fn load() -> (SdFiles, SdModel) {
    let opts = LoadOptions {
        vae_tiling: VaeTiling::Off,
        tiny_vae: Some(ModelSource::Folder(fixtures().join("taesd"))),
        ..LoadOptions::new(common::device())
    };
    let source = ModelSource::Folder(fixtures().join("tiny-sd2"));
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress).unwrap();
    let model = SdModel::load(&files, &mut NoProgress).unwrap();
    (files, model)
}

fn range(t: &Tensor) -> f32 {
    max_abs(t, &t.zeros_like().unwrap())
}

#[test]
fn encode_and_decode_match_diffusers() {
    let (_, model) = load();
    assert!(!model.samples_posterior());
    assert_eq!(model.vae_scale_factor(), 8);
    assert_eq!(model.scaling_factor(), 1.0);
    let g = golden("taesd");
    let (latents, logvar) = model.vae_encode(&g["image"]).unwrap();
    let e_enc = max_abs(&latents, &g["latents"]) / range(&g["latents"]).max(1.0);
    let decoded = model.vae_decode(&g["decode_in"]).unwrap();
    let e_dec = max_abs(&decoded, &g["decoded"]) / range(&g["decoded"]).max(1.0);
    println!("TAESD: encode {e_enc:.2e}, decode {e_dec:.2e} (max abs / output range)");
    assert!(
        e_enc < 1e-4 && e_dec < 1e-4,
        "encode {e_enc}, decode {e_dec}"
    );
    let lv: Vec<f32> = logvar.flatten_all().unwrap().to_vec1().unwrap();
    assert!(lv.iter().all(|v| *v == f32::NEG_INFINITY));
}

#[test]
fn img2img_with_the_tiny_vae_matches_diffusers() {
    let (files, model) = load();
    let g = golden("img2img_taesd");
    let text = files.encode_prompts(PROMPT, Some("")).unwrap();
    let scheduler = SchedulerConfig::from_value(&files.scheduler_config).unwrap();
    let params = Img2ImgParams {
        strength: 0.6,
        steps: 10,
        guidance: 7.5,
        scheduler: SchedulerKind::Ddim,
    };
    let (latents, image) =
        tiny_sd::replay_img2img(&model, &scheduler, &params, &text, &g, &Control::default());
    let e_lat = max_abs(&latents, &g["final_latents"]);
    let e_img = max_abs(&image, &g["image_out"]);
    println!("img2img with TAESD: latents {e_lat:.2e}, image {e_img:.2e}");
    assert!(
        e_lat < 1e-3 && e_img < 1e-3,
        "latents {e_lat}, image {e_img}"
    );
    assert_eq!(image.dtype(), DType::F32);
}

#[test]
fn a_tiny_vae_for_other_latents_is_refused() {
    // tiny-sd's VAE works at 1/2 size: TAESD's 1/8 latents do not fit it.
    let opts = LoadOptions {
        tiny_vae: Some(ModelSource::Folder(fixtures().join("taesd"))),
        ..LoadOptions::new(common::device())
    };
    let source = ModelSource::Folder(fixtures().join("tiny-sd"));
    let err = SdFiles::resolve(&source, &opts, &mut NoProgress)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not fit the model"), "{err}");
}
