//! The temporal choices of a stylize run as independent axes, each in its own file with the
//! state it keeps: where self-attention takes its keys and values from ([`attention`]), how
//! the previous result is carried into the frame ([`fusion`]), which frames are diffused
//! ([`keyframes`]), where the noise comes from ([`noise`]), and whether frames are denoised
//! one by one or in windows ([`windows`]). [`Temporal::new`] applies the defaults and refuses
//! what cannot run together; the stage asks the axes for their warm-up frames, look-ahead and
//! per-step hooks. A new method is a new variant of one axis, in that axis's file; a published
//! method that spans two axes (Rerender-A-Video: [`Consistency::Rerender`]) is a variant of
//! each, its fusion's state in a file of its own ([`rerender`]).
pub mod attention;
pub mod fusion;
pub mod keyframes;
pub mod noise;
pub mod replay;
pub mod rerender;
pub mod windows;

use std::str::FromStr;

use candle_core::{Device, Tensor};

pub use attention::Attention;
pub use fusion::Fusion;
pub use keyframes::Frames;
pub use noise::Noise;
pub use rerender::RerenderFusion;
pub use windows::{AnimateDiffSettings, Denoising, MOTION_ADAPTER};

use crate::nets::sd::cross_frame::CrossFrameKeys;
use crate::nets::sd::feature_bank::{BankSettings, Keep};
use crate::sampling::img2img::{Img2ImgParams, StepHook};
use crate::sampling::noise::NoiseDraw;
use crate::temporal::fusion::FlowFusion;
use crate::{Error, Frame, Result};

/// `--consistency`: the named pairs of attention and fusion a user picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    None,
    CrossFrame,
    Flow,
    CrossFrameFlow,
    /// Rerender-A-Video: its attention and both its fusions.
    Rerender,
    /// StreamV2V: attention to a feature bank of earlier frames.
    Stream,
}

impl FromStr for Consistency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Consistency::None),
            "cross-frame" => Ok(Consistency::CrossFrame),
            "flow" => Ok(Consistency::Flow),
            "cross-frame+flow" => Ok(Consistency::CrossFrameFlow),
            "rerender" => Ok(Consistency::Rerender),
            "stream" => Ok(Consistency::Stream),
            _ => Err(Error::Value(format!(
                "unknown consistency `{s}` (none, cross-frame, flow, cross-frame+flow, rerender or stream)"
            ))),
        }
    }
}

impl std::fmt::Display for Consistency {
    /// As `--consistency` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consistency::None => "none",
            Consistency::CrossFrame => "cross-frame",
            Consistency::Flow => "flow",
            Consistency::CrossFrameFlow => "cross-frame+flow",
            Consistency::Rerender => "rerender",
            Consistency::Stream => "stream",
        })
    }
}

/// The temporal flags as a user gives them, before defaults.
#[derive(Debug, Clone)]
pub struct TemporalFlags {
    /// `--consistency`; `None`: the default for the other choices.
    pub consistency: Option<Consistency>,
    /// `--cross-frame-keys` (hidden).
    pub cross_frame_keys: CrossFrameKeys,
    /// `--flow-fusion STEPS,PIXEL` (hidden); `None`: the default shares.
    pub flow_fusion: Option<FlowFusion>,
    /// `--stream-bank` (hidden): how StreamV2V's bank keeps what enters it; `None`: merged.
    pub stream_bank: Option<Keep>,
    /// `--keyframe-every K`.
    pub keyframe_every: u64,
    /// `--noise`.
    pub noise: Noise,
    /// `--animatediff` with its adapter and windows.
    pub animatediff: Option<AnimateDiffSettings>,
    /// `--fast`: few steps, which picks the default consistency.
    pub fast: bool,
}

impl Default for TemporalFlags {
    fn default() -> Self {
        Self {
            consistency: None,
            cross_frame_keys: CrossFrameKeys::Anchor,
            flow_fusion: None,
            stream_bank: None,
            keyframe_every: 1,
            noise: Noise::Fixed,
            animatediff: None,
            fast: false,
        }
    }
}

/// What a run does across frames: one choice per axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Temporal {
    pub attention: Attention,
    pub fusion: Fusion,
    pub frames: Frames,
    pub noise: Noise,
    pub denoising: Denoising,
}

impl Default for Temporal {
    /// Every frame on its own, with the same noise.
    fn default() -> Self {
        Self {
            attention: Attention::Own,
            fusion: Fusion::None,
            frames: Frames::All,
            noise: Noise::Fixed,
            denoising: Denoising::OneByOne,
        }
    }
}

impl Temporal {
    /// The axes the flags ask for. Without `--consistency`: keyframes are diffused apart
    /// with the frames between carried by flow already, so cross-frame attention alone;
    /// AnimateDiff's motion modules do the work of the other modes, so none; under `--fast`
    /// StreamV2V's bank, made for few steps (flow fusion leaves the last step to the frame,
    /// so with one step it never fires); else cross-frame attention and flow fusion.
    pub fn new(flags: TemporalFlags) -> Result<Self> {
        let consistency = flags.consistency.unwrap_or(
            match (
                flags.animatediff.is_some(),
                flags.keyframe_every,
                flags.fast,
            ) {
                (true, _, _) => Consistency::None,
                (false, 1, true) => Consistency::Stream,
                (false, 1, false) => Consistency::CrossFrameFlow,
                (false, _, _) => Consistency::CrossFrame,
            },
        );
        let cross_frame = matches!(
            consistency,
            Consistency::CrossFrame | Consistency::CrossFrameFlow
        );
        let flow = matches!(consistency, Consistency::Flow | Consistency::CrossFrameFlow);
        let rerender = consistency == Consistency::Rerender;
        if flags.stream_bank.is_some() && consistency != Consistency::Stream {
            return Err(Error::Config(
                "--stream-bank sets StreamV2V's bank: it needs --consistency stream".into(),
            ));
        }
        let temporal = Self {
            attention: match consistency {
                _ if cross_frame => Attention::Anchor(flags.cross_frame_keys),
                _ if rerender => Attention::FirstAndPrevious,
                Consistency::Stream => {
                    let defaults = BankSettings::default();
                    Attention::Stream(BankSettings {
                        keep: flags.stream_bank.unwrap_or(defaults.keep),
                        ..defaults
                    })
                }
                _ => Attention::Own,
            },
            fusion: match (flow, rerender) {
                (true, _) => Fusion::Flow(flags.flow_fusion.unwrap_or_default()),
                (_, true) => Fusion::Rerender(RerenderFusion::default()),
                _ => Fusion::None,
            },
            frames: Frames::every(flags.keyframe_every)?,
            noise: flags.noise,
            denoising: match flags.animatediff {
                Some(a) => Denoising::Windows(a),
                None => Denoising::OneByOne,
            },
        };
        temporal.check()?;
        Ok(temporal)
    }

    /// Refuses the combinations that cannot run, with one clear error each.
    pub fn check(&self) -> Result<()> {
        if let Denoising::Windows(a) = &self.denoising {
            a.context.check(usize::MAX)?;
            let other = [
                (self.attention != Attention::Own, "cross-frame attention"),
                (self.fusion != Fusion::None, "flow fusion"),
                (self.frames != Frames::All, "--keyframe-every"),
                (self.noise == Noise::Warp, "--noise warp"),
            ];
            if let Some((_, what)) = other.iter().find(|(on, _)| *on) {
                return Err(Error::NotImplemented(format!(
                    "--animatediff together with {what} (AnimateDiff runs with --consistency none)"
                )));
            }
        }
        if self.frames != Frames::All && self.noise == Noise::Warp {
            return Err(Error::NotImplemented(
                "keyframes with warped noise (--keyframe-every with --noise warp)".into(),
            ));
        }
        if self.frames != Frames::All && matches!(self.fusion, Fusion::Flow(_)) {
            return Err(Error::NotImplemented(
                "keyframes with flow-guided fusion (--keyframe-every with --consistency flow or cross-frame+flow)".into(),
            ));
        }
        let rerender_fusion = matches!(self.fusion, Fusion::Rerender(_));
        if rerender_fusion != (self.attention == Attention::FirstAndPrevious) {
            return Err(Error::Config(
                "Rerender-A-Video's fusion and its attention (first and previous frame) go together".into(),
            ));
        }
        Ok(())
    }
}

/// What the temporal axes ask of the model side of the stage.
pub(crate) trait Diffuse {
    /// Frame `index` encoded, noised and denoised, `hook` seeing every step. Returns the
    /// final latents.
    fn denoise(&mut self, frame: &Frame, index: u64, hook: &mut dyn StepHook) -> Result<Tensor>;

    /// Final latents as an image `[1, 3, H, W]` in [0, 1].
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;

    /// Latents as the VAE decodes them: `[1, 3, H, W]`, about [−1, 1], not clamped.
    fn decode_raw(&self, latents: &Tensor) -> Result<Tensor>;

    /// `image` `[1, 3, H, W]` in [−1, 1] encoded to latents with frame `index`'s draw `draw`.
    fn encode(
        &mut self,
        frame: &Frame,
        index: u64,
        image: &Tensor,
        draw: NoiseDraw,
    ) -> Result<Tensor>;

    /// What the frames are denoised with.
    fn params(&self) -> Result<Img2ImgParams>;

    /// Where the model runs.
    fn device(&self) -> Result<Device>;

    /// Pixels per latent along a side.
    fn latent_scale(&self) -> Result<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::animate::{ContextOptions, Fuse};
    use crate::weights::ModelSource;

    fn animatediff() -> AnimateDiffSettings {
        AnimateDiffSettings {
            adapter: ModelSource::Hub(MOTION_ADAPTER.into()),
            context: ContextOptions {
                length: 16,
                overlap: 4,
                fuse: Fuse::Pyramid,
            },
        }
    }

    #[test]
    fn defaults_follow_the_other_choices() {
        let t = Temporal::new(TemporalFlags::default()).unwrap();
        assert_eq!(t.attention, Attention::Anchor(CrossFrameKeys::Anchor));
        assert_eq!(t.fusion, Fusion::Flow(FlowFusion::default()));
        assert_eq!((t.frames, t.noise), (Frames::All, Noise::Fixed));
        let fast = Temporal::new(TemporalFlags {
            fast: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (fast.attention, fast.fusion),
            (Attention::Stream(BankSettings::default()), Fusion::None)
        );
        let keyframes = Temporal::new(TemporalFlags {
            keyframe_every: 4,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(keyframes.frames, Frames::Keyframes(4));
        assert_eq!(keyframes.fusion, Fusion::None);
        assert_ne!(keyframes.attention, Attention::Own);
        let windows = Temporal::new(TemporalFlags {
            animatediff: Some(animatediff()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (windows.attention, windows.fusion),
            (Attention::Own, Fusion::None)
        );
        assert_eq!(windows.denoising, Denoising::Windows(animatediff()));
    }

    #[test]
    fn combinations_that_cannot_run_are_refused_one_way_each() {
        let refused = |flags: TemporalFlags, says: &str| {
            let e = Temporal::new(flags).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        let flow = Some(Consistency::Flow);
        refused(
            TemporalFlags {
                consistency: flow,
                animatediff: Some(animatediff()),
                ..Default::default()
            },
            "--animatediff together with flow fusion",
        );
        refused(
            TemporalFlags {
                consistency: flow,
                keyframe_every: 3,
                ..Default::default()
            },
            "keyframes with flow-guided fusion",
        );
        refused(
            TemporalFlags {
                noise: Noise::Warp,
                animatediff: Some(animatediff()),
                ..Default::default()
            },
            "--animatediff together with --noise warp",
        );
        refused(
            TemporalFlags {
                noise: Noise::Warp,
                keyframe_every: 3,
                ..Default::default()
            },
            "keyframes with warped noise",
        );
        refused(
            TemporalFlags {
                consistency: flow,
                stream_bank: Some(Keep::Fifo(2)),
                ..Default::default()
            },
            "it needs --consistency stream",
        );
        refused(
            TemporalFlags {
                keyframe_every: 0,
                ..Default::default()
            },
            "at least 1",
        );
        let e = "wobbly".parse::<Consistency>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown consistency `wobbly` (none, cross-frame, flow, cross-frame+flow, rerender or stream)"
        );
    }
}
