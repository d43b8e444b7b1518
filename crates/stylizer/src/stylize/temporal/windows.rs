//! Whether frames are denoised one by one or together in windows through AnimateDiff's motion
//! modules (`--animatediff`; [`crate::sampling::animate`]). Windowed frames are rendered a
//! chunk at a time on a fixed grid, so a frame's result does not depend on where a run, a
//! resume or a `--segment` share started.

use candle_core::Tensor;

use crate::sampling::animate::{ChunkGrid, Chunks, ContextOptions};
use crate::weights::ModelSource;
use crate::Result;

/// The motion adapter `--animatediff` loads unless told otherwise (SD 1.5, with mid block).
pub const MOTION_ADAPTER: &str = "guoyww/animatediff-motion-adapter-v1-5-2";

/// `--animatediff`: the motion adapter and the context windows.
#[derive(Debug, Clone, PartialEq)]
pub struct AnimateDiffSettings {
    /// `--motion-adapter`: hub id, diffusers folder or original `.ckpt`/`.safetensors`.
    pub adapter: ModelSource,
    pub context: ContextOptions,
}

/// Frames denoised one by one, or together in windows.
#[derive(Debug, Clone, PartialEq)]
pub enum Denoising {
    OneByOne,
    /// AnimateDiff.
    Windows(AnimateDiffSettings),
}

impl Denoising {
    pub fn animatediff(&self) -> Option<&AnimateDiffSettings> {
        match self {
            Denoising::OneByOne => None,
            Denoising::Windows(a) => Some(a),
        }
    }
}

/// The window axis at run time: the frames seen and the chunks rendered.
pub(crate) struct WindowState {
    context: ContextOptions,
    chunks: Chunks,
}

impl WindowState {
    /// `None` for frames denoised one by one.
    pub fn new(denoising: &Denoising) -> Option<Self> {
        denoising.animatediff().map(|a| Self {
            context: a.context,
            chunks: Chunks::new(ChunkGrid::new(&a.context)),
        })
    }

    /// A new input.
    pub fn restart(&mut self) {
        self.chunks.clear();
    }

    /// The frames of the chunks holding `start` that are neither rendered nor held.
    pub fn warm_up_frames(&self, start: u64) -> Vec<u64> {
        self.chunks.warm_up_frames(start)
    }

    /// A chunk is rendered when its first frame is due: all of it must have been seen.
    pub fn look_ahead(&self) -> u64 {
        self.chunks.grid().len - 1
    }

    /// A frame seen (processed, peeked, or shown again at a segment's start), as the model's
    /// input.
    pub fn add(&mut self, index: u64, image: Tensor) {
        self.chunks.add_input(index, image);
    }

    /// The final latents of frame `index` (cross-faded across chunks in an overlap);
    /// `denoise(first, frames, context)` denoises the stack of a chunk starting at `first`.
    pub fn latents(
        &mut self,
        index: u64,
        denoise: &mut dyn FnMut(u64, &Tensor, &ContextOptions) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let context = self.context;
        self.chunks
            .latents(index, &mut |first, stack| denoise(first, stack, &context))
    }
}
