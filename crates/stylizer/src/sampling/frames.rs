//! Frame stacks restyled in order as the stylize stage does it frame by frame, on their own,
//! with cross-frame attention ([`crate::nets::sd::cross_frame`]) or with StreamV2V's feature
//! bank ([`crate::nets::sd::feature_bank`]): the replay of reference runs.

use candle_core::Tensor;

use crate::nets::sd::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor};
use crate::nets::sd::feature_bank::{BankDraws, BankSettings, FeatureBank};
use crate::sampling::img2img::{decode, denoise, Control, Img2ImgModel, Img2ImgParams};
use crate::sampling::noise::NoiseSource;
use crate::sampling::schedulers::SchedulerConfig;
use crate::NoProgress;

/// What a frame attends to besides itself.
pub enum Across<'a> {
    Nothing,
    /// Frame 0, the anchor.
    Anchor(CrossFrameKeys),
    /// The feature bank the frames before fed, its merges drawn (or replayed) by these draws.
    Stream(BankSettings, &'a mut dyn BankDraws),
}

/// Restyles a stack of frames `[F, 3, H, W]` (in [-1, 1]) in order, as the stylize stage does
/// frame by frame, attending `across` frames. `noise(f)` supplies frame `f`'s random draws.
/// Returns the final latents `[F, 4, h, w]` and the images `[F, 3, H, W]` in [0, 1]; for
/// replays of reference runs.
#[allow(clippy::too_many_arguments)]
pub fn img2img_frames(
    model: &dyn Img2ImgModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    frames: &Tensor,
    mut across: Across,
    noise: &mut dyn FnMut(usize) -> crate::Result<Box<dyn NoiseSource>>,
) -> crate::Result<(Tensor, Tensor)> {
    let mut bank = AnchorBank::default();
    let mut features = match &across {
        Across::Stream(settings, _) => FeatureBank::new(*settings),
        _ => FeatureBank::new(BankSettings::default()),
    };
    let (mut latents, mut images) = (Vec::new(), Vec::new());
    for f in 0..frames.dim(0)? {
        let anchor = match &mut across {
            Across::Nothing => FrameAnchor::Independent,
            Across::Anchor(_) if f == 0 => FrameAnchor::Record(&mut bank),
            Across::Anchor(keys) => FrameAnchor::Attend(&bank, *keys),
            Across::Stream(_, draws) => FrameAnchor::Stream {
                bank: &mut features,
                draws: &mut **draws,
                frame: f as u64,
            },
        };
        let l = denoise(
            model,
            scheduler_config,
            params,
            text,
            &frames.narrow(0, f, 1)?,
            &Control::default(),
            anchor,
            noise(f)?.as_mut(),
            &mut NoProgress,
            &mut (),
        )?;
        images.push(decode(model, &l)?);
        latents.push(l);
    }
    Ok((Tensor::cat(&latents, 0)?, Tensor::cat(&images, 0)?))
}
