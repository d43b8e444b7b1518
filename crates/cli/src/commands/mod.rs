//! One file a command; each takes its parsed flags and returns the exit status.
pub(crate) mod flicker;
pub(crate) mod models;
pub(crate) mod probe;
pub(crate) mod stylize;
pub(crate) mod upscale;
