//! Cross-frame attention: every frame's UNet self-attention also looks at an anchor frame, so
//! that textures and colours are drawn from one shared source instead of being invented anew
//! on every frame. "Text2Video-Zero", Khachatryan et al. 2023 (arXiv:2303.13439), section 3.3;
//! diffusers `pipelines/text_to_video_synthesis/pipeline_text_to_video_zero.py`
//! (`CrossFrameAttnProcessor`: self-attention keys and values from frame 0, cross-attention on
//! the text unchanged).
//!
//! diffusers runs all frames in one batch. Here frames come one at a time, so the anchor's
//! pass records the tokens that enter each self-attention layer (after `norm1`) at each
//! denoising step, and every later frame projects its keys and values from the recorded
//! tokens of the same step and layer. The anchor itself attends only to itself, so its result
//! does not depend on any other frame: a resumed or split render rebuilds the same bank by
//! running the anchor's denoising pass again.

use candle_core::{bail, Result, Tensor};

/// Which tokens a frame's self-attention takes its keys and values from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossFrameKeys {
    /// The anchor's alone (diffusers' `CrossFrameAttnProcessor`).
    Anchor,
    /// The anchor's followed by the frame's own: the frame can keep details the anchor lacks.
    /// For the anchor itself this equals plain self-attention (the same tokens twice give
    /// the same softmax weights, halved).
    AnchorAndSelf,
}

impl std::fmt::Display for CrossFrameKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CrossFrameKeys::Anchor => "anchor",
            CrossFrameKeys::AnchorAndSelf => "anchor+self",
        })
    }
}

impl std::str::FromStr for CrossFrameKeys {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "anchor" => Ok(CrossFrameKeys::Anchor),
            "anchor+self" => Ok(CrossFrameKeys::AnchorAndSelf),
            _ => Err(crate::Error::Value(format!(
                "unknown cross-frame keys `{s}` (anchor or anchor+self)"
            ))),
        }
    }
}

/// The anchor frame's self-attention input tokens `[batch, h·w, channels]`, per denoising step
/// and per self-attention layer in the order the UNet runs them.
#[derive(Default)]
pub struct AnchorBank {
    steps: Vec<Vec<Tensor>>,
}

impl AnchorBank {
    /// Whether an anchor pass has been recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Bytes held (for logs: the bank is the memory cost of cross-frame attention).
    pub fn bytes(&self) -> usize {
        self.steps
            .iter()
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// What the self-attention layers of one frame's denoising do.
pub enum FrameAnchor<'a> {
    /// Plain self-attention: every frame on its own.
    Independent,
    /// Plain self-attention, recording the anchor's tokens into an (emptied) bank.
    Record(&'a mut AnchorBank),
    /// Attend to a recorded anchor.
    Attend(&'a AnchorBank, CrossFrameKeys),
}

impl FrameAnchor<'_> {
    /// The self-attention behaviour of denoising step `i` (0 = the first step that runs).
    pub fn step(&mut self, i: usize) -> Result<SelfAttention<'_>> {
        Ok(match self {
            FrameAnchor::Independent => SelfAttention::Own,
            FrameAnchor::Record(bank) => {
                if i == 0 {
                    bank.steps.clear();
                }
                if bank.steps.len() != i {
                    bail!(
                        "anchor recording: step {i} after {} steps",
                        bank.steps.len()
                    );
                }
                bank.steps.push(Vec::new());
                SelfAttention::Record(bank.steps.last_mut().expect("just pushed"))
            }
            FrameAnchor::Attend(bank, keys) => match bank.steps.get(i) {
                Some(layers) => SelfAttention::Attend {
                    anchor: layers,
                    keys: *keys,
                    next: 0,
                },
                None => bail!(
                    "the anchor frame has {} denoising steps recorded, step {i} was asked for",
                    bank.steps.len()
                ),
            },
        })
    }
}

/// What one UNet call does in its self-attention layers.
pub enum SelfAttention<'a> {
    Own,
    Record(&'a mut Vec<Tensor>),
    Attend {
        anchor: &'a [Tensor],
        keys: CrossFrameKeys,
        next: usize,
    },
}

impl SelfAttention<'_> {
    /// The context the next self-attention layer projects keys and values from, given its
    /// own input `tokens`: `None` means the tokens themselves.
    pub fn context(&mut self, tokens: &Tensor) -> Result<Option<Tensor>> {
        match self {
            SelfAttention::Own => Ok(None),
            SelfAttention::Record(layers) => {
                layers.push(tokens.clone());
                Ok(None)
            }
            SelfAttention::Attend { anchor, keys, next } => {
                let Some(a) = anchor.get(*next) else {
                    bail!(
                        "the anchor frame recorded {} self-attention layers, the UNet has more",
                        anchor.len()
                    )
                };
                *next += 1;
                if a.dims() != tokens.dims() {
                    bail!(
                        "anchor tokens {:?} do not match the frame's {:?} (frame size or guidance changed)",
                        a.dims(),
                        tokens.dims()
                    );
                }
                Ok(Some(match keys {
                    CrossFrameKeys::Anchor => a.clone(),
                    CrossFrameKeys::AnchorAndSelf => Tensor::cat(&[a, tokens], 1)?,
                }))
            }
        }
    }
}
