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

use crate::nets::sd::attention::AttentionSlicing;
use crate::nets::sd::checkpoint::{self, TextEncoderKind};
use crate::nets::sd::clip::ClipTextModel;
use crate::nets::sd::config::{
    ClipTextConfig, ControlNetConfig, MotionAdapterConfig, MotionLevel, TinyVaeConfig, UNetConfig,
    VaeConfig,
};
use crate::nets::sd::controlnet::ControlNetModel;
use crate::nets::sd::cross_frame::SelfAttention;
use crate::nets::sd::motion::{Motion, MotionAdapter};
use crate::nets::sd::taesd::AutoencoderTiny;
use crate::nets::sd::unet::ControlResiduals;
use crate::nets::sd::unet::UNet2DConditionModel;
use crate::nets::sd::vae::{AutoencoderKL, VaeTiling};
use crate::sd::lora::{self, LoraFile};
use crate::sd::tokenizer::ClipTokenizer;
use crate::weights::{read_json, HubOptions, ModelSource, RepoFiles, TensorStore};
use crate::{Error, Progress, Result};

/// The tiny auto-encoder `--vae tiny` loads (TAESD for SD 1.x/2.x latents).
pub const TINY_VAE: &str = "madebyollin/taesd";

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
    /// A tiny auto-encoder (TAESD, diffusers `AutoencoderTiny`: hub id or folder) instead of
    /// the model's own VAE (`--vae`).
    pub tiny_vae: Option<ModelSource>,
    /// LoRAs fused into the UNet and text encoder (`--lora`), in order, with their scales: a
    /// file, a folder or hub id holding `pytorch_lora_weights.safetensors`.
    pub loras: Vec<(ModelSource, f64)>,
    /// Keep the VAE on the CPU, in f32 (`--offload`): its weights and its decoder's
    /// full-resolution activations (the peak of a frame at 720p) never take GPU memory.
    pub offload_vae: bool,
}

impl LoadOptions {
    /// Defaults for `device`, hub settings from the environment.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            dtype: None,
            hub: HubOptions::from_env(),
            attention_slicing: AttentionSlicing::Auto,
            offload_vae: false,
            vae_tiling: VaeTiling::Auto,
            config_source: None,
            tiny_vae: None,
            loras: Vec::new(),
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

/// Bytes of weights a store has handed out ([`TensorStore::loaded`]).
type Loaded = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// A `VarBuilder` over `store`, and the count of the bytes the model built from it holds.
fn counted(store: TensorStore, dtype: DType, device: &Device) -> (VarBuilder<'static>, Loaded) {
    let loaded = store.loaded();
    let vb = VarBuilder::from_backend(Box::new(store), dtype, device.clone());
    (vb, loaded)
}

fn bytes(loaded: &Loaded) -> u64 {
    loaded.load(std::sync::atomic::Ordering::Relaxed)
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
    /// The tiny auto-encoder used instead of `vae`.
    tiny_vae: Option<(TinyVaeConfig, std::path::PathBuf)>,
    loras: Vec<LoraFile>,
    text_encoder: Weights,
    device: Device,
    dtype: DType,
    slicing: AttentionSlicing,
    tiling: VaeTiling,
    offload_vae: bool,
    description: String,
}

/// Refuses a model whose parts cannot work together (a folder assembled from two models),
/// before any weight loads: one line naming both parts and what each says.
fn parts_fit(
    name: &str,
    unet: &UNetConfig,
    vae: &VaeConfig,
    text: &ClipTextConfig,
    tokenizer: &ClipTokenizer,
) -> Result<()> {
    let misfit = |what: String| {
        Err(Error::Config(format!(
            "{name}: {what} (parts of two different models?)"
        )))
    };
    if text.hidden_size != unet.cross_attention_dim() {
        return misfit(format!(
            "text_encoder gives {}-wide embeddings, unet reads {}",
            text.hidden_size,
            unet.cross_attention_dim()
        ));
    }
    if (unet.in_channels, unet.out_channels) != (vae.latent_channels, vae.latent_channels) {
        return misfit(format!(
            "vae makes {}-channel latents, unet takes {} and gives {}",
            vae.latent_channels, unet.in_channels, unet.out_channels
        ));
    }
    if tokenizer.vocab_size() > text.vocab_size {
        return misfit(format!(
            "tokenizer has {} tokens, text_encoder embeds {}",
            tokenizer.vocab_size(),
            text.vocab_size
        ));
    }
    Ok(())
}

/// The weight file `{stem}{.variant}` in `repo`: safetensors, else the older PyTorch `.bin`.
fn weight_file(repo: &RepoFiles, stem: &str, hub: &HubOptions) -> String {
    let variant = hub
        .variant
        .as_deref()
        .map(|v| format!(".{v}"))
        .unwrap_or_default();
    let st = format!("{stem}{variant}.safetensors");
    let bin = format!("{stem}{variant}.bin");
    if !repo.has(&st) && repo.has(&bin) {
        bin
    } else {
        st
    }
}

/// `store`, unless it holds no tensor of `what` (a file of some other model).
fn non_empty(store: TensorStore, description: &str, what: &str) -> Result<TensorStore> {
    if store.is_empty() {
        return Err(Error::Weights(format!(
            "{description}: no {what} tensors found"
        )));
    }
    Ok(store)
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
        // unet, vae, text_encoder weights: safetensors, else the older PyTorch .bin (the
        // model's VAE is not fetched when a tiny one replaces it)
        let mut weight_files = Vec::new();
        if single.is_none() {
            for (component, stem) in [
                ("unet", "diffusion_pytorch_model"),
                ("vae", "diffusion_pytorch_model"),
                ("text_encoder", "model"),
            ] {
                let file = weight_file(&repo, &format!("{component}/{stem}"), &opts.hub);
                wanted.push((file.clone(), component != "vae" || opts.tiny_vae.is_none()));
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
        parts_fit(
            repo.name(),
            &unet_config,
            &vae_config,
            &text_config,
            &tokenizer,
        )?;
        let diffusers = |i: usize| {
            Weights::Diffusers(found.get(&weight_files[i]).cloned().into_iter().collect())
        };
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
        let tiny_vae = match &opts.tiny_vae {
            Some(source) => Some(resolve_tiny_vae(source, &opts.hub, &vae_config)?),
            None => None,
        };
        Ok(Self {
            tiny_vae,
            loras: opts
                .loras
                .iter()
                .map(|(source, scale)| LoraFile::locate(source, *scale, &opts.hub))
                .collect::<Result<Vec<_>>>()?,
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
            offload_vae: opts.offload_vae,
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
        let store = non_empty(store, &self.description, what)?;
        let component = match what {
            "unet" => lora::Component::Unet,
            "text_encoder" => lora::Component::TextEncoder,
            _ => return Ok(store),
        };
        if self.loras.is_empty() {
            return Ok(store);
        }
        let updates = lora::updates(&self.loras, component, &store.names())?;
        Ok(store.with_transform(lora::fused(updates)))
    }

    /// Reads every LoRA against the UNet's and text encoder's weight names, so that one that
    /// does not fit is refused before anything loads.
    pub fn check_loras(&self) -> Result<()> {
        if self.loras.is_empty() {
            return Ok(());
        }
        for (weights, what) in [(&self.unet, "unet"), (&self.text_encoder, "text_encoder")] {
            self.store(weights, what)?;
        }
        Ok(())
    }

    /// Fuses one more LoRA after those of the load options (`--fast`'s LCM-LoRA).
    pub fn add_lora(&mut self, source: &ModelSource, scale: f64, hub: &HubOptions) -> Result<()> {
        self.loras.push(LoraFile::locate(source, scale, hub)?);
        Ok(())
    }

    fn var_builder(
        &self,
        weights: &Weights,
        what: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, Loaded)> {
        Ok(counted(self.store(weights, what)?, dtype, device))
    }

    /// Loads the CLIP text encoder (the caller drops it when done).
    pub fn text_encoder(&self) -> Result<ClipTextModel> {
        let (vb, _) =
            self.var_builder(&self.text_encoder, "text_encoder", self.dtype, &self.device)?;
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
        let text = self
            .text_encoder()?
            .forward(&ids)
            .map_err(|e| e.context("the text encoder"))?
            .last_hidden_state;
        crate::device::release_free_host_memory();
        Ok(text)
    }
}

/// The auto-encoder between pixels and latents.
enum Vae {
    /// The model's own KL auto-encoder.
    Kl(Box<AutoencoderKL>),
    /// TAESD: no posterior, latents straight from the encoder.
    Tiny(Box<AutoencoderTiny>),
}

/// A tiny auto-encoder's config and weight file, checked against the model's VAE.
fn resolve_tiny_vae(
    source: &ModelSource,
    hub: &HubOptions,
    vae: &VaeConfig,
) -> Result<(TinyVaeConfig, std::path::PathBuf)> {
    let repo = repo_files(source, hub).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!(
            "{m} (the original taesd_encoder.pth / taesd_decoder.pth pair is not read; use the diffusers layout, e.g. {TINY_VAE})"
        )),
        e => e,
    })?;
    let weights = weight_file(&repo, "diffusion_pytorch_model", hub);
    let found = repo.get_all(&[("config.json", true), (weights.as_str(), true)])?;
    let config = TinyVaeConfig::from_json(&read_json(&found["config.json"])?)?;
    if config.latent_channels != vae.latent_channels || config.scale_factor() != vae.scale_factor()
    {
        return Err(Error::Config(format!(
            "tiny VAE {source} does not fit the model: {} latent channels at 1/{} size, the model's VAE {} at 1/{}",
            config.latent_channels,
            config.scale_factor(),
            vae.latent_channels,
            vae.scale_factor()
        )));
    }
    Ok((config, found[&weights].clone()))
}

/// UNet + VAE, kept for the whole run.
pub struct SdModel {
    unet: UNet2DConditionModel,
    vae: Vae,
    /// The model's own VAE config (also when a tiny VAE replaces it).
    vae_config: VaeConfig,
    /// ControlNets, in the order they were added ([`SdModel::add_controlnet`]).
    controlnets: Vec<ControlNetModel>,
    /// AnimateDiff's motion modules ([`SdModel::set_motion_adapter`]).
    motion: Option<MotionAdapter>,
    /// Where the VAE runs: the model's device, or the CPU with `offload_vae`.
    vae_device: Device,
    /// Bytes of weights each component holds on the model's device, in load order.
    weights: Vec<(String, u64)>,
    /// An LCM UNet's guidance-scale embedding ([`SdModel::set_guidance`]).
    guidance: Option<Tensor>,
    scheduler_config: Value,
    device: Device,
    dtype: DType,
    description: String,
}

impl SdModel {
    /// Loads the UNet (in the model dtype) and the VAE (in f32 when its config asks for
    /// `force_upcast`, since the SD VAE overflows in f16).
    /// With `offload_vae` the VAE is built on the CPU in f32 instead.
    pub fn load(files: &SdFiles, progress: &mut dyn Progress) -> Result<Self> {
        crate::device::keep_mid_size_buffers_in_heap();
        let (unet_vb, unet_bytes) =
            files.var_builder(&files.unet, "unet", files.dtype, &files.device)?;
        let unet = UNet2DConditionModel::new(unet_vb, &files.unet_config, files.slicing)
            .map_err(|e| Error::Weights(format!("unet: {e}")))?;
        let vae_device = match files.offload_vae {
            true => Device::Cpu,
            false => files.device.clone(),
        };
        let (vae, vae_bytes) = match &files.tiny_vae {
            Some((config, path)) => {
                let store = TensorStore::open_plain(std::slice::from_ref(path), "tiny VAE")?;
                let store = non_empty(store, &path.display().to_string(), "tiny VAE")?;
                let dtype = match files.offload_vae {
                    true => DType::F32,
                    false => files.dtype,
                };
                let (vb, loaded) = counted(store, dtype, &vae_device);
                let vae = AutoencoderTiny::new(vb, config)
                    .map_err(|e| Error::Weights(format!("tiny VAE {}: {e}", path.display())))?;
                (Vae::Tiny(Box::new(vae)), loaded)
            }
            None => {
                let upcast = files.vae_config.force_upcast && files.dtype == DType::F16;
                let vae_dtype = if files.offload_vae {
                    DType::F32
                } else if upcast {
                    progress.warn("the VAE runs in f32 (its config sets force_upcast)");
                    DType::F32
                } else {
                    files.dtype
                };
                let (vae_vb, loaded) =
                    files.var_builder(&files.vae, "vae", vae_dtype, &vae_device)?;
                let vae = AutoencoderKL::new(vae_vb, &files.vae_config, files.tiling)
                    .map_err(|e| Error::Weights(format!("vae: {e}")))?;
                (Vae::Kl(Box::new(vae)), loaded)
            }
        };
        let mut weights = vec![("UNet".to_string(), bytes(&unet_bytes))];
        if !files.offload_vae {
            weights.push(("VAE".to_string(), bytes(&vae_bytes)));
        }
        Ok(Self {
            unet,
            vae,
            vae_device,
            weights,
            vae_config: files.vae_config.clone(),
            controlnets: Vec::new(),
            motion: None,
            guidance: None,
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
    /// `control`: what the ControlNets add ([`SdModel::controlnet`]).
    pub fn unet(
        &self,
        latents: &Tensor,
        timesteps: &[f64],
        text: &Tensor,
        frames: &mut SelfAttention,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        self.run_unet(latents, timesteps, text, frames, control, None)
    }

    fn run_unet(
        &self,
        latents: &Tensor,
        timesteps: &[f64],
        text: &Tensor,
        frames: &mut SelfAttention,
        control: Option<&ControlResiduals>,
        motion: Option<&Motion>,
    ) -> Result<Tensor> {
        let guidance = self.guidance.as_ref();
        let out = self
            .unet
            .forward(latents, timesteps, text, frames, control, guidance, motion)
            .map_err(|e| e.context("the UNet"))?;
        Ok(out.to_dtype(DType::F32)?)
    }

    /// [`SdModel::unet`] on a batch of windows of `frames` consecutive frames each, through
    /// the motion modules of [`SdModel::set_motion_adapter`] (diffusers' `UNetMotionModel`);
    /// `text` and `timesteps` have one row per frame.
    pub fn unet_window(
        &self,
        latents: &Tensor,
        timesteps: &[f64],
        text: &Tensor,
        frames: usize,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        let adapter = self
            .motion
            .as_ref()
            .ok_or_else(|| Error::Model("no motion adapter loaded".into()))?;
        let motion = Motion { adapter, frames };
        let own = &mut SelfAttention::Own;
        self.run_unet(latents, timesteps, text, own, control, Some(&motion))
    }

    /// Loads AnimateDiff's motion modules into the UNet (refused when they do not fit it).
    pub fn set_motion_adapter(&mut self, files: &MotionAdapterFiles) -> Result<()> {
        files.config.check_fits(self.unet.config())?;
        let (vb, loaded) = counted(files.store()?, self.dtype, &self.device);
        let adapter = MotionAdapter::new(vb, &files.config, files.slicing)
            .map_err(|e| Error::Weights(format!("{}: {e}", files.description)))?;
        self.motion = Some(adapter);
        self.weights.retain(|(name, _)| name != "motion modules");
        self.weights.push(("motion modules".into(), bytes(&loaded)));
        Ok(())
    }

    /// Whether the UNet takes the guidance scale as an input (LCM UNets, `time_cond_proj_dim`):
    /// it then runs without classifier-free guidance, as diffusers does.
    pub fn embeds_guidance(&self) -> bool {
        self.unet.config().time_cond_proj_dim.is_some()
    }

    /// The guidance scale an LCM UNet is told (diffusers embeds `guidance − 1`); other UNets
    /// ignore it.
    pub fn set_guidance(&mut self, guidance: f64) -> Result<()> {
        if let Some(dim) = self.unet.config().time_cond_proj_dim {
            let w =
                crate::nets::sd::unet::guidance_embedding(&[guidance - 1.0], dim, &self.device)?;
            self.guidance = Some(w.to_dtype(self.dtype)?);
        }
        Ok(())
    }

    /// Adds a ControlNet (net `n` is the n-th added), refusing one the UNet cannot take.
    pub fn add_controlnet(&mut self, files: &ControlNetFiles) -> Result<()> {
        files.check_fits(self.unet.config(), self.vae_scale_factor())?;
        let (vb, loaded) = counted(files.store()?, self.dtype, &self.device);
        let net = ControlNetModel::new(vb, &files.config, files.slicing)
            .map_err(|e| Error::Weights(format!("{}: {e}", files.description)))?;
        self.controlnets.push(net);
        let name = format!("ControlNet {}", self.controlnets.len());
        self.weights.push((name, bytes(&loaded)));
        Ok(())
    }

    /// The residuals of ControlNet `net` for the UNet input `latents` at `timesteps`, text
    /// `text` and control image `image` `[b or 1, 3, H, W]` in [0, 1], times `scale`
    /// ([`ControlNetModel::forward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn controlnet(
        &self,
        net: usize,
        latents: &Tensor,
        timesteps: &[f64],
        text: &Tensor,
        image: &Tensor,
        scale: f64,
        guess_mode: bool,
    ) -> Result<ControlResiduals> {
        let model = self.controlnets.get(net).ok_or_else(|| {
            Error::Model(format!(
                "ControlNet {net} asked for, {} loaded",
                self.controlnets.len()
            ))
        })?;
        Ok(model
            .forward(latents, timesteps, text, image, scale, guess_mode)
            .map_err(|e| e.context(format!("ControlNet {net}")))?)
    }

    /// Posterior `(mean, logvar)` of `image` `[b, 3, H, W]` in [-1, 1], raw latent space
    /// (multiply a sample by [`Self::scaling_factor`] for the UNet). f32.
    /// With a tiny VAE `mean` is the latents themselves and `logvar` −∞ (no spread; see
    /// [`SdModel::samples_posterior`]).
    pub fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let image = image.to_device(&self.vae_device)?;
        let back =
            |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?) };
        let named = |e: candle_core::Error| e.context("the VAE encoder");
        match &self.vae {
            Vae::Kl(vae) => {
                let (mean, logvar) = vae.encode(&image).map_err(named)?;
                Ok((back(mean)?, back(logvar)?))
            }
            Vae::Tiny(vae) => {
                let latents = back(vae.encode(&image.to_dtype(vae.dtype())?).map_err(named)?)?;
                let logvar = (latents.zeros_like()? + f64::NEG_INFINITY)?;
                Ok((latents, logvar))
            }
        }
    }

    /// Whether encoding draws from a posterior (the KL VAE) or gives the latents outright
    /// (TAESD, as diffusers' `retrieve_latents` reads its `.latents`).
    pub fn samples_posterior(&self) -> bool {
        matches!(self.vae, Vae::Kl(_))
    }

    /// Image `[b, 3, H, W]` (about [-1, 1]) from raw latents (UNet latents divided by the
    /// scaling factor). f32.
    pub fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        // The UNet's freed activations, before the decoder's full-resolution ones.
        crate::device::release_free_host_memory();
        let latents = latents.to_device(&self.vae_device)?;
        let image = match &self.vae {
            Vae::Kl(vae) => vae.decode(&latents),
            Vae::Tiny(vae) => vae.decode(&latents.to_dtype(vae.dtype())?),
        }
        .map_err(|e| e.context("the VAE decoder"))?;
        Ok(image.to_dtype(DType::F32)?.to_device(&self.device)?)
    }

    /// VAE `scaling_factor` (0.18215 for SD 1.x/2.x).
    pub fn scaling_factor(&self) -> f64 {
        match &self.vae {
            Vae::Kl(vae) => vae.config().scaling_factor,
            Vae::Tiny(vae) => vae.config().scaling_factor,
        }
    }

    /// Pixels per latent along each axis (8 for SD).
    pub fn vae_scale_factor(&self) -> usize {
        match &self.vae {
            Vae::Kl(vae) => vae.config().scale_factor(),
            Vae::Tiny(vae) => vae.config().scale_factor(),
        }
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

    /// The model's own VAE config (also when a tiny VAE runs instead).
    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae_config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// What the UNet computes in: the model dtype (a model that silently upcast would not
    /// fit the GPU plan; tests/parity/half_precision.rs checks it).
    pub fn unet_dtype(&self) -> DType {
        self.unet.dtype()
    }

    /// What the VAE computes in: the model dtype, or f32 for a `force_upcast` VAE under f16.
    pub fn vae_dtype(&self) -> DType {
        match &self.vae {
            Vae::Kl(vae) => vae.dtype(),
            Vae::Tiny(vae) => vae.dtype(),
        }
    }

    /// Whether the VAE decodes a `width`×`height` frame in tiles (never the tiny VAE).
    pub fn vae_tiled(&self, width: usize, height: usize) -> bool {
        match &self.vae {
            Vae::Kl(vae) => vae.tiled(height, width),
            Vae::Tiny(_) => false,
        }
    }

    /// Where the VAE runs (the CPU under `offload_vae`).
    pub fn vae_device(&self) -> &Device {
        &self.vae_device
    }

    /// Bytes of weights each component holds on the model's device (the text encoder is
    /// freed after the prompt; an offloaded VAE is not listed).
    pub fn weight_bytes(&self) -> &[(String, u64)] {
        &self.weights
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

/// A model component named by `-c` or `--motion-adapter`: a single original-layout file, or a
/// hub id or diffusers folder with `config.json` beside `diffusion_pytorch_model` weights (at
/// the top, or under `subfolder/` when the top has no config).
enum ComponentFiles {
    SingleFile(std::path::PathBuf),
    Diffusers {
        config: Value,
        weights: std::path::PathBuf,
        name: String,
    },
}

impl ComponentFiles {
    fn resolve(source: &ModelSource, hub: &HubOptions, subfolder: Option<&str>) -> Result<Self> {
        if let ModelSource::File(path) = source {
            return Ok(Self::SingleFile(path.clone()));
        }
        let repo = repo_files(source, hub)?;
        let dir = match subfolder {
            Some(sub) if !repo.has("config.json") && repo.has(&format!("{sub}/config.json")) => {
                format!("{sub}/")
            }
            _ => String::new(),
        };
        let weights = weight_file(&repo, &format!("{dir}diffusion_pytorch_model"), hub);
        let config = format!("{dir}config.json");
        let found = repo.get_all(&[(config.as_str(), true), (weights.as_str(), true)])?;
        Ok(Self::Diffusers {
            config: read_json(&found[&config])?,
            weights: found[&weights].clone(),
            name: repo.name().to_string(),
        })
    }
}

/// A resolved AnimateDiff motion adapter: config parsed (or derived), weight file located.
pub struct MotionAdapterFiles {
    pub config: MotionAdapterConfig,
    path: std::path::PathBuf,
    /// An original-layout file (`mm_sd_v15_v2.ckpt`), renamed as it is read.
    original: bool,
    slicing: AttentionSlicing,
    description: String,
}

/// Heads of every original AnimateDiff motion module (the weights do not tell; the
/// repository's `motion_module_kwargs` and diffusers' converter both use 8).
const ORIGINAL_MOTION_HEADS: usize = 8;

impl MotionAdapterFiles {
    /// Finds (and downloads, unless offline) a motion adapter: a hub id or diffusers folder
    /// (`config.json` + `diffusion_pytorch_model.safetensors`), or an original single file
    /// (`.ckpt` read as data, or `.safetensors`) whose layout is read from its tensors.
    pub fn resolve(source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        Ok(match ComponentFiles::resolve(source, &opts.hub, None)? {
            ComponentFiles::SingleFile(path) => {
                let description = source.to_string();
                let store = TensorStore::open_plain(std::slice::from_ref(&path), "motion adapter")?;
                Self {
                    config: original_motion_config(&store, &description)?,
                    path,
                    original: true,
                    slicing: opts.attention_slicing,
                    description,
                }
            }
            ComponentFiles::Diffusers {
                config,
                weights,
                name,
            } => Self {
                config: MotionAdapterConfig::from_json(&config)?,
                path: weights,
                original: false,
                slicing: opts.attention_slicing,
                description: name,
            },
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    fn store(&self) -> Result<TensorStore> {
        let paths = std::slice::from_ref(&self.path);
        let store = match self.original {
            true => TensorStore::open(paths, "motion adapter", checkpoint::motion_module_name)?,
            false => TensorStore::open_plain(paths, "motion adapter")?,
        };
        non_empty(store, &self.description, "motion module")
    }
}

/// The layout of an original motion-module file, read from its names and shapes: channels
/// from each level's first `proj_in`, module and transformer-block counts from the indices,
/// the window limit from the stored position encoding `[1, L, C]`.
fn original_motion_config(store: &TensorStore, description: &str) -> Result<MotionAdapterConfig> {
    let names = store.names();
    let not_motion = || {
        Error::Weights(format!(
            "{description}: not an AnimateDiff motion module (no down_blocks.*.motion_modules.* tensors)"
        ))
    };
    // Distinct indices after `prefix` among the names.
    let indices = |prefix: &str| -> Vec<usize> {
        let mut v: Vec<usize> = names
            .iter()
            .filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let module = |block: &str| format!("{block}.motion_modules.0.temporal_transformer.");
    let depth = |block: &str| indices(&format!("{}transformer_blocks.", module(block))).len();
    let mut levels = Vec::new();
    for i in indices("down_blocks.") {
        let block = format!("down_blocks.{i}");
        let proj_in = store.tensor(&format!("{}proj_in.weight", module(&block)))?;
        levels.push(MotionLevel {
            channels: proj_in.dim(0)?,
            modules: indices(&format!("{block}.motion_modules.")).len(),
            transformer_layers: depth(&block),
            heads: ORIGINAL_MOTION_HEADS,
        });
    }
    if levels.is_empty() {
        return Err(not_motion());
    }
    let mid_modules = indices("mid_block.motion_modules.").len();
    let pe = names
        .iter()
        .find(|n| n.ends_with(".pos_encoder.pe"))
        .ok_or_else(not_motion)?;
    Ok(MotionAdapterConfig {
        levels,
        mid: (mid_modules > 0).then(|| (mid_modules, depth("mid_block"))),
        norm_num_groups: 32,
        max_seq_length: store.tensor(pe)?.dim(1)?,
    })
}

/// A resolved ControlNet: config parsed (or derived), weight file located.
pub struct ControlNetFiles {
    pub config: ControlNetConfig,
    weights: ControlNetWeights,
    slicing: AttentionSlicing,
    description: String,
}

enum ControlNetWeights {
    /// diffusers layout: names as the model uses them.
    Diffusers(std::path::PathBuf),
    /// Original layout: the stored-name prefix and the hint block's convolutions.
    SingleFile {
        path: std::path::PathBuf,
        prefix: &'static str,
        hint: Vec<usize>,
    },
}

impl ControlNetFiles {
    /// Finds (and downloads, unless offline) a ControlNet: a hub id or diffusers folder
    /// (`config.json` + `diffusion_pytorch_model.safetensors`, at the top or under
    /// `controlnet/`), or a single original-layout file, which is read with `unet`'s
    /// architecture (the nets are copies of the UNet they were trained on).
    pub fn resolve(source: &ModelSource, opts: &LoadOptions, unet: &UNetConfig) -> Result<Self> {
        let path = match ComponentFiles::resolve(source, &opts.hub, Some("controlnet"))? {
            ComponentFiles::SingleFile(path) => path,
            ComponentFiles::Diffusers {
                config,
                weights,
                name,
            } => {
                return Ok(Self {
                    config: ControlNetConfig::from_json(&config)?,
                    weights: ControlNetWeights::Diffusers(weights),
                    slicing: opts.attention_slicing,
                    description: name,
                })
            }
        };
        // One read of the file for its names and the hint block's widths (as stored).
        let plain = TensorStore::open_plain(std::slice::from_ref(&path), "controlnet")?;
        let names = plain.names();
        let prefix = checkpoint::controlnet_prefix(&names).ok_or_else(|| {
            Error::Weights(format!(
                "{}: not a ControlNet (no input_hint_block or control_model tensors)",
                path.display()
            ))
        })?;
        let hint = checkpoint::controlnet_hint_convs(&names, prefix);
        if hint.len() < 2 {
            return Err(Error::Weights(format!(
                "{}: the ControlNet's input_hint_block has {} convolutions",
                path.display(),
                hint.len()
            )));
        }
        // The hint block's widths: conv_in's, then every second (stride-2) block's;
        // diffusers' blocks.j is the hint block's convolution j + 1.
        let conv = |i: usize| plain.tensor(&format!("{prefix}input_hint_block.{i}.weight"));
        let conv_in = conv(hint[0])?;
        let mut channels = vec![conv_in.dim(0)?];
        for j in (1..hint.len() - 2).step_by(2) {
            channels.push(conv(hint[j + 1])?.dim(0)?);
        }
        let cin = conv_in.dim(1)?;
        let config = ControlNetConfig::new(unet.clone(), cin, channels, false, false)?;
        Ok(Self {
            config,
            weights: ControlNetWeights::SingleFile { path, prefix, hint },
            slicing: opts.attention_slicing,
            description: source.to_string(),
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// Refuses a net that cannot work with this UNet and VAE, naming both.
    pub fn check_fits(&self, unet: &UNetConfig, vae_scale_factor: usize) -> Result<()> {
        let net = &self.config.unet;
        let mismatch = |what: String| {
            Err(Error::Config(format!(
                "ControlNet {} does not fit the model: {what}",
                self.description
            )))
        };
        if net.cross_attention_dim() != unet.cross_attention_dim() {
            return mismatch(format!(
                "it reads text embeddings of width {}, the model's text encoder gives {} \
                 (an SD 1.x net with an SD 2.x model, or the other way round?)",
                net.cross_attention_dim(),
                unet.cross_attention_dim()
            ));
        }
        let widths = |c: &UNetConfig| c.blocks.iter().map(|b| b.out_channels).collect::<Vec<_>>();
        if widths(net) != widths(unet) || net.layers_per_block != unet.layers_per_block {
            return mismatch(format!(
                "its blocks are {:?} × {} layers, the UNet's {:?} × {}",
                widths(net),
                net.layers_per_block,
                widths(unet),
                unet.layers_per_block
            ));
        }
        if net.in_channels != unet.in_channels {
            return mismatch(format!(
                "it takes {} latent channels, the UNet {}",
                net.in_channels, unet.in_channels
            ));
        }
        if self.config.scale_factor() != vae_scale_factor {
            return mismatch(format!(
                "its control image embedding downscales by {}, the VAE by {vae_scale_factor}",
                self.config.scale_factor()
            ));
        }
        if self.config.conditioning_channels != 3 {
            return mismatch(format!(
                "it takes {}-channel control images, video frames have 3",
                self.config.conditioning_channels
            ));
        }
        Ok(())
    }

    fn store(&self) -> Result<TensorStore> {
        let store = match &self.weights {
            ControlNetWeights::SingleFile { path, prefix, hint } => {
                single_controlnet_store(path, prefix, self.config.unet.layers_per_block, hint)?
            }
            ControlNetWeights::Diffusers(path) => {
                TensorStore::open_plain(std::slice::from_ref(path), "controlnet")?
            }
        };
        non_empty(store, &self.description, "ControlNet")
    }
}

fn single_controlnet_store(
    path: &std::path::Path,
    prefix: &str,
    layers_per_block: usize,
    hint: &[usize],
) -> Result<TensorStore> {
    TensorStore::open(&[path.to_path_buf()], "controlnet", |k| {
        checkpoint::controlnet_name(k, prefix, layers_per_block, hint)
    })
}
