//! The tiny fixture pipelines (tests/fixtures/sd) loaded as the parity tests compare them with
//! diffusers: on the CPU, VAE untiled, the prompt encoded with an empty negative prompt.
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use stylizer::stylize::model::{LoadOptions, SdFiles, SdModel};
use stylizer::stylize::schedulers::SchedulerConfig;
use stylizer::stylize::vae::VaeTiling;
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
        ..LoadOptions::new(Device::Cpu)
    };
    let source = ModelSource::Folder(fixtures().join(variant));
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress).unwrap();
    let text = files.encode_prompts(PROMPT, Some("")).unwrap();
    let model = SdModel::load(&files, &mut NoProgress).unwrap();
    let scheduler = SchedulerConfig::from_value(&files.scheduler_config).unwrap();
    (files, text, model, scheduler)
}
