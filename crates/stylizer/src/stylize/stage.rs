//! The stylize [`FrameStage`]: Stable Diffusion img2img on every frame, with the prompt
//! encoded once per run, (by default) the same noise for every frame and cross-frame
//! attention to the first frame, and optionally flow-guided fusion with the previous frame,
//! or diffusion on keyframes only with the frames between propagated by flow.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::frame::interleaved;
use crate::nets::sd::config::ClipActivation;
use crate::nets::sd::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor};
use crate::sampling::animate::{denoise_video, ChunkGrid, Chunks, ContextOptions};
use crate::sampling::fast::FastPlan;
use crate::sampling::img2img::{decode, denoise, Control, ControlInput, Img2ImgParams};
use crate::sampling::noise::{NoiseSource, SeededNoise};
use crate::sampling::schedulers::SchedulerConfig;
use crate::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles, SdFiles, SdModel};
use crate::stylize::control::{control_image, ControlNetSpec, ControlSource, ControlVideo};
use crate::temporal::flow::{DisParams, Gray};
use crate::temporal::fusion::{interpolate, FrameMotion, FusionWeights, FUSION_FLOW};
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
    /// Draw new noise for every frame instead of reusing the first frame's (more flicker).
    pub noise_per_frame: bool,
    /// Cross-frame attention to the video's first frame (`--consistency cross-frame`), and
    /// which keys; `None` stylizes every frame on its own.
    pub cross_frame: Option<CrossFrameKeys>,
    /// Flow-guided fusion with the previous frame (`--consistency flow`); `None` keeps every
    /// frame's own result.
    pub flow: Option<FusionWeights>,
    /// Run diffusion on every K-th frame only and propagate it to the frames between
    /// (`--keyframe-every`); 1 restyles every frame.
    pub keyframe_every: u64,
    /// ControlNets (`--controlnet-id`, in order) with their control images and weights.
    pub controlnets: Vec<ControlNetSpec>,
    /// ControlNet guess mode (`--guess-mode`): the nets steer without the prompt.
    pub guess_mode: bool,
    /// AnimateDiff (`--animatediff`): frames denoised together through motion modules.
    pub animatediff: Option<AnimateDiffSettings>,
    /// `--max-vram GB`: the device memory the run may plan for ([`crate::sd::vram`]), checked
    /// when the frame size is known, before the first frame.
    pub max_vram_gb: Option<f64>,
}

/// `--animatediff`: the motion adapter and the context windows.
#[derive(Debug, Clone, PartialEq)]
pub struct AnimateDiffSettings {
    /// `--motion-adapter`: hub id, diffusers folder or original `.ckpt`/`.safetensors`.
    pub adapter: ModelSource,
    pub context: ContextOptions,
}

/// The motion adapter `--animatediff` loads unless told otherwise (SD 1.5, with mid block).
pub const MOTION_ADAPTER: &str = "guoyww/animatediff-motion-adapter-v1-5-2";

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
    /// The settings' parameters, or those `--fast` chose for this model.
    params: Img2ImgParams,
    /// [negative, prompt] embeddings, or [prompt] without guidance.
    text: Tensor,
    /// The anchor frame's self-attention tokens (cross-frame attention); kept across
    /// segments, since every segment attends to the same frame.
    anchor: AnchorBank,
    /// The frame rendered last, for flow-guided fusion.
    previous: Option<Previous>,
    /// Restyled keyframes by index: the ones around the current frame and any peeked ahead.
    keys: BTreeMap<u64, Keyframe>,
    /// The opened control video of every net that reads one (by net).
    control_videos: Vec<Option<ControlVideo>>,
    /// Guess mode as the nets run it (on for nets that pool their residuals).
    guess_mode: bool,
    /// AnimateDiff's frames and chunk results.
    chunks: Option<Chunks>,
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

/// A restyled keyframe and the original's luminance, to measure motion from.
struct Keyframe {
    gray: Gray,
    frame: Frame,
}

/// What flow-guided fusion keeps of the frame rendered last.
struct Previous {
    index: u64,
    /// The original frame's luminance, to measure motion from.
    gray: Gray,
    /// The (fused) latents after every denoising step.
    steps: Vec<Tensor>,
    /// The (fused) image, RGB interleaved in [0, 1].
    image: Vec<f32>,
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
        if let Some(a) = &settings.animatediff {
            a.context.check(usize::MAX)?;
            let other = [
                (settings.cross_frame.is_some(), "cross-frame attention"),
                (settings.flow.is_some(), "flow fusion"),
                (settings.keyframe_every > 1, "--keyframe-every"),
                (!settings.controlnets.is_empty(), "ControlNet"),
            ];
            if let Some((_, what)) = other.iter().find(|(on, _)| *on) {
                return Err(Error::NotImplemented(format!(
                    "--animatediff together with {what} (AnimateDiff runs with --consistency none)"
                )));
            }
        }
        if settings.keyframe_every == 0 {
            return Err(Error::Config(
                "--keyframe-every must be at least 1 (1 restyles every frame)".into(),
            ));
        }
        if settings.keyframe_every > 1 && settings.flow.is_some() {
            return Err(Error::NotImplemented(
                "keyframes with flow-guided fusion (--keyframe-every with --consistency flow or cross-frame+flow)".into(),
            ));
        }
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
            if s.noise_per_frame {
                "per-frame"
            } else {
                "fixed"
            },
            s.cross_frame.map_or("none".into(), |k| k.to_string()),
            s.flow.map_or("none".into(), |w| w.to_string()),
            s.keyframe_every,
            s.controlnets,
            s.guess_mode,
            s.animatediff,
        )
    }

    fn prepare(&mut self) -> Result<()> {
        if self.loaded.is_some() {
            return Ok(());
        }
        let s = &self.settings;
        let mut files = SdFiles::resolve(&s.model, &s.load, self.progress.as_mut())?;
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
                self.progress.warn(&plan.describe(s.params.strength));
                params
            }
        };
        let motion = s
            .animatediff
            .as_ref()
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
        let mut model = SdModel::load(&files, self.progress.as_mut())?;
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
        self.loaded = Some(Loaded {
            model,
            scheduler,
            params,
            text,
            anchor: AnchorBank::default(),
            previous: None,
            keys: BTreeMap::new(),
            control_videos: Vec::new(),
            guess_mode,
            chunks: s
                .animatediff
                .as_ref()
                .map(|a| Chunks::new(ChunkGrid::new(&a.context))),
        });
        Ok(())
    }

    fn start_input(&mut self, input: &VideoInfo, (width, height): (u32, u32)) -> Result<()> {
        let videos = self
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
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.anchor = AnchorBank::default();
            loaded.previous = None;
            loaded.keys.clear();
            loaded.control_videos = videos;
            if let Some(chunks) = loaded.chunks.as_mut() {
                chunks.clear();
            }
        }
        if let (Some(max), Some(loaded)) = (self.settings.max_vram_gb, self.loaded.as_ref()) {
            // A guidance pair per UNet call, or a context window of frames.
            let batch = match &self.settings.animatediff {
                Some(a) => a.context.length,
                None => 2,
            };
            let size = (width as usize, height as usize);
            let estimate = crate::sd::vram::estimate(&loaded.model, size, batch);
            tracing::info!("GPU memory plan: {}", estimate.describe());
            crate::sd::vram::check(&estimate, max, self.settings.load.offload_vae)?;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        // Fusion restarts at every segment from a look-back frame rendered on its own (see
        // warm_up_frames), so a segment's frames never depend on where the run started.
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.previous = None;
        }
        Ok(())
    }

    fn warm_up_frames(&self, start: u64) -> Vec<u64> {
        if let Some(a) = &self.settings.animatediff {
            return match self.loaded.as_ref().and_then(|l| l.chunks.as_ref()) {
                Some(chunks) => chunks.warm_up_frames(start),
                None => Chunks::new(ChunkGrid::new(&a.context)).warm_up_frames(start),
            };
        }
        let have_anchor = self.loaded.as_ref().is_some_and(|l| !l.anchor.is_empty());
        let mut frames = Vec::new();
        if self.settings.cross_frame.is_some() && start > ANCHOR_FRAME && !have_anchor {
            frames.push(ANCHOR_FRAME);
        }
        if self.settings.flow.is_some() && start > 0 && frames.last() != Some(&(start - 1)) {
            frames.push(start - 1);
        }
        // Keyframes depend on nothing but the anchor, so the ones held stay valid.
        let k = self.settings.keyframe_every;
        let key = start - start % k;
        let have_key = self
            .loaded
            .as_ref()
            .is_some_and(|l| l.keys.contains_key(&key));
        if key != start && !have_key && frames.last() != Some(&key) {
            frames.push(key);
        }
        frames
    }

    fn warm_up(&mut self, frame: Frame, index: u64) -> Result<()> {
        if self.settings.animatediff.is_some() {
            self.add_chunk_input(&frame, index)?;
        } else if self.settings.keyframe_every > 1 {
            self.keyframe(frame, index)?;
        } else if self.settings.flow.is_some() {
            // The look-back frame is rendered without fusion: it starts the chain.
            if let Some(loaded) = self.loaded.as_mut() {
                loaded.previous = None;
            }
            self.render(&frame, index)?;
        } else if self.settings.cross_frame.is_some() && index == ANCHOR_FRAME {
            // Only the denoising pass records the anchor: its decode is not needed.
            self.denoise_frame(&frame, index, None)?;
        }
        Ok(())
    }

    fn look_ahead(&self) -> u64 {
        match &self.settings.animatediff {
            // A chunk is rendered when its first frame is due: all of it must have been seen.
            Some(a) => ChunkGrid::new(&a.context).len - 1,
            None => self.settings.keyframe_every - 1,
        }
    }

    fn peek(&mut self, frame: Frame, index: u64) -> Result<()> {
        if self.settings.animatediff.is_some() {
            return self.add_chunk_input(&frame, index);
        }
        let k = self.settings.keyframe_every;
        if k > 1 && index % k == 0 {
            self.keyframe(frame, index)?;
        }
        Ok(())
    }

    fn repeat(&mut self, index: u64) -> Result<()> {
        // The same picture again: the flow chain goes on from it (zero motion).
        if let Some(p) = self.loaded.as_mut().and_then(|l| l.previous.as_mut()) {
            if p.index + 1 == index {
                p.index = index;
            }
        }
        Ok(())
    }

    fn process(&mut self, frame: Frame, index: u64) -> Result<Frame> {
        self.process_frame(frame, index)
            .map_err(|e| self.explain_out_of_memory(e))
    }
}

impl StylizeStage {
    /// [`FrameStage::process`]'s work; errors pass through [`Self::explain_out_of_memory`].
    fn process_frame(&mut self, frame: Frame, index: u64) -> Result<Frame> {
        if self.settings.animatediff.is_some() {
            return self.animate(frame, index);
        }
        let k = self.settings.keyframe_every;
        if k == 1 {
            return self.render(&frame, index);
        }
        let before = index - index % k;
        if before == index {
            return Ok(self.keyframe(frame, index)?.clone());
        }
        let loaded = prepared(&mut self.loaded)?;
        // Keyframes behind the one before this frame are no longer needed.
        loaded.keys = loaded.keys.split_off(&before);
        let Some(a) = loaded.keys.get(&before) else {
            return Err(Error::Model(format!(
                "stylize: frame {index} needs keyframe {before}, which was not rendered first"
            )));
        };
        // The keyframe after is missing only when the video ends before it.
        let b = loaded.keys.get(&(before + k));
        let (w, h) = (frame.width as usize, frame.height as usize);
        let gray = Gray::from_rgb(w, h, &frame.data);
        let params = DisParams::preset(FUSION_FLOW);
        let near_b = (index - before) as f32 / k as f32;
        let keys: Vec<(FrameMotion, Vec<f32>, f32)> =
            [Some((a, 1.0 - near_b)), b.map(|b| (b, near_b))]
                .into_iter()
                .flatten()
                .map(|(key, weight)| {
                    let motion = FrameMotion::between(&key.gray, &gray, &params);
                    (motion, key.frame.to_unit_rgb(), weight)
                })
                .collect();
        let refs: Vec<(&FrameMotion, &[f32], f32)> =
            keys.iter().map(|(m, i, w)| (m, i.as_slice(), *w)).collect();
        Ok(Frame::from_unit_rgb(
            frame.width,
            frame.height,
            &interpolate(&refs, 3),
        ))
    }

    /// Out of memory, said in one line with the flags that lower what this run needs
    /// (on a GPU also the plan's).
    fn explain_out_of_memory(&self, e: Error) -> Error {
        let Error::OutOfMemory(what) = e else {
            return e;
        };
        let s = &self.settings;
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
            s.animatediff.is_some(),
            !s.controlnets.is_empty(),
        );
        tries.extend(remedies.into_iter().map(String::from));
        Error::OutOfMemory(format!("{what}; try {}", tries.join(", ")))
    }
}

/// Frame `index`'s random draws: its own stream with `--noise-per-frame`, else the same for
/// every frame.
fn frame_noise(seed: u64, per_frame: bool, index: u64) -> Box<dyn NoiseSource> {
    match per_frame {
        true => Box::new(SeededNoise::with_stream(seed, index)),
        false => Box::new(SeededNoise::new(seed)),
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

impl StylizeStage {
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

    fn add_chunk_input(&mut self, frame: &Frame, index: u64) -> Result<()> {
        let image = self.model_input(frame)?;
        if let Some(chunks) = self.loaded.as_mut().and_then(|l| l.chunks.as_mut()) {
            chunks.add_input(index, image);
        }
        Ok(())
    }

    /// Frame `index` under AnimateDiff: rendered with its chunk (and cross-faded with the
    /// neighbouring chunk in an overlap).
    fn animate(&mut self, frame: Frame, index: u64) -> Result<Frame> {
        self.add_chunk_input(&frame, index)?;
        let Self {
            settings,
            progress,
            loaded,
        } = self;
        let Loaded {
            model,
            scheduler,
            params,
            text,
            chunks,
            ..
        } = prepared(loaded)?;
        let chunks = chunks.as_mut().expect("AnimateDiff loads its chunks");
        let context = settings.animatediff.as_ref().expect("animate").context;
        let (seed, per_frame) = (settings.seed, settings.noise_per_frame);
        let latents = chunks.latents(index, &mut |first, stack| {
            denoise_video(
                model,
                scheduler,
                params,
                text,
                stack,
                &context,
                &mut |i| Ok(frame_noise(seed, per_frame, first + i as u64)),
                progress.as_mut(),
            )
        })?;
        Frame::from_tensor(&decode(model, &latents)?)
    }

    /// The restyled keyframe `index`, rendered unless it is held already.
    fn keyframe(&mut self, frame: Frame, index: u64) -> Result<&Frame> {
        let held = self
            .loaded
            .as_ref()
            .is_some_and(|l| l.keys.contains_key(&index));
        if !held {
            let gray = Gray::from_rgb(frame.width as usize, frame.height as usize, &frame.data);
            let frame = self.render(&frame, index)?;
            let loaded = self.loaded.as_mut().expect("loaded by render");
            loaded.keys.insert(index, Keyframe { gray, frame });
        }
        let loaded = self.loaded.as_ref().expect("held or just rendered");
        Ok(&loaded.keys[&index].frame)
    }

    /// Restyles frame `index`, fusing it with the frame before when flow fusion is on.
    fn render(&mut self, frame: &Frame, index: u64) -> Result<Frame> {
        let Some(weights) = self.settings.flow else {
            let (latents, _) = self.denoise_frame(frame, index, None)?;
            let loaded = self.loaded.as_ref().expect("loaded by denoise_frame");
            return Frame::from_tensor(&decode(&loaded.model, &latents)?);
        };
        let (w, h) = (frame.width as usize, frame.height as usize);
        let gray = Gray::from_rgb(w, h, &frame.data);
        let previous = self
            .loaded
            .as_mut()
            .and_then(|l| l.previous.take())
            .filter(|p| p.index + 1 == index);
        let motion = previous
            .as_ref()
            .map(|p| FrameMotion::between(&p.gray, &gray, &DisParams::preset(FUSION_FLOW)));
        let factor = self
            .loaded
            .as_ref()
            .map_or(8, |l| l.model.vae_scale_factor());
        let latent_motion = motion.as_ref().map(|m| m.downscale(factor));
        let fusion = previous
            .as_ref()
            .zip(latent_motion.as_ref())
            .map(|(p, m)| LatentFusion {
                motion: m,
                steps: &p.steps,
                weight: weights.latent,
            });
        let (latents, steps) = self.denoise_frame(frame, index, fusion)?;
        let loaded = self.loaded.as_mut().expect("loaded by denoise_frame");
        let mut image = interleaved(&decode(&loaded.model, &latents)?.squeeze(0)?)?;
        if let (Some(p), Some(m)) = (&previous, &motion) {
            m.fuse(&mut image, &p.image, 3, weights.pixel);
        }
        let out = Frame::from_unit_rgb(frame.width, frame.height, &image);
        loaded.previous = Some(Previous {
            index,
            gray,
            steps,
            image,
        });
        Ok(out)
    }

    /// Encodes and denoises frame `index`, returning its final latents and, under flow
    /// fusion, the latents after every step: the anchor frame records its self-attention
    /// tokens, later frames attend to them; `fusion` blends the previous frame in.
    fn denoise_frame(
        &mut self,
        frame: &Frame,
        index: u64,
        fusion: Option<LatentFusion>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let image = self.model_input(frame)?;
        let Self {
            settings,
            progress,
            loaded,
        } = self;
        let loaded = prepared(loaded)?;
        let mut noise = frame_noise(settings.seed, settings.noise_per_frame, index);
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
        let mut inputs = Vec::with_capacity(settings.controlnets.len());
        for (net, spec) in settings.controlnets.iter().enumerate() {
            let video = loaded.control_videos.get_mut(net).and_then(|v| v.as_mut());
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
        let record = settings.flow.is_some();
        let mut steps = Vec::new();
        let latents = denoise(
            &loaded.model,
            &loaded.scheduler,
            &loaded.params,
            &loaded.text,
            &image,
            &control,
            anchor,
            noise.as_mut(),
            progress.as_mut(),
            &mut |i, latents| {
                let latents = match &fusion {
                    Some(f) if i < f.steps.len() => f.fuse(&latents, &f.steps[i])?,
                    _ => latents,
                };
                if record {
                    steps.push(latents.clone());
                }
                Ok(latents)
            },
        )?;
        if index == ANCHOR_FRAME && settings.cross_frame.is_some() {
            tracing::debug!(
                "anchor frame recorded: {} MB of self-attention tokens",
                loaded.anchor.bytes() >> 20
            );
        }
        Ok((latents, steps))
    }
}

/// Blends the previous frame's latents after the same step into the current ones.
struct LatentFusion<'a> {
    /// The motion on the latent grid.
    motion: &'a FrameMotion,
    steps: &'a [Tensor],
    weight: f32,
}

impl LatentFusion<'_> {
    fn fuse(&self, latents: &Tensor, previous: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = latents.dims4()?;
        let mut current = interleaved(&latents.squeeze(0)?)?;
        self.motion.fuse(
            &mut current,
            &interleaved(&previous.squeeze(0)?)?,
            c,
            self.weight,
        );
        Ok(Tensor::from_vec(current, (h, w, c), latents.device())?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?)
    }
}
