//! A clip restyled under Rerender-A-Video through the stylize stage's own fusion and attention
//! state, with the model side given the replay's ControlNet inputs, draws and flows: the replay
//! of the reference pipeline, which runs a whole clip (`tests/parity/rerender.rs`).

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};

use super::attention::{Attention, AttentionState};
use super::fusion::{Fusion, FusionState};
use super::rerender::{PairFlows, RerenderFusion};
use super::Diffuse;
use crate::sampling::img2img::{
    decode, decode_raw, denoise, encode, Control, Img2ImgParams, StepHook,
};
use crate::sampling::noise::{NoiseDraw, NoiseSource};
use crate::sampling::schedulers::SchedulerConfig;
use crate::sd::model::SdModel;
use crate::{Frame, NoProgress};

/// What a Rerender-A-Video replay made of every frame.
pub struct Rerendered {
    /// `[F, 4, h, w]`: the latents each frame's result was decoded from.
    pub final_latents: Tensor,
    /// `[F, 4, h, w]`: the latents of each frame's first pass (of its only one for frame 0).
    pub first_pass: Tensor,
    /// `[F, 3, H, W]` in [0, 1], not rounded.
    pub images: Tensor,
    /// Per frame, how many steps fused shapes and pixels.
    pub fused: Vec<(usize, usize)>,
}

/// Restyles `frames` in order under Rerender-A-Video (`--consistency rerender`) through the
/// stylize stage's own fusion and attention state, with the flows between original frames from
/// `flows`, frame `f`'s ControlNets from `control(f)` and its draws from `noise(f)`: the
/// replay of the reference pipeline.
#[allow(clippy::too_many_arguments)]
pub fn rerender_frames(
    model: &SdModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    frames: &[Frame],
    control: &mut dyn FnMut(usize) -> crate::Result<Control>,
    flows: Box<dyn PairFlows>,
    noise: &mut dyn FnMut(usize) -> crate::Result<Box<dyn NoiseSource>>,
) -> crate::Result<Rerendered> {
    let choice = RerenderFusion::default();
    choice.check(params)?;
    let mut fusion = FusionState::with_flows(Fusion::Rerender(choice), flows);
    let mut replay = Replay {
        model,
        scheduler_config,
        params,
        text,
        control: Control::default(),
        noise,
        attention: AttentionState::new(Attention::FirstAndPrevious, 0),
        decoded: RefCell::new(Vec::new()),
    };
    let mut out = Rerendered {
        final_latents: Tensor::zeros(0, DType::F32, text.device())?,
        first_pass: Tensor::zeros(0, DType::F32, text.device())?,
        images: Tensor::zeros(0, DType::F32, text.device())?,
        fused: Vec::new(),
    };
    let (mut last, mut first, mut images) = (Vec::new(), Vec::new(), Vec::new());
    for (f, frame) in frames.iter().enumerate() {
        replay.control = control(f)?;
        replay.decoded.borrow_mut().clear();
        fusion.render(frame, f as u64, &mut replay)?;
        let decoded = replay.decoded.borrow();
        let (Some(pass), Some((latents, raw))) = (decoded.first(), decoded.last()) else {
            return Err(crate::Error::Model(format!("frame {f} was never decoded")));
        };
        first.push(pass.0.clone());
        last.push(latents.clone());
        images.push(raw.affine(0.5, 0.5)?.clamp(0f32, 1f32)?);
        out.fused.push(fusion.rerender_fused().unwrap_or_default());
    }
    out.final_latents = Tensor::cat(&last, 0)?;
    out.first_pass = Tensor::cat(&first, 0)?;
    out.images = Tensor::cat(&images, 0)?;
    Ok(out)
}

/// The model side of a replay: the stage's calls, with the replay's control and draws; every
/// decode kept.
struct Replay<'a, 'n> {
    model: &'a SdModel,
    scheduler_config: &'a SchedulerConfig,
    params: &'a Img2ImgParams,
    text: &'a Tensor,
    control: Control,
    noise: &'n mut dyn FnMut(usize) -> crate::Result<Box<dyn NoiseSource>>,
    attention: AttentionState,
    /// (latents, decoded) of every decode of the frame.
    decoded: RefCell<Vec<(Tensor, Tensor)>>,
}

impl Diffuse for Replay<'_, '_> {
    fn denoise(
        &mut self,
        frame: &Frame,
        index: u64,
        hook: &mut dyn StepHook,
    ) -> crate::Result<Tensor> {
        let image = frame.to_tensor(self.text.device())?.affine(2.0, -1.0)?;
        let mut noise = (self.noise)(index as usize)?;
        denoise(
            self.model,
            self.scheduler_config,
            self.params,
            self.text,
            &image,
            &self.control,
            self.attention.frame(index)?,
            noise.as_mut(),
            &mut NoProgress,
            hook,
        )
    }

    fn decode(&self, latents: &Tensor) -> crate::Result<Tensor> {
        decode(self.model, latents)
    }

    fn decode_raw(&self, latents: &Tensor) -> crate::Result<Tensor> {
        let raw = decode_raw(self.model, latents)?;
        self.decoded
            .borrow_mut()
            .push((latents.clone(), raw.clone()));
        Ok(raw)
    }

    fn encode(
        &mut self,
        _frame: &Frame,
        index: u64,
        image: &Tensor,
        draw: NoiseDraw,
    ) -> crate::Result<Tensor> {
        let mut noise = (self.noise)(index as usize)?;
        encode(self.model, image, noise.as_mut(), draw)
    }

    fn params(&self) -> crate::Result<Img2ImgParams> {
        Ok(self.params.clone())
    }

    fn device(&self) -> crate::Result<Device> {
        Ok(self.text.device().clone())
    }

    fn latent_scale(&self) -> crate::Result<usize> {
        Ok(self.model.vae_scale_factor())
    }
}
