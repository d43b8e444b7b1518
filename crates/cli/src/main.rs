//! `video-stylizer`: the command line. Parses flags, draws progress, prints errors as one
//! line; everything else is in the `stylizer` library.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use stylizer::pipeline::{self, Job, Outcome};
use stylizer::stage::{Identity, Invert};
use stylizer::stylize::animate::{ChunkGrid, ContextOptions, Fuse};
use stylizer::stylize::control::{ControlNetSpec, ControlSource};
use stylizer::stylize::cross_frame::CrossFrameKeys;
use stylizer::stylize::fast::FAST_MODEL;
use stylizer::stylize::img2img::{ControlWeight, Img2ImgParams};
use stylizer::stylize::model::{LoadOptions, DEFAULT_MODEL, TINY_VAE};
use stylizer::stylize::schedulers::SchedulerKind;
use stylizer::stylize::stage::{
    AnimateDiffSettings, StylizeSettings, StylizeStage, MOTION_ADAPTER,
};
use stylizer::stylize::vae::VaeTiling;
use stylizer::temporal::flicker::measure_files;
use stylizer::temporal::flow::{DisParams, DisPreset};
use stylizer::temporal::fusion::FusionWeights;
use stylizer::upscale::{images, resize::Target, AlphaUpscale, UpscaleOptions, UpscaleStage};
use stylizer::video::{probe, Codec, EncodeSettings, MaxRes, Timing, VideoInfo};
use stylizer::weights::ModelSource;
use stylizer::{Error, FrameStage, Progress, Stage};

use progress::{CliProgress, Mode};

/// `println!` for a command's results: when the reader goes away (`probe … | head`) the
/// command ends quietly, as Unix tools do, instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

mod preview;

#[derive(Parser)]
#[command(
    name = "video-stylizer",
    version,
    about = "Restyle a video with a text prompt (Stable Diffusion img2img + Real-ESRGAN + ffmpeg)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// No progress output (warnings and errors are still printed).
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Restyle every frame of videos and write `<input>_stylized.mp4` for each.
    Stylize(Box<StylizeArgs>),
    /// Show what is in a video file.
    Probe {
        input: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Upscale videos, images or folders of them with Real-ESRGAN.
    Upscale(Box<UpscaleArgs>),
    /// Manage the Real-ESRGAN model cache.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure flicker: the warp error of a stylized video against its original (Lai et al.
    /// 2018), with the original's own as the floor and their ratio.
    Flicker {
        /// The source video (optical flow is computed on it).
        original: PathBuf,
        /// The restyled video (same frames, any size; the original is scaled to it).
        stylized: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Optical flow quality: ultrafast, fast or medium (DIS presets).
        #[arg(long, default_value = "medium", value_parser = parse_flow_preset)]
        flow: DisPreset,
        /// Compare only the first N frames.
        #[arg(long)]
        max_frames: Option<u64>,
    },
    /// Join the segments that `stylize --segment K/N` runs rendered into a work folder.
    Join {
        /// The work folder (`<output>.work`).
        work_dir: PathBuf,
        #[arg(long)]
        overwrite: bool,
        #[arg(long)]
        keep_work: bool,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download a model into the cache (checked with sha256, resumable).
    Fetch { name: String },
    /// List the downloadable models and the cache folder.
    List,
}

/// Real-ESRGAN settings shared by `stylize --upscale` and `upscale`.
#[derive(Args)]
struct UpscaleFlags {
    /// Real-ESRGAN model: a name in the model cache (see `models list`) or a .pth,
    /// .safetensors or ncnn .param file.
    #[arg(long, default_value = stylizer::upscale::fetch::DEFAULT_MODEL)]
    upscale_model: String,
    /// Size after upscaling: 1080p (fit 1920×1080), 1440p, 2160p, x2 or x4.
    #[arg(long, default_value = "1080p", value_parser = parse_lib::<Target>)]
    upscale_to: Target,
    /// Tile size in input pixels (0 = whole frame; default: the largest that fits in memory).
    #[arg(long)]
    tile: Option<usize>,
    /// Context pixels around each tile.
    #[arg(long, default_value_t = 10)]
    tile_pad: usize,
}

impl UpscaleFlags {
    fn stage(&self, device: &str) -> anyhow::Result<UpscaleStage> {
        let opts = UpscaleOptions {
            tile: self.tile,
            tile_pad: self.tile_pad,
            target: self.upscale_to,
            ..UpscaleOptions::default()
        };
        Ok(UpscaleStage::new(
            &self.upscale_model,
            stylizer::device::select(device)?,
            opts,
        )?)
    }
}

/// Output settings shared by the commands that write a video.
#[derive(Args)]
struct VideoOut {
    /// Output file or folder (default: next to the input, named after it).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Video codec: h265, h264 or av1.
    #[arg(long, default_value = "h265", value_parser = parse_lib::<Codec>)]
    codec: Codec,
    /// Constant rate factor (default: 26 for h265, 21 for h264, 32 for av1).
    #[arg(long)]
    crf: Option<u32>,
    /// Encoder preset (x264/x265: ultrafast … veryslow; av1: 0 … 13).
    #[arg(long)]
    preset: Option<String>,
    /// Replace the output file if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Where to run the models: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Keep the work folder (finished segments) after success.
    #[arg(long)]
    keep_work: bool,
    /// Render only share K of N into the work folder (for job arrays); a run without it joins.
    #[arg(long, value_name = "K/N", value_parser = parse_share)]
    segment: Option<(u32, u32)>,
    /// Seconds of video per resumable segment (each costs an encoder start: not much shorter);
    /// default 5, or 30 when no model runs.
    #[arg(long, hide = true)]
    segment_seconds: Option<f64>,
}

impl VideoOut {
    /// The job for `input`, with every flag checked before any work.
    fn job(&self, input: &Path, suffix: &str, max_res: MaxRes) -> anyhow::Result<Job> {
        if self
            .segment_seconds
            .is_some_and(|s| !s.is_finite() || s <= 0.0)
        {
            bail!("--segment-seconds must be positive");
        }
        let encode = EncodeSettings::new(self.codec, self.crf, self.preset.clone())?;
        let output = pipeline::output_path(input, self.output.as_deref(), suffix, "mp4");
        let mut job = Job::new(input.to_path_buf(), output, encode);
        job.max_res = max_res;
        job.overwrite = self.overwrite;
        job.keep_work = self.keep_work;
        job.segment_seconds = self.segment_seconds;
        job.share = self.segment;
        Ok(job)
    }
}

#[derive(Args)]
struct UpscaleArgs {
    /// Videos, images (png, jpg, webp) or folders of them (the models load once).
    #[arg(required = true)]
    input: Vec<PathBuf>,
    #[command(flatten)]
    upscale: UpscaleFlags,
    /// Images with transparency: upscale the alpha channel with the model (as a grey image,
    /// sharp edges; the default, as Real-ESRGAN) or resize it (bilinear, faster).
    #[arg(long, value_name = "model|resize", value_parser = parse_lib::<AlphaUpscale>)]
    alpha_upscale: Option<AlphaUpscale>,
    /// Images: write no alpha channel when the image is fully opaque.
    #[arg(long)]
    drop_opaque_alpha: bool,
    #[command(flatten)]
    out: VideoOut,
}

#[derive(Args)]
struct StylizeArgs {
    /// The videos to restyle, or folders of them (never modified; the models load once).
    #[arg(required = true)]
    input: Vec<PathBuf>,
    /// What the frames should look like ("anime style").
    #[arg(short, long)]
    prompt: Option<String>,
    /// What they should not look like.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Stable Diffusion model: a Hugging Face id, a local diffusers folder or a .safetensors/.ckpt
    /// file [default: stabilityai/stable-diffusion-2-base; with --fast stabilityai/sd-turbo].
    #[arg(short, long)]
    model_id: Option<String>,
    /// ControlNet that keeps each frame's structure while the prompt changes its look: a
    /// Hugging Face id (thibaud/controlnet-sd21-canny-diffusers for SD 2, lllyasviel/sd-controlnet-canny
    /// for SD 1.5), a local diffusers folder or a single .safetensors/.pth file. Repeat for
    /// several nets; their effects add up.
    #[arg(short, long, value_name = "ID|DIR|FILE")]
    controlnet_id: Vec<String>,
    /// What each ControlNet sees: canny (the frame's edges; the default), frame (the frame
    /// itself: tile and colour nets) or video (the frame of the same number in
    /// --control-video). Once for every net, or once per net in -c order.
    #[arg(long, value_name = "canny|frame|video")]
    control: Vec<String>,
    /// A video whose frames are the control maps (depth, pose, line art from any tool), with
    /// the input's frame count; one per net whose --control is video, in order (alone, it
    /// makes every net read one).
    #[arg(long, value_name = "PATH")]
    control_video: Vec<PathBuf>,
    /// Canny thresholds LOW,HIGH on the gradient (the ControlNet annotators' 100,200); lower
    /// finds more edges.
    #[arg(long, default_value = "100,200", value_parser = parse_canny, value_name = "LOW,HIGH")]
    canny: (f64, f64),
    /// How strongly each ControlNet steers (default 1.0, as diffusers' video ControlNet
    /// pipelines and the nets' training; its image-to-image pipeline uses 0.8). Once for
    /// every net, or once per net.
    #[arg(long, value_name = "SCALE")]
    controlnet_scale: Vec<f64>,
    /// Fraction of the denoising steps at which the nets start steering (0..1); once, or
    /// once per net.
    #[arg(long, value_parser = unit_interval, value_name = "FRACTION")]
    control_guidance_start: Vec<f64>,
    /// Fraction of the denoising steps at which the nets stop steering (0..1); once, or
    /// once per net.
    #[arg(long, value_parser = unit_interval, value_name = "FRACTION")]
    control_guidance_end: Vec<f64>,
    /// ControlNet guess mode: the nets steer without seeing the prompt (for control maps
    /// that should hold even against it).
    #[arg(long)]
    guess_mode: bool,
    /// Temporal consistency with AnimateDiff: motion modules added to an SD 1.5 model denoise
    /// windows of frames together (needs -m with an SD 1.5 model; --consistency none).
    #[arg(long)]
    animatediff: bool,
    /// The AnimateDiff motion adapter: a Hugging Face id, a diffusers folder or an original
    /// mm_sd_v15*.ckpt / .safetensors file.
    #[arg(long, default_value = MOTION_ADAPTER, value_name = "ID|DIR|FILE", requires = "animatediff")]
    motion_adapter: String,
    /// Frames the motion modules see at once (at most the adapter's 32; trained on 16).
    #[arg(long, default_value_t = 16, value_name = "N", requires = "animatediff")]
    context_length: usize,
    /// Frames two neighbouring context windows share.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "animatediff")]
    context_overlap: usize,
    /// How the predictions of overlapping windows are averaged: pyramid (a window's middle
    /// counts most) or flat.
    #[arg(long, default_value = "pyramid", value_parser = parse_lib::<Fuse>, requires = "animatediff")]
    context_fuse: Fuse,
    /// How much each frame changes, 0 (not at all) to 1 (entirely).
    #[arg(short, long, default_value_t = 0.6, value_parser = unit_interval)]
    strength: f64,
    /// Denoising steps (of which strength × steps run).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000),
          conflicts_with = "fast")]
    steps: u32,
    /// Classifier-free guidance scale (1 disables the negative prompt).
    #[arg(long, default_value_t = 7.5, conflicts_with = "fast")]
    guidance: f64,
    /// Random seed; the same seed gives the same video. Random and printed when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Sampler: ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, lcm.
    #[arg(long, default_value = "ddim", conflicts_with = "fast")]
    scheduler: String,
    /// Few-step sampling, 6-12x faster per frame: the tiny VAE (unless --vae says otherwise),
    /// no negative-prompt pass, and by model: an LCM-distilled UNet runs the lcm sampler, 4
    /// steps (2 run at strength 0.6), its guidance 8 embedded; a few-step distilled model
    /// (scheduler timestep_spacing trailing, as stabilityai/sd-turbo) runs euler without
    /// guidance, one step at the strength's noise level; an SD 1.x model gets the LCM-LoRA
    /// latent-consistency/lcm-lora-sdv1-5 fused in and runs lcm, 4 steps, guidance 1. SD 2.x
    /// models have no LCM-LoRA and are refused; without --model-id, --fast runs
    /// stabilityai/sd-turbo. Replaces --steps, --guidance and --scheduler.
    #[arg(long)]
    fast: bool,
    /// Hub revision (branch, tag or commit) of --model-id.
    #[arg(long)]
    revision: Option<String>,
    /// Weight file variant on the hub, e.g. fp16.
    #[arg(long)]
    variant: Option<String>,
    /// Use only the local Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Model precision: f32, f16 or bf16 (default: f32 on CPU, f16 on GPU).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// A LoRA fused into the model: a .safetensors file (kohya/A1111 or diffusers/PEFT keys), or
    /// a folder or Hugging Face id holding pytorch_lora_weights.safetensors
    /// (latent-consistency/lcm-lora-sdv1-5 with --scheduler lcm --steps 4 --guidance 1), with
    /// an optional :SCALE (default 1). Repeat for several; their effects add up.
    #[arg(long, value_name = "FILE|DIR|ID[:SCALE]", value_parser = parse_lora)]
    lora: Vec<(String, f64)>,
    /// The auto-encoder between pixels and latents: full (the model's own), tiny (TAESD,
    /// madebyollin/taesd: encode + decode in a fraction of the time, a little less detail), or
    /// another tiny VAE's Hugging Face id or diffusers folder [default: full; with --fast tiny].
    #[arg(long, value_name = "full|tiny|ID|DIR")]
    vae: Option<String>,
    /// Tile the VAE: auto (when untiled would need over 2 GiB of activations), on, off.
    #[arg(long, default_value = "auto", value_parser = parse_vae_tiling)]
    vae_tiling: VaeTiling,
    /// GPU: keep the VAE on the CPU (f32), so its weights and its decoder's full-resolution
    /// activations (the peak of a 720p frame) never take GPU memory; encode and decode then
    /// cost CPU time per frame.
    #[arg(long)]
    offload: bool,
    /// GPU: the memory this run may use, in GB (your card's, or less to leave room). Before
    /// the first frame the run's peak (weights as loaded, activations for the frame size) is
    /// estimated and, over 85 % of this, refused with the flags that bring it down.
    #[arg(long, value_name = "GB")]
    max_vram: Option<f64>,
    /// Draw new noise for every frame (default: the same noise for all frames, less flicker).
    #[arg(long)]
    noise_per_frame: bool,
    /// How frames are kept consistent: cross-frame+flow (both below; the default, or
    /// cross-frame with --keyframe-every), cross-frame (every frame's self-attention also
    /// looks at the first frame), flow (the previous restyled frame is carried along the
    /// motion into the next), none (every frame on its own).
    #[arg(long, value_parser = parse_consistency)]
    consistency: Option<Consistency>,
    /// Testing: the keys cross-frame attention uses: anchor, or anchor+self.
    #[arg(long, hide = true, default_value = "anchor", value_parser = parse_cross_frame_keys)]
    cross_frame_keys: CrossFrameKeys,
    /// Restyle only every K-th frame with Stable Diffusion and carry the style to the frames
    /// between along the optical flow from both neighbouring keyframes (about K× faster).
    #[arg(long, default_value_t = 1, value_name = "K")]
    keyframe_every: u64,
    /// Testing: flow-fusion weights LATENT,PIXEL (0..1 each).
    #[arg(long, hide = true, value_parser = parse_fusion_weights)]
    flow_blend: Option<FusionWeights>,
    /// Upscale the stylized frames ×4 with Real-ESRGAN, to full HD (see --upscale-to).
    #[arg(long)]
    upscale: bool,
    #[command(flatten)]
    upscale_flags: UpscaleFlags,
    /// Short side of the stylized frames: 480p, 720p, 1080p or original.
    #[arg(long, default_value = "480p", value_parser = parse_lib::<MaxRes>)]
    max_res: MaxRes,
    #[command(flatten)]
    out: VideoOut,
    /// Render N frames spread over the video (default 4) with these settings and seed, as the
    /// run renders them at a segment start, write a contact sheet <output stem>_preview.png (originals above, results below,
    /// settings and seconds per frame under them), print the estimated time for the whole
    /// video, and stop: try settings in seconds to minutes before committing hours.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "4",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    preview: Option<u64>,
    /// Testing: replace the model stages by `identity` or `invert` to exercise the video path.
    #[arg(long, hide = true)]
    frame_stage: Option<String>,
    /// Testing: sleep this long per frame (to interrupt a run mid-way).
    #[arg(long, hide = true, default_value_t = 0)]
    frame_stage_delay_ms: u64,
}

impl StylizeArgs {
    /// The AnimateDiff context windows of the flags.
    fn context(&self) -> ContextOptions {
        ContextOptions {
            length: self.context_length,
            overlap: self.context_overlap,
            fuse: self.context_fuse,
        }
    }

    /// `--model-id`, or the default for the mode.
    fn model(&self) -> &str {
        match (&self.model_id, self.fast) {
            (Some(id), _) => id,
            (None, true) => FAST_MODEL,
            (None, false) => DEFAULT_MODEL,
        }
    }

    /// `--vae`, or the default for the mode.
    fn vae_choice(&self) -> &str {
        match (&self.vae, self.fast) {
            (Some(v), _) => v,
            (None, true) => "tiny",
            (None, false) => "full",
        }
    }
}

fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..1"))
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!("unknown dtype `{s}` (f32, f16 or bf16)")),
    }
}

fn parse_vae_tiling(s: &str) -> Result<VaeTiling, String> {
    match s {
        "auto" => Ok(VaeTiling::Auto),
        "on" => Ok(VaeTiling::On),
        "off" => Ok(VaeTiling::Off),
        _ => Err(format!("unknown VAE tiling `{s}` (auto, on or off)")),
    }
}

/// For clap: a library type parsed by its `FromStr`, whose errors name the flag.
fn parse_lib<T: std::str::FromStr<Err = Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_flow_preset(s: &str) -> Result<DisPreset, String> {
    match s {
        "ultrafast" => Ok(DisPreset::UltraFast),
        "fast" => Ok(DisPreset::Fast),
        "medium" => Ok(DisPreset::Medium),
        _ => Err(format!(
            "unknown flow preset `{s}` (ultrafast, fast or medium)"
        )),
    }
}

/// `--consistency`: the temporal techniques a stylize run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    None,
    CrossFrame,
    Flow,
    CrossFrameFlow,
}

fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "none" => Ok(Consistency::None),
        "cross-frame" => Ok(Consistency::CrossFrame),
        "flow" => Ok(Consistency::Flow),
        "cross-frame+flow" => Ok(Consistency::CrossFrameFlow),
        _ => Err(format!(
            "unknown consistency `{s}` (none, cross-frame, flow or cross-frame+flow)"
        )),
    }
}

fn parse_fusion_weights(s: &str) -> Result<FusionWeights, String> {
    let weight = |v: &str| match v.trim().parse::<f32>() {
        Ok(w) if (0.0..=1.0).contains(&w) => Ok(w),
        _ => Err(format!("`{v}` is not a weight between 0 and 1")),
    };
    match s.split_once(',') {
        Some((latent, pixel)) => Ok(FusionWeights {
            latent: weight(latent)?,
            pixel: weight(pixel)?,
        }),
        None => Err("expected LATENT,PIXEL, e.g. 0.5,0.5".into()),
    }
}

fn parse_cross_frame_keys(s: &str) -> Result<CrossFrameKeys, String> {
    match s {
        "anchor" => Ok(CrossFrameKeys::Anchor),
        "anchor+self" => Ok(CrossFrameKeys::AnchorAndSelf),
        _ => Err(format!(
            "unknown cross-frame keys `{s}` (anchor or anchor+self)"
        )),
    }
}

fn parse_share(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not K/N with 1 <= K <= N (e.g. 3/8)");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n) = (
        k.trim().parse::<u32>().map_err(|_| bad())?,
        n.trim().parse::<u32>().map_err(|_| bad())?,
    );
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// A test stage that can be slowed down.
struct Delayed {
    inner: Box<dyn FrameStage>,
    delay: std::time::Duration,
}

impl FrameStage for Delayed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        self.inner.output_size(w, h)
    }
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }
    fn process(&mut self, frame: stylizer::Frame, index: u64) -> stylizer::Result<stylizer::Frame> {
        std::thread::sleep(self.delay);
        self.inner.process(frame, index)
    }
}

/// The model stages the flags ask for. Features that have not landed stop here, before any
/// work, instead of being silently ignored.
fn build_stages(
    a: &StylizeArgs,
    seed: u64,
    progress: &CliProgress,
) -> anyhow::Result<Vec<Box<dyn FrameStage>>> {
    let mut stages: Vec<Box<dyn FrameStage>> = Vec::new();
    match &a.frame_stage {
        Some(name) => {
            let inner: Box<dyn FrameStage> = match name.as_str() {
                "identity" => Box::new(Identity),
                "invert" => Box::new(Invert),
                _ => bail!("unknown --frame-stage `{name}` (identity or invert)"),
            };
            stages.push(if a.frame_stage_delay_ms > 0 {
                Box::new(Delayed {
                    inner,
                    delay: std::time::Duration::from_millis(a.frame_stage_delay_ms),
                })
            } else {
                inner
            });
        }
        None => stages.push(Box::new(
            sd_stage(a, seed)?.with_progress(Box::new(progress.for_stage())),
        )),
    }
    if a.upscale {
        stages.push(Box::new(a.upscale_flags.stage(&a.out.device)?));
    }
    Ok(stages)
}

/// The Stable Diffusion stage from the flags; nothing is loaded until the first frame is due.
fn sd_stage(a: &StylizeArgs, seed: u64) -> anyhow::Result<StylizeStage> {
    let Some(prompt) = a.prompt.clone() else {
        bail!("--prompt is required (what the frames should look like, e.g. --prompt \"anime style\")");
    };
    let mut load = LoadOptions::new(stylizer::device::select(&a.out.device)?);
    load.dtype = a.dtype;
    load.hub.revision = a.revision.clone();
    load.hub.variant = a.variant.clone();
    load.hub.offline |= a.offline;
    load.vae_tiling = a.vae_tiling;
    if a.offload || a.max_vram.is_some() {
        if load.device.is_cpu() {
            bail!(
                "--offload and --max-vram plan GPU memory; this run is on the CPU (use --device cuda)"
            );
        }
        if a.max_vram.is_some_and(|gb| !(gb.is_finite() && gb > 0.0)) {
            bail!("--max-vram must be a positive number of GB");
        }
    }
    load.offload_vae = a.offload;
    load.loras = a
        .lora
        .iter()
        .map(|(source, scale)| Ok((ModelSource::parse(source)?, *scale)))
        .collect::<stylizer::Result<Vec<_>>>()?;
    load.tiny_vae = match a.vae_choice() {
        "full" => None,
        "tiny" => Some(ModelSource::Hub(TINY_VAE.into())),
        other => Some(ModelSource::parse(other)?),
    };
    // Keyframes are diffused apart, with the frames between carried by flow already;
    // AnimateDiff's motion modules do the work of the other modes.
    let consistency = a
        .consistency
        .unwrap_or(match (a.animatediff, a.keyframe_every) {
            (true, _) => Consistency::None,
            (false, 1) => Consistency::CrossFrameFlow,
            (false, _) => Consistency::CrossFrame,
        });
    Ok(StylizeStage::new(StylizeSettings {
        model: ModelSource::parse(a.model())?,
        load,
        prompt,
        negative_prompt: a.negative_prompt.clone(),
        params: Img2ImgParams {
            strength: a.strength,
            steps: a.steps as usize,
            guidance: a.guidance,
            scheduler: a.scheduler.parse::<SchedulerKind>()?,
        },
        fast: a.fast,
        seed,
        noise_per_frame: a.noise_per_frame,
        cross_frame: matches!(
            consistency,
            Consistency::CrossFrame | Consistency::CrossFrameFlow
        )
        .then_some(a.cross_frame_keys),
        flow: matches!(consistency, Consistency::Flow | Consistency::CrossFrameFlow)
            .then(|| a.flow_blend.unwrap_or_default()),
        keyframe_every: a.keyframe_every,
        controlnets: controlnets(a)?,
        guess_mode: a.guess_mode,
        animatediff: a
            .animatediff
            .then(|| -> stylizer::Result<_> {
                Ok(AnimateDiffSettings {
                    adapter: ModelSource::parse(&a.motion_adapter)?,
                    context: a.context(),
                })
            })
            .transpose()?,
        max_vram_gb: a.max_vram,
    })?)
}

/// The ControlNets of `-c` with their `--control*` settings, matched up per net.
fn controlnets(a: &StylizeArgs) -> anyhow::Result<Vec<ControlNetSpec>> {
    let n = a.controlnet_id.len();
    let given = [
        ("--control", a.control.len()),
        ("--control-video", a.control_video.len()),
        ("--controlnet-scale", a.controlnet_scale.len()),
        ("--control-guidance-start", a.control_guidance_start.len()),
        ("--control-guidance-end", a.control_guidance_end.len()),
        ("--guess-mode", usize::from(a.guess_mode)),
    ];
    if n == 0 {
        if let Some((flag, _)) = given.iter().find(|(_, k)| *k > 0) {
            bail!("{flag} needs a ControlNet: add --controlnet-id (e.g. -c thibaud/controlnet-sd21-canny-diffusers)");
        }
        return Ok(Vec::new());
    }
    for (flag, k) in &given[..5] {
        if *k > 1 && *k != n && *flag != "--control-video" {
            bail!("{flag} is given {k} times for {n} ControlNets: give it once (for every net) or once per net");
        }
    }
    // `--control-video` alone: every net reads one.
    let kinds: Vec<String> = match (a.control.len(), a.control_video.len()) {
        (0, 0) => vec!["canny".into(); n],
        (0, _) => vec!["video".into(); n],
        (1, _) => vec![a.control[0].clone(); n],
        _ => a.control.clone(),
    };
    let wants_video = kinds.iter().filter(|k| *k == "video").count();
    if wants_video != a.control_video.len() {
        bail!(
            "{wants_video} ControlNet(s) read a control video but {} --control-video given: give one per net whose --control is video",
            a.control_video.len()
        );
    }
    let pick = |v: &[f64], i: usize, default: f64| match v.len() {
        0 => default,
        1 => v[0],
        _ => v[i],
    };
    let mut videos = a.control_video.iter();
    let mut specs = Vec::with_capacity(n);
    for (i, (id, kind)) in a.controlnet_id.iter().zip(&kinds).enumerate() {
        let control = match kind.as_str() {
            "canny" => ControlSource::Canny {
                low: a.canny.0,
                high: a.canny.1,
            },
            "frame" => ControlSource::Frame,
            "video" => ControlSource::Video(videos.next().expect("counted above").clone()),
            other => bail!("unknown --control `{other}` (canny, frame or video)"),
        };
        let weight = ControlWeight {
            scale: pick(&a.controlnet_scale, i, 1.0),
            start: pick(&a.control_guidance_start, i, 0.0),
            end: pick(&a.control_guidance_end, i, 1.0),
        };
        if weight.start >= weight.end {
            bail!(
                "ControlNet {id}: --control-guidance-start {} must be below --control-guidance-end {}",
                weight.start,
                weight.end
            );
        }
        specs.push(ControlNetSpec {
            model: ModelSource::parse(id)?,
            control,
            weight,
        });
    }
    Ok(specs)
}

/// `FILE|DIR|ID[:SCALE]`: a trailing `:number` is the scale.
fn parse_lora(s: &str) -> Result<(String, f64), String> {
    match s.rsplit_once(':') {
        Some((source, scale)) if !source.is_empty() => match scale.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok((source.to_string(), v)),
            Ok(_) => Err(format!("LoRA scale `{scale}` is not a finite number")),
            // Not a number: part of the name (a Windows drive, say).
            Err(_) => Ok((s.to_string(), 1.0)),
        },
        _ => Ok((s.to_string(), 1.0)),
    }
}

fn parse_canny(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("`{s}` is not LOW,HIGH (two numbers, e.g. 100,200)");
    let (low, high) = s.split_once(',').ok_or_else(bad)?;
    let (low, high): (f64, f64) = (
        low.trim().parse().map_err(|_| bad())?,
        high.trim().parse().map_err(|_| bad())?,
    );
    if !(low >= 0.0 && high >= low && high.is_finite()) {
        return Err(format!("Canny thresholds need 0 <= LOW <= HIGH, got {s}"));
    }
    Ok((low, high))
}

/// Probes the input, runs the job, reports the outcome.
fn render(
    job: Job,
    stages: &mut [Box<dyn FrameStage>],
    progress: &mut CliProgress,
) -> anyhow::Result<ExitCode> {
    progress.stage(Stage::Probe);
    let info = probe(&job.input)?;
    let outcome = pipeline::run(&job, &info, stages, progress);
    progress.finish();
    report(outcome?)
}

fn stylize(a: StylizeArgs, progress: &mut CliProgress) -> anyhow::Result<ExitCode> {
    // Everything that can be checked without the input is checked first.
    if !a.guidance.is_finite() || a.guidance < 0.0 {
        bail!(
            "invalid value {} for --guidance: expected a number >= 0",
            a.guidance
        );
    }
    stylizer::device::select(&a.out.device)?;
    let inputs = pipeline::expand_inputs(&a.input, stylizer::video::is_video, "videos")?;
    check_output_folder(a.out.output.as_deref(), inputs.len())?;
    let mut jobs = inputs
        .iter()
        .map(|i| a.out.job(i, "stylized", a.max_res))
        .collect::<anyhow::Result<Vec<Job>>>()?;
    check_distinct_outputs(jobs.iter().map(|j| (&j.input, &j.output)))?;
    // Same seed ⇒ same video: a rerun without --seed resumes with the unfinished run's seed,
    // and shares of one job must agree on it. A batch runs with one seed.
    let unfinished = jobs
        .iter()
        .find_map(|j| pipeline::resume_seed(j).map(|seed| (seed, j.work_dir())));
    let seed = match (a.seed, unfinished) {
        (Some(seed), _) => seed,
        (None, Some((seed, work))) => {
            eprintln!(
                "seed {seed} (from the unfinished run in {})",
                work.display()
            );
            seed
        }
        (None, None) if a.out.segment.is_some() && a.frame_stage.is_none() => {
            bail!("--segment needs --seed, so that every share draws the same noise")
        }
        (None, None) => {
            let seed = random_seed();
            if a.frame_stage.is_none() {
                eprintln!("seed {seed} (pass --seed {seed} to render the same video again)");
            }
            seed
        }
    };
    if a.frame_stage.is_none() {
        for job in &mut jobs {
            job.seed = Some(seed);
        }
    }
    let mut stages = build_stages(&a, seed, progress)?;
    if let Some(n) = a.preview {
        let settings = preview_settings(&a, seed);
        let frames_per_render = match a.animatediff {
            true => ChunkGrid::new(&a.context()).stride(),
            false => 1,
        };
        for job in &jobs {
            preview::run(job, &mut stages, n, &settings, frames_per_render, progress)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut batch = Batch::new(jobs.len());
    for job in jobs {
        batch.render(job, &mut stages, progress)?;
    }
    Ok(batch.exit())
}

/// The settings a preview sheet shows under its frames.
fn preview_settings(a: &StylizeArgs, seed: u64) -> Vec<String> {
    let mut lines = vec![
        format!("prompt: {}", a.prompt.as_deref().unwrap_or("")),
        format!("model: {}  vae: {}", a.model(), a.vae_choice()),
        match a.fast {
            true => format!(
                "strength {}  --fast  seed {}  max-res {:?}",
                a.strength, seed, a.max_res
            ),
            false => format!(
                "strength {}  steps {}  guidance {}  {}  seed {}  max-res {:?}",
                a.strength, a.steps, a.guidance, a.scheduler, seed, a.max_res
            ),
        },
    ];
    if !a.negative_prompt.is_empty() {
        lines.insert(1, format!("negative: {}", a.negative_prompt));
    }
    for (lora, scale) in &a.lora {
        lines.push(format!("lora: {lora} x{scale}"));
    }
    for (i, c) in a.controlnet_id.iter().enumerate() {
        let control = a.control.get(i).or(a.control.first());
        lines.push(format!(
            "controlnet: {c} ({})",
            control.map_or("canny", |c| c.as_str())
        ));
    }
    if let Some(c) = a.consistency {
        lines.push(format!("consistency: {c:?}"));
    }
    if a.keyframe_every > 1 {
        lines.push(format!("keyframe every {}", a.keyframe_every));
    }
    if a.animatediff {
        lines.push(format!(
            "animatediff: {} (context {}, overlap {}, {})",
            a.motion_adapter, a.context_length, a.context_overlap, a.context_fuse
        ));
    }
    if a.upscale {
        lines.push("upscale: on".into());
    }
    lines
}

/// `-o` with several outputs must be a folder.
fn check_output_folder(output: Option<&Path>, outputs: usize) -> anyhow::Result<()> {
    match output {
        Some(o) if outputs > 1 && !o.is_dir() => bail!(
            "{}: with several inputs, -o must be an existing folder",
            o.display()
        ),
        _ => Ok(()),
    }
}

/// Two inputs may not write the same file (a.mp4 and a.mov both make a_stylized.mp4).
fn check_distinct_outputs<'a>(
    pairs: impl Iterator<Item = (&'a PathBuf, &'a PathBuf)>,
) -> anyhow::Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (input, output) in pairs {
        if let Some(other) = seen.insert(output, input) {
            bail!(
                "{} and {} would both be written to {}; use -o with separate folders",
                other.display(),
                input.display(),
                output.display()
            );
        }
    }
    Ok(())
}

/// The inputs of one command, run in turn with the models loaded once. A failure that
/// concerns one input (unreadable, damaged, an output that cannot be written) is reported
/// and the rest go on; any other (a model, Ctrl-C) stops the batch. A single input is not
/// a batch: its error is the command's.
struct Batch {
    total: usize,
    done: usize,
    failed: Vec<PathBuf>,
}

impl Batch {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            failed: Vec::new(),
        }
    }

    fn run(
        &mut self,
        input: &Path,
        progress: &mut CliProgress,
        one: impl FnOnce(&mut CliProgress) -> anyhow::Result<ExitCode>,
    ) -> anyhow::Result<()> {
        self.done += 1;
        if self.total == 1 {
            return one(progress).map(drop);
        }
        progress.heading(&format!(
            "[{}/{}] {}",
            self.done,
            self.total,
            input.display()
        ));
        let Err(e) = one(progress) else {
            return Ok(());
        };
        progress.finish();
        let about_this_input = e.downcast_ref::<Error>().is_some_and(|e| {
            matches!(
                e,
                Error::Input { .. }
                    | Error::Output { .. }
                    | Error::Ffmpeg { .. }
                    | Error::Io { .. }
            )
        });
        if !about_this_input {
            return Err(e);
        }
        eprintln!("error: {e:#}");
        self.failed.push(input.to_path_buf());
        Ok(())
    }

    /// Renders one video of the batch. In a batch, an input whose output is finished (there,
    /// with no unfinished run) is skipped, so that rerunning a batch that stopped half-way
    /// resumes it.
    fn render(
        &mut self,
        job: Job,
        stages: &mut [Box<dyn FrameStage>],
        progress: &mut CliProgress,
    ) -> anyhow::Result<()> {
        let input = job.input.clone();
        if self.total > 1 && !job.overwrite && job.output.exists() && !job.work_dir().exists() {
            self.done += 1;
            progress.heading(&format!(
                "[{}/{}] {}: {} is there, skipped (--overwrite renders it again)",
                self.done,
                self.total,
                input.display(),
                job.output.display()
            ));
            return Ok(());
        }
        self.run(&input, progress, |p| render(job, stages, p))
    }

    /// Success only when every input succeeded; the failed ones are listed.
    fn exit(self) -> ExitCode {
        if self.failed.is_empty() {
            return ExitCode::SUCCESS;
        }
        let names: Vec<String> = self
            .failed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "{} of {} inputs failed: {}",
            self.failed.len(),
            self.total,
            names.join(", ")
        );
        ExitCode::from(1)
    }
}

/// A seed from the clock and the process id (only needs to differ between runs).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() % 1_000_000_000
}

fn upscale(a: UpscaleArgs, progress: &mut CliProgress) -> anyhow::Result<ExitCode> {
    let mut stage = a.upscale.stage(&a.out.device)?;
    let inputs = pipeline::expand_inputs(
        &a.input,
        |p| images::is_image(p) || stylizer::video::is_video(p),
        "videos or images (png, jpg, webp)",
    )?;
    let (pictures, videos): (Vec<PathBuf>, Vec<PathBuf>) =
        inputs.into_iter().partition(|p| images::is_image(p));
    if pictures.is_empty() && (a.alpha_upscale.is_some() || a.drop_opaque_alpha) {
        bail!("--alpha-upscale and --drop-opaque-alpha are for images; video frames have no alpha here");
    }
    let total = pictures.len() + videos.len();
    check_output_folder(a.out.output.as_deref(), total)?;
    // Images keep their format: `<stem>_upscaled.<ext>`.
    let targets: Vec<PathBuf> = pictures
        .iter()
        .map(|i| {
            let ext = i.extension().unwrap_or_default().to_string_lossy();
            pipeline::output_path(i, a.out.output.as_deref(), "upscaled", &ext)
        })
        .collect();
    // Videos are upscaled from their own size: `--max-res` belongs to stylizing.
    let jobs = videos
        .iter()
        .map(|v| {
            let mut job = a.out.job(v, "upscaled", MaxRes::Original)?;
            job.size_multiple = 2;
            Ok(job)
        })
        .collect::<anyhow::Result<Vec<Job>>>()?;
    check_distinct_outputs(
        pictures
            .iter()
            .zip(&targets)
            .chain(jobs.iter().map(|j| (&j.input, &j.output))),
    )?;
    // Checked for all images before the first one is processed.
    for t in &targets {
        if t.exists() && !a.out.overwrite {
            bail!(
                "{}: already exists (use --overwrite to replace it)",
                t.display()
            );
        }
    }
    let mut batch = Batch::new(total);
    if !pictures.is_empty() {
        progress.stage(Stage::LoadModels);
        stage.prepare()?;
        progress.stage(Stage::Render);
        let alpha = a.alpha_upscale.unwrap_or_default();
        for (n, (input, target)) in pictures.iter().zip(&targets).enumerate() {
            if stylizer::cancel::requested() {
                bail!("interrupted after {n} of {} images", pictures.len());
            }
            batch.run(input, progress, |_| {
                let img = images::read_image(input)?;
                let mut out = stage.upscale_image(&img, alpha)?;
                if a.drop_opaque_alpha {
                    out = images::drop_opaque_alpha(&out).unwrap_or(out);
                }
                images::write_image(&out, target)?;
                Ok(ExitCode::SUCCESS)
            })?;
            progress.frame(n as u64 + 1, pictures.len() as u64);
        }
        progress.finish();
        eprintln!("wrote {} image(s)", pictures.len() - batch.failed.len());
    }
    let mut stages: Vec<Box<dyn FrameStage>> = vec![Box::new(stage)];
    for job in jobs {
        batch.render(job, &mut stages, progress)?;
    }
    Ok(batch.exit())
}

fn models(command: ModelsCommand, progress: &mut CliProgress) -> anyhow::Result<ExitCode> {
    use stylizer::upscale::fetch;
    let dir = fetch::models_dir();
    match command {
        ModelsCommand::List => {
            out!(
                "model cache: {} (set {} to move it)",
                dir.display(),
                fetch::MODELS_ENV
            );
            for m in fetch::KNOWN_MODELS {
                let have = if dir.join(m.file).is_file() {
                    "cached"
                } else {
                    "not downloaded"
                };
                out!("  {:<28} {:>5} MB  {have}", m.name, m.bytes >> 20);
            }
        }
        ModelsCommand::Fetch { name } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the model cache {}", dir.display()))?;
            let mut last = 0u64;
            let path = fetch::fetch_model(&name, &dir, &mut |done, total| {
                // Progress in frames of 1 MiB.
                let mib = done >> 20;
                if mib != last {
                    last = mib;
                    progress.frame(mib, total.map_or(mib, |t| t >> 20));
                }
            })?;
            progress.finish();
            eprintln!("{name}: {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// ", N repeats reused" for the summary line, when there were any.
fn repeated(repeats: u64) -> String {
    match repeats {
        0 => String::new(),
        n => format!(", {n} repeated frames reused"),
    }
}

fn report(outcome: Outcome) -> anyhow::Result<ExitCode> {
    match outcome {
        Outcome::Finished {
            output,
            frames,
            repeats,
        } => {
            eprintln!(
                "wrote {} ({frames} frames{})",
                output.display(),
                repeated(repeats)
            );
        }
        Outcome::ShareDone {
            k,
            n,
            segments,
            work_dir,
            repeats,
        } => {
            eprintln!(
                "share {k}/{n}: rendered {segments} segment(s){} into {}; run `video-stylizer join {}` (or the same command without --segment) once every share is done",
                repeated(repeats),
                work_dir.display(),
                work_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_probe(input: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let i: VideoInfo = probe(input)?;
    if json {
        let v = serde_json::json!({
            "width": i.width,
            "height": i.height,
            "fps": i.fps.to_string(),
            "avg_fps": i.avg_fps.map(|r| r.to_string()),
            "frame_count": i.frame_count,
            "duration": i.duration,
            "vfr": i.vfr(),
            "timing": match i.timing {
                Timing::Constant => "constant",
                Timing::Variable { declared: true } => "variable",
                Timing::Variable { declared: false } => "variable (undeclared)",
                Timing::Dropped { .. } => "dropped frames",
            },
            "coded_frames": match i.timing {
                Timing::Dropped { coded } => Some(coded),
                _ => None,
            },
            "has_audio": i.has_audio,
            "audio_codec": i.audio_codec,
            "audio_streams": i.audio_streams,
            "subtitle_streams": i.subtitle_streams,
            "pix_fmt": i.pix_fmt,
            "bit_depth": i.bit_depth,
            "hdr": i.hdr,
            "rotation": i.rotation,
            "codec": i.codec,
            "coded_width": i.coded_width,
            "coded_height": i.coded_height,
            "video_start_offset": i.video_start_offset,
            "format": i.format_name,
        });
        out!("{v}");
    } else {
        out!("{}", i.path.display());
        out!(
            "  video:     {} {}x{} (displayed; stored {}x{}, rotation {}°)",
            i.codec,
            i.width,
            i.height,
            i.coded_width,
            i.coded_height,
            i.rotation
        );
        out!(
            "  frames:    {} at {} fps ({:.3} fps){}, {:.3} s",
            i.frame_count,
            i.fps,
            i.fps.as_f64(),
            match i.timing {
                Timing::Constant => String::new(),
                Timing::Variable { declared: true } => ", variable frame rate".into(),
                Timing::Variable { declared: false } =>
                    ", variable frame rate (found from the timestamps)".into(),
                Timing::Dropped { coded } => format!(
                    ", {} dropped frames (repeats of the picture before)",
                    i.frame_count.saturating_sub(coded)
                ),
            },
            i.duration
        );
        out!(
            "  pixels:    {}, {}-bit{}",
            i.pix_fmt,
            i.bit_depth,
            if i.hdr { ", HDR" } else { "" }
        );
        out!(
            "  audio:     {}",
            match &i.audio_codec {
                Some(c) => format!("{c} ({} stream(s))", i.audio_streams),
                None => "none".into(),
            }
        );
        out!("  subtitles: {}", i.subtitle_streams);
    }
    Ok(ExitCode::SUCCESS)
}

fn flicker(
    original: &Path,
    stylized: &Path,
    json: bool,
    preset: DisPreset,
    max_frames: Option<u64>,
    progress: &mut CliProgress,
) -> anyhow::Result<ExitCode> {
    let r = measure_files(
        original,
        stylized,
        DisParams::preset(preset),
        max_frames,
        progress,
    )?;
    progress.finish();
    if json {
        out!("{}", serde_json::to_string(&r)?);
    } else {
        out!("frames compared:     {}", r.frames);
        out!("warp error:          {:.6}", r.warp_error);
        out!("original's own:      {:.6}", r.warp_error_original);
        match r.ratio {
            Some(ratio) => {
                out!("ratio:               {ratio:.3} (1 = as steady as the original)")
            }
            None => out!("ratio:               n/a (the original does not change)"),
        }
        out!("occluded pixels:     {:.1} %", 100.0 * r.occluded_fraction);
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut progress = CliProgress::new(Mode::detect(cli.quiet));
    match cli.command {
        Command::Stylize(a) => stylize(*a, &mut progress),
        Command::Upscale(a) => upscale(*a, &mut progress),
        Command::Models { command } => models(command, &mut progress),
        Command::Probe { input, json } => print_probe(&input, json),
        Command::Flicker {
            original,
            stylized,
            json,
            flow,
            max_frames,
        } => flicker(&original, &stylized, json, flow, max_frames, &mut progress),
        Command::Join {
            work_dir,
            overwrite,
            keep_work,
        } => {
            let outcome = pipeline::join_work_dir(&work_dir, overwrite, keep_work, &mut progress)
                .with_context(|| format!("joining {}", work_dir.display()))?;
            report(outcome)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "warn,stylizer=debug,video_stylizer=debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    // First Ctrl-C / SIGTERM: stop after the current frame, clean up, keep finished
    // segments. A second one: leave at once.
    let mut hits = 0;
    if let Err(e) = ctrlc::set_handler(move || {
        hits += 1;
        if hits > 1 {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current frame (press Ctrl-C again to quit at once)…");
        stylizer::cancel::request();
    }) {
        eprintln!("warning: cannot catch Ctrl-C: {e}");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e
                .downcast_ref::<Error>()
                .is_some_and(|e| matches!(e, Error::Interrupted { .. }));
            ExitCode::from(if interrupted { 130 } else { 1 })
        }
    }
}
