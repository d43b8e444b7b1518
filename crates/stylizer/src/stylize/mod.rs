//! Stable Diffusion img2img per frame: models and loading (text encoder, UNet, VAE, weights).
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod conv;
pub mod model;
pub mod resnet;
pub mod tokenizer;
pub mod unet;
pub mod vae;
