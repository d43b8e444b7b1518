//! The only code that talks to ffmpeg and ffprobe.
pub mod process;
