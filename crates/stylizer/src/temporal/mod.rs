//! Temporal consistency: dense optical flow ([`flow`]), warping ([`warp`]) and the warp-error
//! flicker metric ([`flicker`]) that proves whether a restyled video is steadier.
pub mod flicker;
pub mod flow;
pub mod warp;
