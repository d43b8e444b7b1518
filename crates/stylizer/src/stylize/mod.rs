//! Stable Diffusion img2img per frame: models and loading (text encoder, UNet, VAE, weights),
//! schedulers, noise, the sampling loop (`img2img`), cross-frame attention (`cross_frame`) and
//! the stylize frame stage (`stage`).
//!
//! ```text
//! let source = ModelSource::parse(model_id)?;                 // hub id | folder | .safetensors/.ckpt
//! let mut opts = LoadOptions::new(Device::Cpu);               // hub settings from HF_* variables
//! opts.hub.revision = revision; opts.hub.variant = variant;   // --revision, --variant fp16
//! opts.hub.offline |= offline;                                // --offline (or HF_HUB_OFFLINE=1)
//! let files = SdFiles::resolve(&source, &opts, progress)?;    // configs, tokenizer, weight files
//! let text = files.encode_prompts(prompt, Some(negative))?;   // [neg, pos]; CLIP freed on return
//! let model = SdModel::load(&files, progress)?;               // UNet + VAE
//! let (mean, logvar) = model.vae_encode(&image)?;             // image [1,3,H,W] in [-1,1]
//! let eps = model.unet(&latents, &[t], &text, &mut SelfAttention::Own, None)?; // CFG batch [neg, pos]
//! let image = model.vae_decode(&(latents / model.scaling_factor())?)?;
//! ```
pub mod animate;
pub mod attention;
pub mod canny;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod control;
pub mod controlnet;
pub mod conv;
pub mod cross_frame;
pub mod fast;
pub mod img2img;
pub mod lora;
pub mod model;
pub mod motion;
pub mod noise;
pub mod resnet;
pub mod schedulers;
pub mod stage;
pub mod taesd;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vram;
