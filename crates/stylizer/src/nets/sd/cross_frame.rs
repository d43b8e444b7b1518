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
//!
//! Rerender-A-Video (Yang et al. 2023; diffusers `examples/community/rerender_a_video.py`,
//! `CrossFrameAttnProcessor` on the processors whose name starts with `up`) attends in the
//! decoder only, to the first frame's and the previous frame's tokens of the same step and
//! not to the frame's own ([`FrameAnchor::FirstAndPrevious`]); the UNet says which block it
//! enters ([`SelfAttention::enter`]).
//!
//! StreamV2V attends to a bank of earlier keys and values besides the frame's own, kept and
//! blended into the outputs as [`crate::nets::sd::feature_bank`] describes
//! ([`FrameAnchor::Stream`]).

use candle_core::{bail, Result, Tensor};

use crate::nets::sd::feature_bank::{BankCall, BankDraws, Block, FeatureBank};

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

    /// The recorded layers of step `i`.
    fn step(&self, i: usize) -> Result<&[Tensor]> {
        match self.steps.get(i) {
            Some(layers) => Ok(layers),
            None => bail!(
                "the first or previous frame has {} denoising steps recorded, step {i} was asked for",
                self.steps.len()
            ),
        }
    }

    /// The layers of step `i` about to be recorded (a recording starts again at step 0).
    fn start_step(&mut self, i: usize) -> Result<&mut Vec<Tensor>> {
        if i == 0 {
            self.steps.clear();
        }
        if self.steps.len() != i {
            bail!(
                "anchor recording: step {i} after {} steps",
                self.steps.len()
            );
        }
        self.steps.push(Vec::new());
        Ok(self.steps.last_mut().expect("just pushed"))
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
    /// Plain self-attention, recording the decoder's tokens into an (emptied) bank: the
    /// first frame under Rerender-A-Video.
    RecordDecoder(&'a mut AnchorBank),
    /// Rerender-A-Video's later frames: the decoder's self-attention takes its keys and values
    /// from the first and the previous frame's decoder tokens of the same step, and records
    /// the frame's own into `record` for the frame after it.
    FirstAndPrevious {
        first: &'a AnchorBank,
        previous: &'a AnchorBank,
        record: &'a mut AnchorBank,
    },
    /// StreamV2V: the frame `frame` attends to the feature bank as well, and feeds it.
    Stream {
        bank: &'a mut FeatureBank,
        draws: &'a mut dyn BankDraws,
        frame: u64,
    },
}

impl FrameAnchor<'_> {
    /// The self-attention behaviour of denoising step `i` (0 = the first step that runs).
    pub fn step(&mut self, i: usize) -> Result<SelfAttention<'_>> {
        Ok(match self {
            FrameAnchor::Independent => SelfAttention::Own,
            FrameAnchor::Record(bank) => SelfAttention::Record(bank.start_step(i)?),
            FrameAnchor::RecordDecoder(bank) => SelfAttention::RecordDecoder {
                record: bank.start_step(i)?,
                decoder: false,
            },
            FrameAnchor::FirstAndPrevious {
                first,
                previous,
                record,
            } => SelfAttention::FirstAndPrevious {
                first: first.step(i)?,
                previous: previous.step(i)?,
                record: record.start_step(i)?,
                decoder: false,
            },
            FrameAnchor::Stream { bank, draws, frame } => {
                SelfAttention::Stream(bank.call(*draws, *frame, i))
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
    /// Plain; the decoder's tokens recorded.
    RecordDecoder {
        record: &'a mut Vec<Tensor>,
        decoder: bool,
    },
    /// Plain outside the decoder; in it, keys and values from the first and the previous
    /// frame, the own tokens recorded (their count is the next layer's index).
    FirstAndPrevious {
        first: &'a [Tensor],
        previous: &'a [Tensor],
        record: &'a mut Vec<Tensor>,
        decoder: bool,
    },
    /// Keys and values from the frame and the feature bank; the bank fed and, in some blocks,
    /// blended into the outputs.
    Stream(BankCall<'a>),
}

impl<'a> SelfAttention<'a> {
    /// The feature bank, where the layers attend to one.
    pub fn bank(&mut self) -> Option<&mut BankCall<'a>> {
        match self {
            SelfAttention::Stream(call) => Some(call),
            _ => None,
        }
    }
}

impl SelfAttention<'_> {
    /// The UNet enters `block`: the up blocks are the decoder.
    pub fn enter(&mut self, block: Block) {
        match self {
            SelfAttention::RecordDecoder { decoder, .. }
            | SelfAttention::FirstAndPrevious { decoder, .. } => {
                *decoder = matches!(block, Block::Up(_))
            }
            SelfAttention::Stream(call) => call.enter(block),
            _ => {}
        }
    }

    /// The context the next self-attention layer projects keys and values from, given its
    /// own input `tokens`: `None` means the tokens themselves.
    pub fn context(&mut self, tokens: &Tensor) -> Result<Option<Tensor>> {
        match self {
            SelfAttention::Own | SelfAttention::Stream(_) => Ok(None),
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
            SelfAttention::RecordDecoder { record, decoder } => {
                if *decoder {
                    record.push(tokens.clone());
                }
                Ok(None)
            }
            SelfAttention::FirstAndPrevious {
                first,
                previous,
                record,
                decoder,
            } => {
                if !*decoder {
                    return Ok(None);
                }
                let k = record.len();
                let (Some(a), Some(b)) = (first.get(k), previous.get(k)) else {
                    bail!(
                        "the first and previous frames recorded {} and {} decoder self-attention layers, the UNet has more",
                        first.len(),
                        previous.len()
                    )
                };
                if a.dims() != tokens.dims() || b.dims() != tokens.dims() {
                    bail!(
                        "first/previous tokens {:?}/{:?} do not match the frame's {:?} (frame size or guidance changed)",
                        a.dims(),
                        b.dims(),
                        tokens.dims()
                    );
                }
                record.push(tokens.clone());
                Ok(Some(Tensor::cat(&[a, b], 1)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn tokens(v: f32) -> Tensor {
        Tensor::full(v, (2, 3, 4), &Device::Cpu).unwrap()
    }

    /// A UNet call with two encoder layers and two decoder layers, the inputs `base + layer`.
    fn unet_call(frames: &mut SelfAttention, base: f32) -> Vec<Option<Tensor>> {
        let mut contexts = Vec::new();
        for layer in 0..4 {
            frames.enter(match layer {
                0 | 1 => Block::Down(layer),
                _ => Block::Up(layer - 2),
            });
            contexts.push(frames.context(&tokens(base + layer as f32)).unwrap());
        }
        contexts
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn rerender_attends_in_the_decoder_to_the_first_and_previous_frames_only() {
        // The first frame: plain attention, its decoder layers recorded.
        let mut first = AnchorBank::default();
        let contexts = unet_call(
            &mut FrameAnchor::RecordDecoder(&mut first).step(0).unwrap(),
            0.0,
        );
        assert!(contexts.iter().all(Option::is_none));
        assert_eq!(first.steps.len(), 1);
        assert_eq!(
            first.steps[0].len(),
            2,
            "only the decoder's layers are kept"
        );
        assert_eq!(values(&first.steps[0][0])[0], 2.0);

        // A later frame whose previous is the first: the decoder's keys are [first, first];
        // its own decoder tokens are recorded for the frame after it.
        let mut own = AnchorBank::default();
        let mut anchor = FrameAnchor::FirstAndPrevious {
            first: &first,
            previous: &first,
            record: &mut own,
        };
        let contexts = unet_call(&mut anchor.step(0).unwrap(), 10.0);
        assert!(
            contexts[0].is_none() && contexts[1].is_none(),
            "the encoder attends to itself"
        );
        let keys = contexts[3].as_ref().unwrap();
        assert_eq!(
            keys.dims(),
            &[2, 6, 4],
            "first and previous, not the frame's own"
        );
        assert!(values(keys).iter().all(|&v| v == 3.0));
        assert_eq!(values(&own.steps[0][1])[0], 13.0);

        // The frame after: the previous is that frame, and a step never recorded is an error.
        let mut next = AnchorBank::default();
        let mut anchor = FrameAnchor::FirstAndPrevious {
            first: &first,
            previous: &own,
            record: &mut next,
        };
        let keys = unet_call(&mut anchor.step(0).unwrap(), 20.0)[2]
            .clone()
            .unwrap();
        let v = values(&keys);
        assert_eq!((v[0], v[v.len() - 1]), (2.0, 12.0));
        assert!(anchor.step(1).is_err());
    }
}
