//! Temporal consistency: dense optical flow ([`flow`]), warping ([`warp`]) and the warp-error
//! flicker metric ([`flicker`]) that proves whether a restyled video is steadier, and
//! flow-guided fusion ([`fusion`]) that makes it so.
mod bilinear;
pub mod flicker;
pub mod flow;
pub mod fusion;
pub mod noise_warp;
pub mod rerender;
pub mod warp;
