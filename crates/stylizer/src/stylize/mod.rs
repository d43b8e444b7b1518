//! The stylize frame stage: Stable Diffusion img2img on every frame ([`stage`]), what it does
//! across frames as independent axes ([`temporal`]), and its control images for ControlNets
//! ([`control`], Canny edges in [`canny`]).
pub mod canny;
pub mod control;
pub mod stage;
pub mod temporal;
