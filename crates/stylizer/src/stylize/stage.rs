//! The stylize [`FrameStage`]: Stable Diffusion img2img on every frame, with the prompt
//! encoded once per run and the temporal choices of [`super::temporal`] (by default the same
//! noise for every frame, cross-frame attention to the first frame and flow-guided fusion
//! with the previous frame; or keyframes only, with the frames between propagated by flow; or
//! AnimateDiff's windows). The stage asks each temporal axis what it needs and keeps the model
//! side ([`Diffuser`]) apart from them.

use candle_core::Tensor;

use super::temporal::attention::AttentionState;
use super::temporal::fusion::FusionState;
use super::temporal::keyframes::KeyframeState;
use super::temporal::noise::NoiseState;
use super::temporal::windows::WindowState;
use super::temporal::{AnimateDiffSettings, Diffuse, Fusion, Temporal};
use crate::nets::sd::config::ClipActivation;
use crate::sampling::animate::denoise_video;
use crate::sampling::fast::FastPlan;
use crate::sampling::img2img::{
    decode, decode_raw, denoise, encode, Control, ControlInput, Img2ImgParams, StepHook,
};
use crate::sampling::noise::NoiseDraw;
use crate::sampling::schedulers::SchedulerConfig;
use crate::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles, SdFiles, SdModel};
use crate::stage::TemporalStage;
use crate::stylize::control::{control_image, ControlNetSpec, ControlSource, ControlVideo};
use crate::video::probe::VideoInfo;
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
    /// Strength, steps, guidance, scheduler (with `fast`, only the strength is used).
    pub params: Img2ImgParams,
    /// `--fast`: sampler, steps, guidance and any LCM-LoRA chosen by the model's family
    /// ([`FastPlan`]) when the model is resolved.
    pub fast: bool,
    pub seed: u64,
    /// What the run does across frames ([`Temporal::new`] from the flags).
    pub temporal: Temporal,
    /// ControlNets (`--controlnet-id`, in order) with their control images and weights.
    pub controlnets: Vec<ControlNetSpec>,
    /// ControlNet guess mode (`--guess-mode`): the nets steer without the prompt.
    pub guess_mode: bool,
    /// `--max-vram GB`: the device memory the run may plan for ([`crate::sd::vram`]), checked
    /// when the frame size is known, before the first frame.
    pub max_vram_gb: Option<f64>,
}

/// Stylizes frames with Stable Diffusion img2img.
pub struct StylizeStage {
    diffuser: Diffuser,
    fusion: FusionState,
    keyframes: KeyframeState,
    /// AnimateDiff's frames and chunk results (`None`: frames one by one).
    windows: Option<WindowState>,
    /// The warm-up frames the axes other than the noise asked for (the others, if any, only
    /// carry the noise chain).
    warm_up_roles: Vec<u64>,
}

/// The model side of the stage: one frame encoded, denoised (with its noise, its
/// self-attention's anchor and its control images) and decoded.
struct Diffuser {
    settings: StylizeSettings,
    progress: Box<dyn Progress>,
    loaded: Option<Loaded>,
    attention: AttentionState,
    noise: NoiseState,
    /// The opened control video of every net that reads one (by net).
    control_videos: Vec<Option<ControlVideo>>,
}

struct Loaded {
    model: SdModel,
    scheduler: SchedulerConfig,
    /// The settings' parameters, or those `--fast` chose for this model.
    params: Img2ImgParams,
    /// [negative, prompt] embeddings, or [prompt] without guidance.
    text: Tensor,
    /// Guess mode as the nets run it (on for nets that pool their residuals).
    guess_mode: bool,
}

/// The loaded state, or the error of a stage used before [`FrameStage::prepare`].
fn prepared(loaded: &mut Option<Loaded>) -> Result<&mut Loaded> {
    loaded.as_mut().ok_or_else(not_prepared)
}

fn prepared_ref(loaded: &Option<Loaded>) -> Result<&Loaded> {
    loaded.as_ref().ok_or_else(not_prepared)
}

fn not_prepared() -> Error {
    Error::Model("stylize: process() before prepare()".into())
}

impl StylizeStage {
    /// A stage with these settings; nothing is loaded until [`FrameStage::prepare`].
    /// Settings that can never run (strength, steps, guidance) are rejected here.
    pub fn new(settings: StylizeSettings) -> Result<Self> {
        if !settings.fast {
            settings.params.first_step()?;
        } else if !(settings.params.strength > 0.0 && settings.params.strength <= 1.0) {
            // How many steps run depends on the model (checked when it is resolved).
            return Err(Error::Config(format!(
                "--fast needs a strength above 0 and at most 1, got {}",
                settings.params.strength
            )));
        }
        let temporal = &settings.temporal;
        temporal.check()?;
        if let Fusion::Rerender(r) = &temporal.fusion {
            if settings.fast {
                return Err(Error::NotImplemented(
                    "--consistency rerender with --fast (its fusions are written for DDIM's steps)"
                        .into(),
                ));
            }
            r.check(&settings.params)?;
        }
        if temporal.denoising.animatediff().is_some() && !settings.controlnets.is_empty() {
            return Err(Error::NotImplemented(
                "--animatediff together with ControlNet (AnimateDiff runs with --consistency none)"
                    .into(),
            ));
        }
        Ok(Self {
            fusion: FusionState::new(temporal.fusion),
            keyframes: KeyframeState::new(temporal.frames),
            windows: WindowState::new(&temporal.denoising),
            warm_up_roles: Vec::new(),
            diffuser: Diffuser {
                attention: AttentionState::new(temporal.attention, settings.seed),
                noise: NoiseState::new(temporal.noise, settings.seed),
                settings,
                progress: Box::new(NoProgress),
                loaded: None,
                control_videos: Vec::new(),
            },
        })
    }

    /// Where loading warnings and per-frame diffusion steps ([`Progress::step`]) are reported.
    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Self {
        self.diffuser.progress = progress;
        self
    }

    pub fn settings(&self) -> &StylizeSettings {
        &self.diffuser.settings
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
        let s = &self.diffuser.settings;
        let p = &s.params;
        let t = &s.temporal;
        // Debug formatting quotes and escapes the free text, so fields cannot run together.
        format!(
            "stylize model={:?} revision={:?} variant={:?} dtype={:?} vae_tiling={:?} tiny_vae={:?} loras={:?} prompt={:?} \
             negative={:?} strength={} steps={} guidance={} scheduler={} fast={} seed={} noise={} \
             cross_frame={} flow={} keyframe_every={} controlnets={:?} guess_mode={} animatediff={:?}",
            s.model,
            s.load.hub.revision,
            s.load.hub.variant,
            s.load.dtype(),
            s.load.vae_tiling,
            s.load.tiny_vae,
            s.load.loras,
            s.prompt,
            s.negative_prompt,
            p.strength,
            p.steps,
            p.guidance,
            p.scheduler,
            s.fast,
            s.seed,
            t.noise,
            t.attention,
            t.fusion,
            t.frames.interval(),
            s.controlnets,
            s.guess_mode,
            t.denoising.animatediff(),
        )
    }

    fn prepare(&mut self) -> Result<()> {
        if self.diffuser.loaded.is_some() {
            return Ok(());
        }
        let s = &self.diffuser.settings;
        let progress = self.diffuser.progress.as_mut();
        let mut files = SdFiles::resolve(&s.model, &s.load, progress)?;
        let params = match s.fast {
            false => s.params.clone(),
            true => {
                let plan = FastPlan::for_model(&files)?;
                if let Some(lora) = plan.lora() {
                    files.add_lora(&lora, 1.0, &s.load.hub).map_err(|e| {
                        Error::Config(format!("--fast needs the LCM-LoRA {lora}: {e}"))
                    })?;
                }
                let params = plan.checked_params(s.params.strength)?;
                progress.warn(&plan.describe(s.params.strength));
                params
            }
        };
        let motion = s
            .temporal
            .denoising
            .animatediff()
            .map(|a| motion_adapter(a, &files, &s.load))
            .transpose()?;
        let scheduler = SchedulerConfig::from_value(&files.scheduler_config)?;
        // Fail on a scheduler the config cannot build before loading any weights, and on a
        // LoRA that does not fit the model.
        params.scheduler.build(&scheduler, params.steps)?;
        files.check_loras()?;
        // And on a ControlNet that does not fit the model.
        let nets = s
            .controlnets
            .iter()
            .map(|c| {
                let net = ControlNetFiles::resolve(&c.model, &s.load, &files.unet_config)?;
                net.check_fits(&files.unet_config, files.vae_config.scale_factor())?;
                Ok(net)
            })
            .collect::<Result<Vec<_>>>()?;
        // The text encoder is loaded, used and freed inside encode_prompts, before the UNet.
        let negative = params.guided().then_some(s.negative_prompt.as_str());
        let text = files.encode_prompts(&s.prompt, negative)?;
        let mut model = SdModel::load(&files, progress)?;
        model.set_guidance(params.guidance)?;
        for net in &nets {
            model.add_controlnet(net)?;
        }
        if let Some(motion) = &motion {
            model.set_motion_adapter(motion)?;
        }
        // diffusers: nets that pool their residuals (shuffle) always run in guess mode.
        let guess_mode = s.guess_mode
            || nets
                .first()
                .is_some_and(|n| n.config.global_pool_conditions);
        self.diffuser.loaded = Some(Loaded {
            model,
            scheduler,
            params,
            text,
            guess_mode,
        });
        Ok(())
    }

    fn start_input(&mut self, input: &VideoInfo, (width, height): (u32, u32)) -> Result<()> {
        self.diffuser.control_videos = self
            .diffuser
            .settings
            .controlnets
            .iter()
            .map(|c| match &c.control {
                ControlSource::Video(path) => {
                    ControlVideo::open(path, input, width, height).map(Some)
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        self.diffuser.attention.restart();
        self.fusion.new_input();
        self.keyframes.restart();
        if let Some(windows) = self.windows.as_mut() {
            windows.restart();
        }
        if let (Some(max), Some(loaded)) =
            (self.diffuser.settings.max_vram_gb, &self.diffuser.loaded)
        {
            // A guidance pair per UNet call, or a context window of frames.
            let batch = match self.diffuser.settings.temporal.denoising.animatediff() {
                Some(a) => a.context.length,
                None => 2,
            };
            let size = (width as usize, height as usize);
            let mut estimate = crate::sd::vram::estimate(&loaded.model, size, batch);
            let steps = loaded.params.steps - loaded.params.first_step()?;
            estimate.held = self
                .diffuser
                .attention
                .held_bytes(&loaded.model, size, batch, steps);
            tracing::info!("GPU memory plan: {}", estimate.describe());
            crate::sd::vram::check(&estimate, max, self.diffuser.settings.load.offload_vae)?;
        }
        Ok(())
    }

    fn temporal(&mut self) -> Option<&mut dyn TemporalStage> {
        Some(self)
    }

    fn process(&mut self, frame: Frame, index: u64) -> Result<Frame> {
        self.process_frame(frame, index)
            .map_err(|e| self.explain_out_of_memory(e))
    }
}

impl TemporalStage for StylizeStage {
    fn reset(&mut self) -> Result<()> {
        self.restart_chain();
        if self.chains() {
            self.keyframes.restart_chain();
        }
        Ok(())
    }

    fn warm_up_frames(&mut self, start: u64) -> Vec<u64> {
        if let Some(windows) = &self.windows {
            return windows.warm_up_frames(start);
        }
        let mut frames = Vec::new();
        self.diffuser.attention.warm_up_frames(start, &mut frames);
        self.fusion.warm_up_frames(start, &mut frames);
        if self.chains() {
            // The frame the chain goes on from, rendered again as if it started the chain.
            frames.extend(self.keyframes.rendered_before(start));
        }
        self.keyframes.warm_up_frames(start, &mut frames);
        self.warm_up_roles = frames.clone();
        self.diffuser.noise.warm_up_frames(start, &mut frames);
        frames.sort_unstable();
        frames.dedup();
        frames
    }

    fn warm_up(&mut self, frame: Frame, index: u64) -> Result<()> {
        if let Some(windows) = self.windows.as_mut() {
            windows.add(index, self.diffuser.model_input(&frame)?);
            return Ok(());
        }
        self.diffuser.noise.follow(&frame, index)?;
        if !self.warm_up_roles.contains(&index) {
            // Shown only to carry the noise chain.
        } else if self.keyframes.renders_warm_up() || self.fusion.chains() {
            // A keyframe, or the look-back frame that starts the flow chain: rendered whole.
            self.restart_chain();
            self.process_frame(frame, index)?;
        } else {
            // The anchor, or the look-back frame that starts a feature bank: only its
            // denoising pass records what later frames attend to.
            self.diffuser.denoise(&frame, index, &mut ())?;
        }
        Ok(())
    }

    fn look_ahead(&self) -> u64 {
        match &self.windows {
            Some(windows) => windows.look_ahead(),
            None => self.keyframes.look_ahead(),
        }
    }

    fn peek(&mut self, frame: Frame, index: u64) -> Result<()> {
        if let Some(windows) = self.windows.as_mut() {
            windows.add(index, self.diffuser.model_input(&frame)?);
            return Ok(());
        }
        let Self {
            keyframes,
            fusion,
            diffuser,
            ..
        } = self;
        keyframes.peek(frame, index, &mut |f, i| fusion.render(f, i, diffuser))
    }

    fn repeat(&mut self, index: u64) -> Result<()> {
        self.fusion.repeat(index);
        self.diffuser.noise.repeat(index);
        Ok(())
    }
}

impl StylizeStage {
    /// Whether a result depends on the frames rendered just before it (flow fusion,
    /// Rerender-A-Video, StreamV2V's bank): a chain, started again at every segment.
    fn chains(&self) -> bool {
        self.fusion.chains() || self.diffuser.attention.chains()
    }

    /// The next frame starts a chain of its own (follows the first frame, where that counts).
    fn restart_chain(&mut self) {
        self.fusion.restart();
        self.diffuser.attention.restart_chain();
    }

    /// [`FrameStage::process`]'s work; errors pass through [`Self::explain_out_of_memory`].
    fn process_frame(&mut self, frame: Frame, index: u64) -> Result<Frame> {
        let Self {
            keyframes,
            fusion,
            diffuser,
            windows,
            ..
        } = self;
        match windows {
            Some(windows) => diffuser.animate(windows, frame, index),
            None => keyframes.process(frame, index, &mut |f, i| fusion.render(f, i, diffuser)),
        }
    }

    /// Out of memory, said in one line with the flags that lower what this run needs
    /// (on a GPU also the plan's).
    fn explain_out_of_memory(&self, e: Error) -> Error {
        let Error::OutOfMemory(what) = e else {
            return e;
        };
        let s = &self.diffuser.settings;
        let gpu = !s.load.device.is_cpu();
        let mut tries: Vec<String> = match (gpu, s.max_vram_gb) {
            (false, _) => Vec::new(),
            (true, Some(gb)) => vec![format!(
                "a lower --max-vram than {gb} (more than this card has free) to see the plan"
            )],
            (true, None) => vec!["--max-vram GB (your card's memory) to check the plan".into()],
        };
        let remedies = crate::sd::vram::remedies(
            gpu && !s.load.offload_vae,
            s.temporal.denoising.animatediff().is_some(),
            !s.controlnets.is_empty(),
        );
        tries.extend(remedies.into_iter().map(String::from));
        Error::OutOfMemory(format!("{what}; try {}", tries.join(", ")))
    }
}

/// The motion adapter of `a`, checked against the model before any weight loads.
fn motion_adapter(
    a: &AnimateDiffSettings,
    files: &SdFiles,
    load: &LoadOptions,
) -> Result<MotionAdapterFiles> {
    if files.text_config.activation != ClipActivation::QuickGelu {
        return Err(Error::Config(format!(
            "--animatediff: motion adapters exist for SD 1.5 only, and {} is an SD 2.x model; \
             pick an SD 1.5 model with -m (e.g. -m stable-diffusion-v1-5/stable-diffusion-v1-5, or a .safetensors file)",
            files.description()
        )));
    }
    let motion = MotionAdapterFiles::resolve(&a.adapter, load)?;
    motion.config.check_fits(&files.unet_config)?;
    a.context.check(motion.config.max_seq_length)?;
    Ok(motion)
}

impl Diffuser {
    /// The model's input for `frame`: `[1, 3, H, W]` in [−1, 1], refused when its size is not
    /// on the latent grid.
    fn model_input(&self, frame: &Frame) -> Result<Tensor> {
        let model = &prepared_ref(&self.loaded)?.model;
        let f = model.vae_scale_factor() as u32;
        if frame.width % f != 0 || frame.height % f != 0 {
            return Err(Error::Config(format!(
                "frame {}x{} is not a multiple of the model's {f}-pixel latent grid",
                frame.width, frame.height
            )));
        }
        Ok(frame.to_tensor(model.device())?.affine(2.0, -1.0)?)
    }

    /// Frame `index` under AnimateDiff: rendered with its chunk (and cross-faded with the
    /// neighbouring chunk in an overlap).
    fn animate(&mut self, windows: &mut WindowState, frame: Frame, index: u64) -> Result<Frame> {
        windows.add(index, self.model_input(&frame)?);
        let Self {
            settings,
            progress,
            loaded,
            ..
        } = self;
        let (seed, noise) = (settings.seed, settings.temporal.noise);
        let Loaded {
            model,
            scheduler,
            params,
            text,
            ..
        } = prepared(loaded)?;
        let latents = windows.latents(index, &mut |first, stack, context| {
            denoise_video(
                model,
                scheduler,
                params,
                text,
                stack,
                context,
                &mut |i| Ok(noise.source(seed, first + i as u64)),
                progress.as_mut(),
            )
        })?;
        Frame::from_tensor(&decode(model, &latents)?)
    }
}

impl Diffuse for Diffuser {
    fn denoise(&mut self, frame: &Frame, index: u64, hook: &mut dyn StepHook) -> Result<Tensor> {
        let image = self.model_input(frame)?;
        let loaded = prepared(&mut self.loaded)?;
        let s = &self.settings;
        let mut noise = self
            .noise
            .source(frame, index, loaded.model.vae_scale_factor())?;
        let anchor = self.attention.frame(index)?;
        let mut inputs = Vec::with_capacity(s.controlnets.len());
        for (net, spec) in s.controlnets.iter().enumerate() {
            let video = self.control_videos.get_mut(net).and_then(|v| v.as_mut());
            let device = loaded.model.device();
            inputs.push(ControlInput {
                net,
                image: control_image(&spec.control, frame, index, video, device)?,
                weight: spec.weight,
            });
        }
        let control = Control {
            inputs,
            guess_mode: loaded.guess_mode,
        };
        let latents = denoise(
            &loaded.model,
            &loaded.scheduler,
            &loaded.params,
            &loaded.text,
            &image,
            &control,
            anchor,
            noise.as_mut(),
            self.progress.as_mut(),
            hook,
        )?;
        self.attention.denoised(index);
        Ok(latents)
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        decode(&prepared_ref(&self.loaded)?.model, latents)
    }

    fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        decode_raw(&prepared_ref(&self.loaded)?.model, latents)
    }

    fn encode(
        &mut self,
        frame: &Frame,
        index: u64,
        image: &Tensor,
        draw: NoiseDraw,
    ) -> Result<Tensor> {
        let model = &prepared_ref(&self.loaded)?.model;
        let mut noise = self.noise.source(frame, index, model.vae_scale_factor())?;
        encode(model, image, noise.as_mut(), draw)
    }

    fn params(&self) -> Result<Img2ImgParams> {
        Ok(prepared_ref(&self.loaded)?.params.clone())
    }

    fn device(&self) -> Result<candle_core::Device> {
        Ok(prepared_ref(&self.loaded)?.model.device().clone())
    }

    fn latent_scale(&self) -> Result<usize> {
        Ok(prepared_ref(&self.loaded)?.model.vae_scale_factor())
    }
}
