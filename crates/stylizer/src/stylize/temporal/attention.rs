//! Where a frame's self-attention takes its keys and values from: its own tokens, or also
//! those of an anchor frame (cross-frame attention, Text2Video-Zero; the mechanism is
//! [`crate::nets::sd::cross_frame`]). The anchor's tokens are recorded by its own denoising
//! pass and kept across segments, since every segment attends to the same frame. Or, as
//! Rerender-A-Video, the decoder's layers attend to the first frame and the frame rendered
//! before (not to the frame itself). Or, as StreamV2V, to a bank the frames before fed
//! ([`crate::nets::sd::feature_bank`]): a chain, started again at every segment from the frame
//! rendered before it, as flow fusion's is.

use crate::nets::sd::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor};
use crate::nets::sd::feature_bank::{BankSettings, FeatureBank};
use crate::sampling::noise::SeededMerges;
use crate::sd::model::SdModel;
use crate::sd::vram::self_attention_values;
use crate::{Error, Result};

/// The frame every other frame attends to under cross-frame attention.
pub const ANCHOR_FRAME: u64 = 0;

/// Where self-attention takes its keys and values from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attention {
    /// The frame's own tokens: every frame on its own.
    Own,
    /// The anchor frame's tokens (`--consistency cross-frame`), which ones by the keys.
    Anchor(CrossFrameKeys),
    /// In the decoder, the first frame's and the previous frame's tokens, not the frame's own
    /// (`--consistency rerender`).
    FirstAndPrevious,
    /// StreamV2V's feature bank (`--consistency stream`).
    Stream(BankSettings),
}

impl std::fmt::Display for Attention {
    /// As the fingerprint has it: `none`, `anchor`, `anchor+self`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attention::Own => f.write_str("none"),
            Attention::Anchor(keys) => write!(f, "{keys}"),
            Attention::FirstAndPrevious => f.write_str("first+previous"),
            Attention::Stream(bank) => write!(f, "{bank}"),
        }
    }
}

/// The attention axis at run time: the anchor's (the first frame's) recorded tokens, and
/// under [`Attention::FirstAndPrevious`] those of the frame rendered last.
pub(crate) struct AttentionState {
    choice: Attention,
    bank: AnchorBank,
    /// The tokens of the frame rendered last; `None`: the chain starts again, from the first.
    previous: Option<AnchorBank>,
    /// The frame being rendered and its tokens: a frame rendered twice (Rerender's second
    /// pass) keeps those of its last pass.
    current: Option<(u64, AnchorBank)>,
    /// StreamV2V's bank and the order its merges take.
    stream: Option<(FeatureBank, SeededMerges)>,
}

impl AttentionState {
    pub fn new(choice: Attention, seed: u64) -> Self {
        Self {
            choice,
            bank: AnchorBank::default(),
            previous: None,
            current: None,
            stream: match choice {
                Attention::Stream(settings) => {
                    Some((FeatureBank::new(settings), SeededMerges::new(seed)))
                }
                _ => None,
            },
        }
    }

    /// A new input: its own anchor.
    pub fn restart(&mut self) {
        self.bank = AnchorBank::default();
        self.restart_chain();
    }

    /// The next frame follows the first frame directly (a segment's start, a look-back frame),
    /// so that its result does not depend on where the run started.
    pub fn restart_chain(&mut self) {
        self.previous = None;
        self.current = None;
        if let Some((bank, _)) = self.stream.as_mut() {
            bank.clear();
        }
    }

    /// Whether a frame's attention depends on the frames rendered just before it (a chain,
    /// started again at every segment), not only on a fixed anchor.
    pub fn chains(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether the frames attend to the anchor frame's recorded tokens.
    fn anchored(&self) -> bool {
        matches!(
            self.choice,
            Attention::Anchor(_) | Attention::FirstAndPrevious
        )
    }

    /// The anchor, before a segment that starts after it, unless it is held.
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        if self.anchored() && start > ANCHOR_FRAME && self.bank.is_empty() {
            frames.push(ANCHOR_FRAME);
        }
    }

    /// What the self-attention layers of frame `index`'s denoising do.
    pub fn frame(&mut self, index: u64) -> Result<FrameAnchor<'_>> {
        if self.anchored() && index != ANCHOR_FRAME && self.bank.is_empty() {
            return Err(Error::Model(format!(
                "stylize: frame {index} needs the anchor frame {ANCHOR_FRAME}, which was not rendered first"
            )));
        }
        Ok(match self.choice {
            Attention::Own => FrameAnchor::Independent,
            Attention::Stream(_) => {
                let (bank, draws) = self.stream.as_mut().expect("made with the choice");
                FrameAnchor::Stream {
                    bank,
                    draws,
                    frame: index,
                }
            }
            Attention::Anchor(_) if index == ANCHOR_FRAME => FrameAnchor::Record(&mut self.bank),
            Attention::Anchor(keys) => FrameAnchor::Attend(&self.bank, keys),
            Attention::FirstAndPrevious if index == ANCHOR_FRAME => {
                self.restart_chain();
                FrameAnchor::RecordDecoder(&mut self.bank)
            }
            Attention::FirstAndPrevious => {
                // A new frame: the one rendered before it becomes the previous.
                if let Some((done, bank)) = self.current.take() {
                    match done == index {
                        true => self.current = Some((done, bank)),
                        false => self.previous = Some(bank),
                    }
                }
                let (_, record) = self
                    .current
                    .get_or_insert_with(|| (index, AnchorBank::default()));
                FrameAnchor::FirstAndPrevious {
                    first: &self.bank,
                    previous: self.previous.as_ref().unwrap_or(&self.bank),
                    record,
                }
            }
        })
    }

    /// The most the banks hold on `model`'s device for `width`×`height` frames, `batch`
    /// latents per UNet call and `steps` steps that run: the anchor's input tokens of every
    /// step and layer; Rerender-A-Video's three decoder banks (first, previous, current);
    /// StreamV2V's keys, values and outputs of one call per layer.
    pub fn held_bytes(
        &self,
        model: &SdModel,
        (width, height): (usize, usize),
        batch: usize,
        steps: usize,
    ) -> u64 {
        let f = model.vae_scale_factor();
        let latent = (height / f, width / f);
        let values = |decoder| self_attention_values(model.unet_config(), latent, decoder);
        let held = match self.choice {
            Attention::Own => 0,
            Attention::Anchor(_) => steps as u64 * values(false),
            Attention::FirstAndPrevious => 3 * steps as u64 * values(true),
            Attention::Stream(_) => 3 * values(false),
        };
        held * batch as u64 * model.dtype().size_in_bytes() as u64
    }

    /// After frame `index`'s denoising.
    pub fn denoised(&self, index: u64) {
        if let Some((bank, _)) = &self.stream {
            tracing::debug!(
                "frame {index}: feature bank {} MB, {} tokens injected so far",
                bank.bytes() >> 20,
                bank.injected()
            );
        } else if index == ANCHOR_FRAME && self.anchored() {
            tracing::debug!(
                "anchor frame recorded: {} MB of self-attention tokens",
                self.bank.bytes() >> 20
            );
        }
    }
}
