//! The only code that talks to ffmpeg and ffprobe.
pub mod decode;
pub mod encode;
pub mod probe;
pub mod process;

pub use decode::{render_size, Decoder, MaxRes};
pub use encode::{Codec, Container, EncodeSettings, Encoder};
pub use probe::{probe, Rational, Timing, VideoInfo};

/// Extensions taken as videos when a folder is given as input (lower case).
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "mts", "m2ts", "flv", "wmv",
    "3gp", "ogv", "mxf",
];

/// A file named like a video (by its extension).
pub fn is_video(path: &std::path::Path) -> bool {
    crate::has_extension(path, VIDEO_EXTENSIONS)
}
