//! The seam between video I/O and the models: a [`FrameStage`] turns one frame into another.
//!
//! Stylize (Stable Diffusion) and upscale (Real-ESRGAN) are frame stages; the pipeline chains
//! them between decode and encode and knows nothing else about them. A stage whose frames
//! depend on other frames also implements [`TemporalStage`].

use std::str::FromStr;
use std::time::Duration;

use crate::video::probe::VideoInfo;
use crate::{Error, Frame, Result};

/// A per-frame transformation.
pub trait FrameStage: Send {
    /// Short name for logs and errors ("identity", "stylize", "upscale").
    fn name(&self) -> &str;

    /// Size of the frames this stage produces from frames of `width`×`height`.
    fn output_size(&self, width: u32, height: u32) -> (u32, u32);

    /// Everything about this stage that changes pixels (model, prompt, seed, ...), so that
    /// resume can tell whether finished segments are still valid.
    fn fingerprint(&self) -> String;

    /// Loads what the stage needs (weights, prompt embeddings). Called once, only when there
    /// are frames left to render, so a fully resumed run or a `--segment` share with no work
    /// never pays for it. Errors here (bad model file) stop the run before any frame.
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called before the first frame of every video (after [`prepare`](FrameStage::prepare)),
    /// with the input and the size of the frames this stage will get: a stage that renders
    /// several inputs in turn drops all it kept of the previous one (an anchor frame,
    /// keyframes), and opens what it reads beside the input (a control video), refusing
    /// what does not fit before any frame.
    fn start_input(&mut self, _input: &VideoInfo, _size: (u32, u32)) -> Result<()> {
        Ok(())
    }

    /// Whether a frame costs this stage about as little as encoding it does (pixel
    /// arithmetic, no model). A video whose stages are all light is cut into longer
    /// segments (see [`crate::pipeline::segment_seconds`]): there an encoder start per
    /// segment is a visible share of the work, while for a model stage it is noise.
    fn light(&self) -> bool {
        false
    }

    /// Transforms frame number `index` (0-based, in the whole video).
    fn process(&mut self, frame: Frame, index: u64) -> Result<Frame>;

    /// The stage's dependence on other frames, for stages that keep state across frames.
    fn temporal(&mut self) -> Option<&mut dyn TemporalStage> {
        None
    }
}

/// The part of a stage whose frames depend on other frames (temporal consistency).
///
/// Stages are called with frames in order, starting at the first frame of a segment. Such a
/// stage must render frame `n` the same whether the run started at frame 0, was resumed, or
/// is one `--segment` share: at the start of every segment it is
/// [`reset`](TemporalStage::reset), then shown again the earlier frames it names in
/// [`warm_up_frames`](TemporalStage::warm_up_frames) (an anchor frame, a look-back), so its
/// state can only depend on those and on the frames of the segment so far (and the frames it
/// [`peek`](TemporalStage::peek)s ahead).
pub trait TemporalStage {
    /// Called before the first frame of every segment.
    fn reset(&mut self) -> Result<()>;

    /// Frames before `start` (in order) that the stage must see through
    /// [`warm_up`](TemporalStage::warm_up) after [`reset`](TemporalStage::reset), before frame
    /// `start`, to be in the state an uninterrupted run would be in there. Asked at the start
    /// of every segment: a stage that still holds that state returns none.
    fn warm_up_frames(&mut self, start: u64) -> Vec<u64>;

    /// Rebuilds state from frame `index` (one of
    /// [`warm_up_frames`](TemporalStage::warm_up_frames), as the stages before this one made
    /// it) without producing output.
    fn warm_up(&mut self, frame: Frame, index: u64) -> Result<()>;

    /// How many frames past the one it is asked to [`process`](FrameStage::process) the
    /// stage must already have seen through [`peek`](TemporalStage::peek) (keyframes
    /// propagated from the next keyframe look ahead).
    fn look_ahead(&self) -> u64 {
        0
    }

    /// Shows the stage frame `index` ahead of its turn, as the stages before this one made
    /// it: before frame `i` is processed, every frame up to `i + look_ahead()` has been
    /// peeked, in order, once per segment (the look-ahead starts again after
    /// [`reset`](TemporalStage::reset)); frames past the end of the video never come.
    fn peek(&mut self, _frame: Frame, _index: u64) -> Result<()> {
        Ok(())
    }

    /// Frame `index` is the same picture as the frame before it in this segment (a dropped
    /// frame, a repeat from re-timing, a still shot): the pipeline gives it that frame's
    /// output and does not [`process`](FrameStage::process) it. A stage that follows the
    /// frames (flow fusion) moves its state on to `index`.
    fn repeat(&mut self, _index: u64) -> Result<()> {
        Ok(())
    }
}

/// What a [`PixelStage`] does to every pixel (`--frame-stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelOp {
    /// Passes frames through unchanged: used to re-encode and by the tests.
    Identity,
    /// Inverts every pixel (255 - v): a stage whose effect a test can check exactly.
    Invert,
}

impl FromStr for PixelOp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "identity" => Ok(PixelOp::Identity),
            "invert" => Ok(PixelOp::Invert),
            _ => Err(Error::Value(format!(
                "unknown --frame-stage `{s}` (identity or invert)"
            ))),
        }
    }
}

/// A stage of plain pixel arithmetic, for re-encoding and tests; `delay` slows every frame
/// down (a test interrupting a run mid-way), which makes it a stage that is not light.
pub struct PixelStage {
    pub op: PixelOp,
    pub delay: Duration,
}

impl PixelStage {
    pub fn new(op: PixelOp) -> Self {
        Self {
            op,
            delay: Duration::ZERO,
        }
    }
}

impl FrameStage for PixelStage {
    fn name(&self) -> &str {
        match self.op {
            PixelOp::Identity => "identity",
            PixelOp::Invert => "invert",
        }
    }
    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        (width, height)
    }
    fn fingerprint(&self) -> String {
        self.name().into()
    }
    fn light(&self) -> bool {
        self.delay.is_zero()
    }
    fn process(&mut self, mut frame: Frame, _index: u64) -> Result<Frame> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.op == PixelOp::Invert {
            frame.data.iter_mut().for_each(|v| *v = 255 - *v);
        }
        Ok(frame)
    }
}
