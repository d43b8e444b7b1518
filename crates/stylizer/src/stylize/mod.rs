//! Stable Diffusion img2img per frame: models and loading (text encoder, UNet, VAE, weights),
//! schedulers, noise, the sampling loop and the stylize frame stage.
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod conv;
pub mod img2img;
pub mod model;
pub mod noise;
pub mod resnet;
pub mod schedulers;
pub mod stage;
pub mod tokenizer;
pub mod unet;
pub mod vae;
