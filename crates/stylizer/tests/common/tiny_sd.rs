//! The tiny fixture pipelines (tests/fixtures/sd) loaded as the parity tests compare them with
//! diffusers: on the CPU, VAE untiled, the prompt encoded with an empty negative prompt.
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::path::PathBuf;

use std::collections::HashMap;

use crate::common;
use candle_core::Tensor;
use stylizer::nets::sd::cross_frame::FrameAnchor;
use stylizer::nets::sd::vae::VaeTiling;
use stylizer::sampling::img2img::{img2img, Control, Img2ImgParams};
use stylizer::sampling::noise::{NoiseSource, ReplayNoise};
use stylizer::sampling::schedulers::SchedulerConfig;
use stylizer::sd::model::{LoadOptions, SdFiles, SdModel};
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

/// The prompt every golden of tools/reference was made with.
pub const PROMPT: &str = "a photograph of an astronaut riding a horse";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd")
}

/// Loads `variant` ("tiny-sd" or "tiny-sd2"): its files, the [negative "", prompt]
/// embeddings, the model and the scheduler config.
pub fn load(variant: &str) -> (SdFiles, Tensor, SdModel, SchedulerConfig) {
    let opts = LoadOptions {
        vae_tiling: VaeTiling::Off,
        ..LoadOptions::new(common::device())
    };
    let source = ModelSource::Folder(fixtures().join(variant));
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress).unwrap();
    let text = files.encode_prompts(PROMPT, Some("")).unwrap();
    let model = SdModel::load(&files, &mut NoProgress).unwrap();
    let scheduler = SchedulerConfig::from_value(&files.scheduler_config).unwrap();
    (files, text, model, scheduler)
}

/// Frame `f`'s slice of the draws a golden of frames recorded stacked (`noise_vae`,
/// `noise_add` `[F, 4, h, w]`).
pub fn frame_noise(
    g: &HashMap<String, Tensor>,
    f: usize,
) -> stylizer::Result<Box<dyn NoiseSource>> {
    let mut draws = HashMap::new();
    for key in ["noise_vae", "noise_add"] {
        draws.insert(key.to_string(), g[key].narrow(0, f, 1)?);
    }
    Ok(Box::new(ReplayNoise::new(draws)))
}

/// img2img of golden `g`'s `image_in` with its recorded noise replayed (and all of it used),
/// every frame on its own: the final latents and the image.
pub fn replay_img2img(
    model: &SdModel,
    scheduler: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    g: &HashMap<String, Tensor>,
    control: &Control,
) -> (Tensor, Tensor) {
    let mut noise = ReplayNoise::new(g.clone());
    let out = img2img(
        model,
        scheduler,
        params,
        text,
        &g["image_in"],
        control,
        FrameAnchor::Independent,
        &mut noise,
        &mut NoProgress,
        &mut (),
    )
    .unwrap();
    assert!(
        noise.unused().is_empty(),
        "unused noise {:?}",
        noise.unused()
    );
    out
}
