//! Loading a Stable Diffusion pipeline (diffusers `StableDiffusionPipeline.from_pretrained`
//! / `from_single_file`) in three steps that keep memory low:
//!
//! ```text
//! SdFiles::resolve   configs, tokenizer, where the weights are (downloads if needed)
//! encode_prompts     text encoder loaded, prompts encoded, text encoder freed
//! SdModel::load      UNet + VAE, kept for the whole run
//! ```
//!
//! The text encoder is never in memory together with the UNet.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::attention::AttentionSlicing;
use super::checkpoint::{self, TextEncoderKind};
use super::clip::ClipTextModel;
use super::config::{ClipTextConfig, UNetConfig, VaeConfig};
use super::cross_frame::SelfAttention;
use super::tokenizer::ClipTokenizer;
use super::unet::UNet2DConditionModel;
use super::vae::{AutoencoderKL, VaeTiling};
use crate::weights::{HubOptions, ModelSource, RepoFiles, TensorStore};
use crate::{Error, Progress, Result};

/// The model the CLI uses when `--model-id` is not given.
pub const DEFAULT_MODEL: &str = "stabilityai/stable-diffusion-2-base";

/// Where configs come from for a single-file checkpoint without `config_source`, by the text
/// encoder it carries (what diffusers' `from_single_file` fetches for the same checkpoints).
const SD1_CONFIGS: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// Everything that decides how a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// `None`: f32 on the CPU, f16 on CUDA/Metal.
    pub dtype: Option<DType>,
    pub hub: HubOptions,
    pub attention_slicing: AttentionSlicing,
    pub vae_tiling: VaeTiling,
    /// Configs, tokenizer and scheduler config for a single-file checkpoint (a diffusers
    /// folder or hub id). Default: SD 2 base for OpenCLIP checkpoints, SD 1.5 for CLIP ones.
    pub config_source: Option<ModelSource>,
}

impl LoadOptions {
    /// Defaults for `device`, hub settings from the environment.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            dtype: None,
            hub: HubOptions::from_env(),
            attention_slicing: AttentionSlicing::Auto,
            vae_tiling: VaeTiling::Auto,
            config_source: None,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(match self.device {
            Device::Cpu => DType::F32,
            _ => DType::F16,
        })
    }
}

/// Where a component's tensors are and how their names map to the model's.
#[derive(Debug, Clone)]
enum Weights {
    /// diffusers layout: the component's own file(s), names as the model uses them.
    Diffusers(Vec<std::path::PathBuf>),
    /// One original-layout checkpoint holding every component.
    SingleFile(std::path::PathBuf),
}

/// A resolved pipeline: configs parsed, tokenizer loaded, weight files located.
pub struct SdFiles {
    pub unet_config: UNetConfig,
    pub vae_config: VaeConfig,
    pub text_config: ClipTextConfig,
    /// `scheduler/scheduler_config.json` as written; the samplers read it.
    pub scheduler_config: Value,
    tokenizer: ClipTokenizer,
    unet: Weights,
    vae: Weights,
    text_encoder: Weights,
    device: Device,
    dtype: DType,
    slicing: AttentionSlicing,
    tiling: VaeTiling,
    description: String,
}

fn read_json(path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Weights(format!("{}: invalid JSON: {e}", path.display())))
}

fn repo_files(source: &ModelSource, hub: &HubOptions) -> Result<RepoFiles> {
    match source {
        ModelSource::Hub(id) => RepoFiles::hub(id, hub),
        ModelSource::Folder(dir) => Ok(RepoFiles::folder(dir)),
        ModelSource::File(p) => Err(Error::Config(format!(
            "{}: a single file cannot provide configs; give a diffusers folder or hub id",
            p.display()
        ))),
    }
}

impl SdFiles {
    /// Finds (and downloads, unless offline) what the pipeline needs from `source`.
    pub fn resolve(
        source: &ModelSource,
        opts: &LoadOptions,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let (repo, single) = match source {
            ModelSource::File(path) => {
                let names = TensorStore::stored_names(path)?;
                let config_source = match (&opts.config_source, checkpoint::text_encoder_kind(&names)) {
                    (Some(s), _) => s.clone(),
                    (None, Some(TextEncoderKind::OpenClip)) => ModelSource::Hub(DEFAULT_MODEL.into()),
                    (None, Some(TextEncoderKind::Clip)) => ModelSource::Hub(SD1_CONFIGS.into()),
                    (None, None) => {
                        return Err(Error::Weights(format!(
                            "{}: no Stable Diffusion text encoder in this checkpoint (no cond_stage_model.* tensors)",
                            path.display()
                        )))
                    }
                };
                if opts.config_source.is_none() {
                    progress.warn(&format!(
                        "{}: single-file checkpoint; configs, tokenizer and scheduler from {config_source} (set a config source to change)",
                        path.display()
                    ));
                }
                (repo_files(&config_source, &opts.hub)?, Some(path.clone()))
            }
            other => (repo_files(other, &opts.hub)?, None),
        };

        let variant = opts
            .hub
            .variant
            .as_deref()
            .map(|v| format!(".{v}"))
            .unwrap_or_default();
        let has_fast_tokenizer = repo.has("tokenizer/tokenizer.json");
        let mut wanted: Vec<(String, bool)> = [
            ("scheduler/scheduler_config.json", true),
            ("unet/config.json", true),
            ("vae/config.json", true),
            ("text_encoder/config.json", true),
            ("tokenizer/tokenizer.json", false),
            ("tokenizer/vocab.json", !has_fast_tokenizer),
            ("tokenizer/merges.txt", !has_fast_tokenizer),
            ("tokenizer/tokenizer_config.json", false),
            ("tokenizer/special_tokens_map.json", false),
        ]
        .into_iter()
        .map(|(f, r)| (f.to_string(), r))
        .collect();
        // unet, vae, text_encoder weights: safetensors, else the older PyTorch .bin
        let mut weight_files = Vec::new();
        if single.is_none() {
            for (component, stem) in [
                ("unet", "diffusion_pytorch_model"),
                ("vae", "diffusion_pytorch_model"),
                ("text_encoder", "model"),
            ] {
                let st = format!("{component}/{stem}{variant}.safetensors");
                let bin = format!("{component}/{stem}{variant}.bin");
                let file = if !repo.has(&st) && repo.has(&bin) {
                    bin
                } else {
                    st
                };
                wanted.push((file.clone(), true));
                weight_files.push(file);
            }
        }
        let refs: Vec<(&str, bool)> = wanted.iter().map(|(f, r)| (f.as_str(), *r)).collect();
        let found = repo.get_all(&refs)?;
        let path = |rel: &str| found[rel].clone();

        let unet_config = UNetConfig::from_json(&read_json(&path("unet/config.json"))?)?;
        let vae_config = VaeConfig::from_json(&read_json(&path("vae/config.json"))?)?;
        let text_config =
            ClipTextConfig::from_json(&read_json(&path("text_encoder/config.json"))?)?;
        let tokenizer_dir = found
            .iter()
            .find(|(rel, _)| rel.starts_with("tokenizer/"))
            .and_then(|(_, p)| p.parent())
            .ok_or_else(|| Error::Weights(format!("{}: no tokenizer files", repo.name())))?
            .to_path_buf();
        let tokenizer =
            ClipTokenizer::from_dir(&tokenizer_dir, text_config.max_position_embeddings)?;
        let diffusers = |i: usize| Weights::Diffusers(vec![path(&weight_files[i])]);
        let (unet, vae, text_encoder) = match &single {
            Some(file) => (
                Weights::SingleFile(file.clone()),
                Weights::SingleFile(file.clone()),
                Weights::SingleFile(file.clone()),
            ),
            None => (diffusers(0), diffusers(1), diffusers(2)),
        };
        let description = match &single {
            Some(f) => format!("{} (configs from {})", f.display(), repo.name()),
            None => repo.name().to_string(),
        };
        Ok(Self {
            unet_config,
            vae_config,
            text_config,
            scheduler_config: read_json(&path("scheduler/scheduler_config.json"))?,
            tokenizer,
            unet,
            vae,
            text_encoder,
            device: opts.device.clone(),
            dtype: opts.dtype(),
            slicing: opts.attention_slicing,
            tiling: opts.vae_tiling,
            description,
        })
    }

    /// Which model this is, for logs and fingerprints.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn store(&self, weights: &Weights, what: &str) -> Result<TensorStore> {
        let store = match weights {
            Weights::Diffusers(paths) => TensorStore::open_plain(paths, what)?,
            Weights::SingleFile(path) => {
                let files = [path.clone()];
                match what {
                    "unet" => {
                        let lpb = self.unet_config.layers_per_block;
                        TensorStore::open(&files, what, |k| checkpoint::unet_name(k, lpb))?
                    }
                    "vae" => {
                        let n = self.vae_config.block_out_channels.len();
                        TensorStore::open(&files, what, |k| checkpoint::vae_name(k, n))?
                    }
                    _ => TensorStore::open(&files, what, checkpoint::text_encoder_name)?,
                }
            }
        };
        if store.is_empty() {
            return Err(Error::Weights(format!(
                "{}: no {what} tensors found",
                self.description
            )));
        }
        Ok(store)
    }

    fn var_builder(
        &self,
        weights: &Weights,
        what: &str,
        dtype: DType,
    ) -> Result<VarBuilder<'static>> {
        let store = self.store(weights, what)?;
        Ok(VarBuilder::from_backend(
            Box::new(store),
            dtype,
            self.device.clone(),
        ))
    }

    /// Loads the CLIP text encoder (the caller drops it when done).
    pub fn text_encoder(&self) -> Result<ClipTextModel> {
        let vb = self.var_builder(&self.text_encoder, "text_encoder", self.dtype)?;
        ClipTextModel::new(vb, &self.text_config)
            .map_err(|e| Error::Weights(format!("text encoder: {e}")))
    }

    /// Text embeddings `[n, tokens, dim]` in the model dtype: `[negative, prompt]` (the
    /// classifier-free guidance batch, unconditional first, as diffusers orders it) or
    /// `[prompt]` when `negative` is `None`. Loads the text encoder and frees it before
    /// returning.
    pub fn encode_prompts(&self, prompt: &str, negative: Option<&str>) -> Result<Tensor> {
        let texts: Vec<&str> = negative.into_iter().chain([prompt]).collect();
        let ids = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<Vec<_>>>()?;
        let n = self.tokenizer.max_len();
        let ids = Tensor::from_vec(ids.concat(), (texts.len(), n), &self.device)?;
        let text = self.text_encoder()?.forward(&ids)?.last_hidden_state;
        crate::device::release_free_host_memory();
        Ok(text)
    }
}

/// UNet + VAE, kept for the whole run.
pub struct SdModel {
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: Value,
    device: Device,
    dtype: DType,
    description: String,
}

impl SdModel {
    /// Loads the UNet (in the model dtype) and the VAE (in f32 when its config asks for
    /// `force_upcast`, since the SD VAE overflows in f16).
    pub fn load(files: &SdFiles, progress: &mut dyn Progress) -> Result<Self> {
        crate::device::keep_mid_size_buffers_in_heap();
        let unet_vb = files.var_builder(&files.unet, "unet", files.dtype)?;
        let unet = UNet2DConditionModel::new(unet_vb, &files.unet_config, files.slicing)
            .map_err(|e| Error::Weights(format!("unet: {e}")))?;
        let vae_dtype = match files.vae_config.force_upcast && files.dtype == DType::F16 {
            true => {
                progress.warn("the VAE runs in f32 (its config sets force_upcast)");
                DType::F32
            }
            false => files.dtype,
        };
        let vae_vb = files.var_builder(&files.vae, "vae", vae_dtype)?;
        let vae = AutoencoderKL::new(vae_vb, &files.vae_config, files.tiling)
            .map_err(|e| Error::Weights(format!("vae: {e}")))?;
        Ok(Self {
            unet,
            vae,
            scheduler_config: files.scheduler_config.clone(),
            device: files.device.clone(),
            dtype: files.dtype,
            description: files.description.clone(),
        })
    }

    /// Model output (noise or v, per the scheduler config's `prediction_type`) for
    /// `latents` `[b, c, h, w]` at `timesteps` (one for all, or one per batch element),
    /// conditioned on `text` `[b, tokens, dim]`; `frames` says what self-attention attends to
    /// ([`SelfAttention::Own`] for a frame on its own). Returned in f32.
    pub fn unet(
        &self,
        latents: &Tensor,
        timesteps: &[f64],
        text: &Tensor,
        frames: &mut SelfAttention,
    ) -> Result<Tensor> {
        Ok(self
            .unet
            .forward(latents, timesteps, text, frames)?
            .to_dtype(DType::F32)?)
    }

    /// Posterior `(mean, logvar)` of `image` `[b, 3, H, W]` in [-1, 1], raw latent space
    /// (multiply a sample by [`Self::scaling_factor`] for the UNet). f32.
    pub fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mean, logvar) = self.vae.encode(image)?;
        Ok((mean.to_dtype(DType::F32)?, logvar.to_dtype(DType::F32)?))
    }

    /// Image `[b, 3, H, W]` (about [-1, 1]) from raw latents (UNet latents divided by the
    /// scaling factor). f32.
    pub fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        // The UNet's freed activations, before the decoder's full-resolution ones.
        crate::device::release_free_host_memory();
        Ok(self.vae.decode(latents)?.to_dtype(DType::F32)?)
    }

    /// VAE `scaling_factor` (0.18215 for SD 1.x/2.x).
    pub fn scaling_factor(&self) -> f64 {
        self.vae.config().scaling_factor
    }

    /// Pixels per latent along each axis (8 for SD).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }

    pub fn latent_channels(&self) -> usize {
        self.unet.config().in_channels
    }

    pub fn scheduler_config(&self) -> &Value {
        &self.scheduler_config
    }

    pub fn unet_config(&self) -> &UNetConfig {
        self.unet.config()
    }

    pub fn vae_config(&self) -> &VaeConfig {
        self.vae.config()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}
