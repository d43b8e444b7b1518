//! Progress reporting. The library never draws; a front end implements [`Progress`].

/// What the pipeline is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Probe,
    LoadModels,
    /// Re-running earlier frames that temporal state depends on (a resumed or split run).
    WarmUp,
    Render,
    Join,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Probe => "probing",
            Stage::LoadModels => "loading models",
            Stage::WarmUp => "re-rendering the earlier frames this segment follows",
            Stage::Render => "rendering",
            Stage::Join => "joining",
        })
    }
}

/// Callbacks from the pipeline. All methods have empty defaults.
pub trait Progress: Send {
    /// A new stage began.
    fn stage(&mut self, _stage: Stage) {}
    /// `done` of `total` frames are finished (resumed frames count as done).
    /// `total` may be an estimate taken from the container.
    fn frame(&mut self, _done: u64, _total: u64) {}
    /// Inner progress of a long per-frame stage (diffusion step `i` of `n`).
    fn step(&mut self, _i: usize, _n: usize) {}
    /// A non-fatal condition the user should hear about.
    fn warn(&mut self, msg: &str) {
        tracing::warn!("{msg}");
    }
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
