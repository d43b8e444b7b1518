//! A Stable Diffusion model as a run loads it: its files resolved from the hub, a folder or a
//! single checkpoint, the text encoded and freed, UNet + VAE (+ ControlNets, motion modules,
//! LoRAs fused as the weights are read) on their devices, and the GPU memory plan.
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
pub mod lora;
pub mod model;
pub mod tokenizer;
pub mod vram;
