//! Frame stacks restyled in order as the stylize stage does it frame by frame, with or without
//! cross-frame attention ([`crate::nets::sd::cross_frame`]): the replay of batched references.

use candle_core::Tensor;

use crate::nets::sd::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor};
use crate::sampling::img2img::{decode, denoise, Control, Img2ImgModel, Img2ImgParams};
use crate::sampling::noise::NoiseSource;
use crate::sampling::schedulers::SchedulerConfig;
use crate::NoProgress;

/// Restyles a stack of frames `[F, 3, H, W]` (in [-1, 1]) in order, as the stylize stage does
/// frame by frame: with `keys`, frame 0 is the anchor the others attend to; without, every
/// frame on its own. `noise(f)` supplies frame `f`'s random draws. Returns the final latents
/// `[F, 4, h, w]` and the images `[F, 3, H, W]` in [0, 1]; for replays of batched references.
#[allow(clippy::too_many_arguments)]
pub fn img2img_frames(
    model: &dyn Img2ImgModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    frames: &Tensor,
    keys: Option<CrossFrameKeys>,
    noise: &mut dyn FnMut(usize) -> crate::Result<Box<dyn NoiseSource>>,
) -> crate::Result<(Tensor, Tensor)> {
    let mut bank = AnchorBank::default();
    let (mut latents, mut images) = (Vec::new(), Vec::new());
    for f in 0..frames.dim(0)? {
        let anchor = match keys {
            None => FrameAnchor::Independent,
            Some(_) if f == 0 => FrameAnchor::Record(&mut bank),
            Some(keys) => FrameAnchor::Attend(&bank, keys),
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
