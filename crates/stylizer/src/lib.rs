//! video-stylizer: restyle a video with a text prompt.
//!
//! ```text
//! probe ─▶ decode (ffmpeg → rgb24 pipe) ─▶ FrameStage… (stylize, upscale) ─▶ encode (rgb24 → ffmpeg) ─▶ join
//! ```
pub mod cancel;
pub mod device;
pub mod error;
pub mod frame;
pub mod nets;
pub mod ops;
pub mod pipeline;
pub mod progress;
pub mod sampling;
pub mod sd;
pub mod stage;
pub mod stylize;
pub mod temporal;
pub mod upscale;
pub mod video;
pub mod weights;

pub use error::{Error, Result};
pub use frame::Frame;
pub use progress::{NoProgress, Progress, Stage};
pub use stage::FrameStage;

/// `path`'s extension, lower-cased, is one of `extensions`.
pub(crate) fn has_extension(path: &std::path::Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
}
