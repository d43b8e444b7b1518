//! The stylize [`FrameStage`]: Stable Diffusion img2img on every frame, with the prompt
//! encoded once per run, (by default) the same noise for every frame and cross-frame
//! attention to the first frame.

use candle_core::Tensor;

use super::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor, SelfAttention};
use super::img2img::{decode, denoise, Img2ImgModel, Img2ImgParams};
use super::model::{LoadOptions, SdFiles, SdModel};
use super::noise::{NoiseSource, SeededNoise};
use super::schedulers::SchedulerConfig;
use crate::weights::ModelSource;
use crate::{Error, Frame, FrameStage, NoProgress, Progress, Result};

/// Everything `video-stylizer stylize` decides about the Stable Diffusion pass.
#[derive(Debug, Clone)]
pub struct StylizeSettings {
    /// Hub id, diffusers folder or single-file checkpoint (`--model-id`).
    pub model: ModelSource,
    /// Device, dtype, hub options, attention slicing, VAE tiling.
    pub load: LoadOptions,
    pub prompt: String,
    /// What the image should not look like; "" is the plain unconditional prompt.
    pub negative_prompt: String,
    /// Strength, steps, guidance, scheduler.
    pub params: Img2ImgParams,
    pub seed: u64,
    /// Draw new noise for every frame instead of reusing the first frame's (more flicker).
    pub noise_per_frame: bool,
    /// Cross-frame attention to the video's first frame (`--consistency cross-frame`), and
    /// which keys; `None` stylizes every frame on its own.
    pub cross_frame: Option<CrossFrameKeys>,
}

/// The frame every other frame attends to under cross-frame attention.
const ANCHOR_FRAME: u64 = 0;

/// Stylizes frames with Stable Diffusion img2img.
pub struct StylizeStage {
    settings: StylizeSettings,
    progress: Box<dyn Progress>,
    loaded: Option<Loaded>,
}

struct Loaded {
    model: SdModel,
    scheduler: SchedulerConfig,
    /// [negative, prompt] embeddings, or [prompt] without guidance.
    text: Tensor,
    /// The anchor frame's self-attention tokens (cross-frame attention); kept across
    /// segments, since every segment attends to the same frame.
    anchor: AnchorBank,
}

impl StylizeStage {
    /// A stage with these settings; nothing is loaded until [`FrameStage::prepare`].
    /// Settings that can never run (strength, steps, guidance) are rejected here.
    pub fn new(settings: StylizeSettings) -> Result<Self> {
        settings.params.first_step()?;
        Ok(Self {
            settings,
            progress: Box::new(NoProgress),
            loaded: None,
        })
    }

    /// Where loading warnings and per-frame diffusion steps ([`Progress::step`]) are reported.
    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    pub fn settings(&self) -> &StylizeSettings {
        &self.settings
    }
}

impl FrameStage for StylizeStage {
    fn name(&self) -> &str {
        "stylize"
    }

    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        (width, height)
    }

    fn fingerprint(&self) -> String {
        let s = &self.settings;
        let p = &s.params;
        // Debug formatting quotes and escapes the free text, so fields cannot run together.
        format!(
            "stylize model={:?} revision={:?} variant={:?} dtype={:?} vae_tiling={:?} prompt={:?} \
             negative={:?} strength={} steps={} guidance={} scheduler={} seed={} noise={} \
             cross_frame={}",
            s.model,
            s.load.hub.revision,
            s.load.hub.variant,
            s.load.dtype(),
            s.load.vae_tiling,
            s.prompt,
            s.negative_prompt,
            p.strength,
            p.steps,
            p.guidance,
            p.scheduler,
            s.seed,
            if s.noise_per_frame {
                "per-frame"
            } else {
                "fixed"
            },
            s.cross_frame.map_or("none".into(), |k| k.to_string()),
        )
    }

    fn prepare(&mut self) -> Result<()> {
        if self.loaded.is_some() {
            return Ok(());
        }
        let s = &self.settings;
        let files = SdFiles::resolve(&s.model, &s.load, self.progress.as_mut())?;
        let scheduler = SchedulerConfig::from_value(&files.scheduler_config)?;
        // Fail on a scheduler the config cannot build before loading any weights.
        s.params.scheduler.build(&scheduler, s.params.steps)?;
        // The text encoder is loaded, used and freed inside encode_prompts, before the UNet.
        let negative = s.params.guided().then_some(s.negative_prompt.as_str());
        let text = files.encode_prompts(&s.prompt, negative)?;
        let model = SdModel::load(&files, self.progress.as_mut())?;
        self.loaded = Some(Loaded {
            model,
            scheduler,
            text,
            anchor: AnchorBank::default(),
        });
        Ok(())
    }

    fn warm_up_frames(&self, start: u64) -> Vec<u64> {
        let have_anchor = self.loaded.as_ref().is_some_and(|l| !l.anchor.is_empty());
        match self.settings.cross_frame {
            Some(_) if start > ANCHOR_FRAME && !have_anchor => vec![ANCHOR_FRAME],
            _ => Vec::new(),
        }
    }

    fn warm_up(&mut self, frame: Frame, index: u64) -> Result<()> {
        if self.settings.cross_frame.is_some() && index == ANCHOR_FRAME {
            // Only the denoising pass records the anchor: its decode is not needed.
            self.denoise_frame(&frame, index)?;
        }
        Ok(())
    }

    fn process(&mut self, frame: Frame, index: u64) -> Result<Frame> {
        let latents = self.denoise_frame(&frame, index)?;
        let loaded = self.loaded.as_ref().expect("loaded by denoise_frame");
        Frame::from_tensor(&decode(&loaded.model, &latents)?)
    }
}

impl StylizeStage {
    /// Encodes and denoises frame `index`, returning its final latents: the anchor frame
    /// records its self-attention tokens, later frames attend to them.
    fn denoise_frame(&mut self, frame: &Frame, index: u64) -> Result<Tensor> {
        let Self {
            settings,
            progress,
            loaded,
        } = self;
        let loaded = loaded
            .as_mut()
            .ok_or_else(|| Error::Model("stylize: process() before prepare()".into()))?;
        let f = loaded.model.vae_scale_factor() as u32;
        if frame.width % f != 0 || frame.height % f != 0 {
            return Err(Error::Config(format!(
                "frame {}x{} is not a multiple of the model's {f}-pixel latent grid",
                frame.width, frame.height
            )));
        }
        let image = frame.to_tensor(loaded.model.device())?.affine(2.0, -1.0)?;
        let mut noise: Box<dyn NoiseSource> = match settings.noise_per_frame {
            true => Box::new(SeededNoise::with_stream(settings.seed, index)),
            false => Box::new(SeededNoise::new(settings.seed)),
        };
        let anchor = match settings.cross_frame {
            None => FrameAnchor::Independent,
            Some(_) if index == ANCHOR_FRAME => FrameAnchor::Record(&mut loaded.anchor),
            Some(_) if loaded.anchor.is_empty() => {
                return Err(Error::Model(format!(
                    "stylize: frame {index} needs the anchor frame {ANCHOR_FRAME}, which was not rendered first"
                )))
            }
            Some(keys) => FrameAnchor::Attend(&loaded.anchor, keys),
        };
        let latents = denoise(
            &loaded.model,
            &loaded.scheduler,
            &settings.params,
            &loaded.text,
            &image,
            anchor,
            noise.as_mut(),
            progress.as_mut(),
            &mut |_, _| Ok(()),
        )?;
        if index == ANCHOR_FRAME && settings.cross_frame.is_some() {
            tracing::debug!(
                "anchor frame recorded: {} MB of self-attention tokens",
                loaded.anchor.bytes() >> 20
            );
        }
        Ok(latents)
    }
}

impl Img2ImgModel for SdModel {
    fn vae_encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        SdModel::vae_encode(self, image)
    }

    fn unet(
        &self,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        frames: &mut SelfAttention,
    ) -> Result<Tensor> {
        SdModel::unet(self, latents, &[timestep], text, frames)
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        SdModel::vae_decode(self, latents)
    }

    fn scaling_factor(&self) -> f64 {
        SdModel::scaling_factor(self)
    }
}
