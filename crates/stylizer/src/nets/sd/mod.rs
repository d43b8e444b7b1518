//! Stable Diffusion's networks and their configs: the CLIP text encoder ([`clip`]), the UNet
//! ([`unet`], with [`attention`], [`resnet`] and the AnimateDiff motion modules [`motion`]),
//! ControlNet ([`controlnet`]), the VAE ([`vae`]) and the tiny VAE ([`taesd`]); the
//! self-attention modes that let a frame look at another ([`cross_frame`]) or at a bank of
//! earlier frames ([`feature_bank`]); diffusers configs
//! ([`config`]) and the renaming of single-file checkpoints to diffusers names ([`checkpoint`]).
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod controlnet;
pub mod cross_frame;
pub mod feature_bank;
pub mod motion;
pub mod resnet;
pub mod taesd;
pub mod unet;
pub mod vae;
