//! Where a frame's self-attention takes its keys and values from: its own tokens, or also
//! those of an anchor frame (cross-frame attention, Text2Video-Zero; the mechanism is
//! [`crate::nets::sd::cross_frame`]). The anchor's tokens are recorded by its own denoising
//! pass and kept across segments, since every segment attends to the same frame.

use crate::nets::sd::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor};
use crate::{Error, Result};

/// The frame every other frame attends to under cross-frame attention.
pub const ANCHOR_FRAME: u64 = 0;

/// Where self-attention takes its keys and values from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// The frame's own tokens: every frame on its own.
    Own,
    /// The anchor frame's tokens (`--consistency cross-frame`), which ones by the keys.
    Anchor(CrossFrameKeys),
}

impl std::fmt::Display for Attention {
    /// As the fingerprint has it: `none`, `anchor`, `anchor+self`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attention::Own => f.write_str("none"),
            Attention::Anchor(keys) => write!(f, "{keys}"),
        }
    }
}

/// The attention axis at run time: the anchor's recorded tokens.
pub(crate) struct AttentionState {
    choice: Attention,
    bank: AnchorBank,
}

impl AttentionState {
    pub fn new(choice: Attention) -> Self {
        Self {
            choice,
            bank: AnchorBank::default(),
        }
    }

    /// A new input: its own anchor.
    pub fn restart(&mut self) {
        self.bank = AnchorBank::default();
    }

    /// The anchor, before a segment that starts after it, unless it is held.
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        if matches!(self.choice, Attention::Anchor(_))
            && start > ANCHOR_FRAME
            && self.bank.is_empty()
        {
            frames.push(ANCHOR_FRAME);
        }
    }

    /// What the self-attention layers of frame `index`'s denoising do.
    pub fn frame(&mut self, index: u64) -> Result<FrameAnchor<'_>> {
        Ok(match self.choice {
            Attention::Own => FrameAnchor::Independent,
            Attention::Anchor(_) if index == ANCHOR_FRAME => FrameAnchor::Record(&mut self.bank),
            Attention::Anchor(_) if self.bank.is_empty() => {
                return Err(Error::Model(format!(
                    "stylize: frame {index} needs the anchor frame {ANCHOR_FRAME}, which was not rendered first"
                )))
            }
            Attention::Anchor(keys) => FrameAnchor::Attend(&self.bank, keys),
        })
    }

    /// After frame `index`'s denoising.
    pub fn denoised(&self, index: u64) {
        if index == ANCHOR_FRAME && self.choice != Attention::Own {
            tracing::debug!(
                "anchor frame recorded: {} MB of self-attention tokens",
                self.bank.bytes() >> 20
            );
        }
    }
}
