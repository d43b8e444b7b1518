//! The library's one error type. Every variant renders as a single line a user can act on.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is missing, not a file, not a video, or has nothing to decode.
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },

    /// A flag value or a combination of settings that cannot work.
    #[error("invalid setting: {0}")]
    Config(String),

    /// A flag's value that does not parse; the text says what the flag takes.
    #[error("{0}")]
    Value(String),

    /// Where the output should go is unusable (exists, not writable, same as input, ...).
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },

    /// ffmpeg or ffprobe is not installed (or not where FFMPEG/FFPROBE point).
    #[error("{program} not found ({tried}); install ffmpeg >= 5 (e.g. `apt-get install ffmpeg`, `brew install ffmpeg`) or set the {env} environment variable to its path")]
    ToolMissing {
        program: &'static str,
        env: &'static str,
        tried: String,
    },

    /// ffmpeg/ffprobe ran and failed. `stderr` holds its last lines.
    #[error("{cmd} failed ({status}): {stderr}")]
    Ffmpeg {
        cmd: String,
        status: String,
        stderr: String,
    },

    /// A feature that is part of the product but has not landed yet.
    #[error("{0} is not available yet in this version of video-stylizer")]
    NotImplemented(String),

    /// A model could not be built or run.
    #[error("model: {0}")]
    Model(String),

    /// Not enough memory for a model's activations; the upscaler retries with smaller tiles.
    #[error("out of memory: {0}")]
    OutOfMemory(String),

    /// Weights missing, unreadable or of the wrong shape.
    #[error("weights: {0}")]
    Weights(String),

    /// The run was stopped by Ctrl-C / SIGTERM; finished work, if any, is kept for resuming.
    #[error("interrupted; {}", match .work_dir {
        Some(dir) => format!("finished segments are kept in {}, run the same command again to resume", dir.display()),
        None => "no segment was finished, so nothing was kept".into(),
    })]
    Interrupted { work_dir: Option<PathBuf> },

    /// A filesystem operation failed (disk full, permission denied, ...).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn output(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Output {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        let text = e.to_string();
        // CUDA (`CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS `ALLOC_FAILED`) and Metal report a full GPU
        // as a plain model error: typed here, so that callers can say which flag helps.
        let lower = text.to_ascii_lowercase();
        let oom = ["out of memory", "out_of_memory", "alloc_failed"]
            .iter()
            .any(|p| lower.contains(p));
        match oom {
            true => Error::OutOfMemory(text.lines().next().unwrap_or_default().to_string()),
            false => Error::Model(one_line(&text)),
        }
    }
}

/// candle's context, outermost first, one per line (the network, the block), then the error,
/// as one line: "the UNet: up_blocks.2: …"; a backtrace after it (indented) is left out.
fn one_line(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with(char::is_whitespace) && !l.starts_with("stack backtrace"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gpu_is_out_of_memory_in_one_line() {
        for msg in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n  backtrace…",
            "cublas error: CUBLAS_STATUS_ALLOC_FAILED",
        ] {
            let e = Error::from(candle_core::Error::Msg(msg.into()));
            assert!(
                matches!(&e, Error::OutOfMemory(m) if !m.contains('\n')),
                "{e:?}"
            );
        }
        let e = Error::from(candle_core::Error::Msg("shape mismatch".into()));
        assert!(matches!(e, Error::Model(_)));
    }

    #[test]
    fn an_error_inside_a_network_names_it_and_its_block_in_one_line() {
        let inner = candle_core::Error::Msg("a linear layer that takes 64 features".into());
        let e = Error::from(inner.context("down_blocks.1").context("the UNet"));
        assert_eq!(
            e.to_string(),
            "model: the UNet: down_blocks.1: a linear layer that takes 64 features"
        );
    }
}
