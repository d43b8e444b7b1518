//! How the previous result is carried into the frame: not at all, or along the source's
//! optical flow (`--consistency flow`): the previous frame's latents after every denoising
//! step are warped into the current frame's after the same step, and its decoded pixels into
//! the decoded frame, occluded pixels left fresh ([`crate::temporal::fusion`]). The chain
//! restarts at every segment from a look-back frame rendered on its own, so a segment's
//! frames never depend on where the run started.

use candle_core::Tensor;

use super::Diffuse;
use crate::frame::interleaved;
use crate::temporal::flow::{DisParams, Gray};
use crate::temporal::fusion::{FrameMotion, FusionWeights, FUSION_FLOW};
use crate::{Frame, Result};

/// How the previous result is carried into the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Every frame keeps its own result.
    None,
    /// Along the flow, latents and pixels blended by these weights.
    Flow(FusionWeights),
}

impl std::fmt::Display for Fusion {
    /// As the fingerprint has it: `none`, or the weights.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fusion::None => f.write_str("none"),
            Fusion::Flow(weights) => write!(f, "{weights}"),
        }
    }
}

/// What flow-guided fusion keeps of the frame rendered last.
struct Previous {
    index: u64,
    /// The original frame's luminance, to measure motion from.
    gray: Gray,
    /// The (fused) latents after every denoising step.
    steps: Vec<Tensor>,
    /// The (fused) image, RGB interleaved in [0, 1].
    image: Vec<f32>,
}

/// The fusion axis at run time: the frame rendered last.
pub(crate) struct FusionState {
    choice: Fusion,
    previous: Option<Previous>,
}

impl FusionState {
    pub fn new(choice: Fusion) -> Self {
        Self {
            choice,
            previous: None,
        }
    }

    /// The next frame starts a chain of its own (a segment's start, a warm-up frame).
    pub fn restart(&mut self) {
        self.previous = None;
    }

    /// A warm-up frame is rendered whole: it starts the chain.
    pub fn renders_warm_up(&self) -> bool {
        self.choice != Fusion::None
    }

    /// The frame before a segment's first, which its first frame is fused with.
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        if self.choice != Fusion::None && start > 0 && frames.last() != Some(&(start - 1)) {
            frames.push(start - 1);
        }
    }

    /// The same picture again: the chain goes on from it (zero motion).
    pub fn repeat(&mut self, index: u64) {
        if let Some(p) = self.previous.as_mut() {
            if p.index + 1 == index {
                p.index = index;
            }
        }
    }

    /// Restyles frame `index` with `model`, fusing it with the frame before.
    pub fn render(&mut self, frame: &Frame, index: u64, model: &mut dyn Diffuse) -> Result<Frame> {
        let Fusion::Flow(weights) = self.choice else {
            let latents = model.denoise(frame, index, &mut |_, latents| Ok(latents))?;
            return Frame::from_tensor(&model.decode(&latents)?);
        };
        let (w, h) = (frame.width as usize, frame.height as usize);
        let gray = Gray::from_rgb(w, h, &frame.data);
        let previous = self.previous.take().filter(|p| p.index + 1 == index);
        let motion = previous
            .as_ref()
            .map(|p| FrameMotion::between(&p.gray, &gray, &DisParams::preset(FUSION_FLOW)));
        let factor = model.latent_scale()?;
        let latent_motion = motion.as_ref().map(|m| m.downscale(factor));
        let fusion = previous
            .as_ref()
            .zip(latent_motion.as_ref())
            .map(|(p, m)| LatentFusion {
                motion: m,
                steps: &p.steps,
                weight: weights.latent,
            });
        let mut steps = Vec::new();
        let latents = model.denoise(frame, index, &mut |i, latents| {
            let latents = match &fusion {
                Some(f) if i < f.steps.len() => f.fuse(&latents, &f.steps[i])?,
                _ => latents,
            };
            steps.push(latents.clone());
            Ok(latents)
        })?;
        let mut image = interleaved(&model.decode(&latents)?.squeeze(0)?)?;
        if let (Some(p), Some(m)) = (&previous, &motion) {
            m.fuse(&mut image, &p.image, 3, weights.pixel);
        }
        let out = Frame::from_unit_rgb(frame.width, frame.height, &image);
        self.previous = Some(Previous {
            index,
            gray,
            steps,
            image,
        });
        Ok(out)
    }
}

/// Blends the previous frame's latents after the same step into the current ones.
struct LatentFusion<'a> {
    /// The motion on the latent grid.
    motion: &'a FrameMotion,
    steps: &'a [Tensor],
    weight: f32,
}

impl LatentFusion<'_> {
    fn fuse(&self, latents: &Tensor, previous: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = latents.dims4()?;
        let mut current = interleaved(&latents.squeeze(0)?)?;
        self.motion.fuse(
            &mut current,
            &interleaved(&previous.squeeze(0)?)?,
            c,
            self.weight,
        );
        Ok(Tensor::from_vec(current, (h, w, c), latents.device())?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?)
    }
}
