//! The stylize frame stage: Stable Diffusion img2img on every frame ([`stage`]), with its
//! control images for ControlNets ([`control`], Canny edges in [`canny`]).
pub mod canny;
pub mod control;
pub mod stage;
