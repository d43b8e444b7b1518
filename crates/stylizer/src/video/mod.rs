//! The only code that talks to ffmpeg and ffprobe.
pub mod decode;
pub mod encode;
pub mod probe;
pub mod process;

pub use decode::{render_size, Decoder, MaxRes};
pub use encode::{Codec, Container, EncodeSettings, Encoder};
pub use probe::{probe, Rational, Timing, VideoInfo};
