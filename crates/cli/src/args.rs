//! The flags: clap declarations of every command, and the value parsers that turn one flag
//! into a value.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use stylizer::device::Precision;
use stylizer::nets::sd::cross_frame::CrossFrameKeys;
use stylizer::nets::sd::feature_bank::Keep;
use stylizer::nets::sd::vae::VaeTiling;
use stylizer::pipeline::{self, Job, Share};
use stylizer::sampling::animate::{ContextOptions, Fuse};
use stylizer::sampling::fast::FAST_MODEL;
use stylizer::sd::lora::LoraArg;
use stylizer::sd::model::DEFAULT_MODEL;
use stylizer::stylize::canny::Thresholds;
use stylizer::stylize::temporal::{Consistency, Noise, MOTION_ADAPTER};
use stylizer::temporal::flow::DisPreset;
use stylizer::temporal::fusion::FlowFusion;
use stylizer::upscale::{resize::Target, AlphaUpscale, UpscaleOptions, UpscaleStage};
use stylizer::video::{Codec, EncodeSettings, MaxRes};
use stylizer::Error;

#[derive(Parser)]
#[command(
    name = "video-stylizer",
    version,
    about = "Restyle a video with a text prompt (Stable Diffusion img2img + Real-ESRGAN + ffmpeg)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// No progress output (warnings and errors are still printed).
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        #[arg(long, default_value = "medium", value_parser = parse_lib::<DisPreset>)]
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
pub(crate) enum ModelsCommand {
    /// Download a model into the cache (checked with sha256, resumable).
    Fetch { name: String },
    /// List the downloadable models and the cache folder.
    List,
}

/// Real-ESRGAN settings shared by `stylize --upscale` and `upscale`.
#[derive(Args)]
pub(crate) struct UpscaleFlags {
    /// Real-ESRGAN model: a name in the model cache (see `models list`) or a .pth,
    /// .safetensors or ncnn .param file.
    #[arg(long, default_value = stylizer::upscale::fetch::DEFAULT_MODEL)]
    pub(crate) upscale_model: String,
    /// Size after upscaling: 1080p (fit 1920×1080), 1440p, 2160p, x2 or x4.
    #[arg(long, default_value = "1080p", value_parser = parse_lib::<Target>)]
    pub(crate) upscale_to: Target,
    /// Tile size in input pixels (0 = whole frame; default: the largest that fits in memory).
    #[arg(long)]
    pub(crate) tile: Option<usize>,
    /// Context pixels around each tile.
    #[arg(long, default_value_t = 10)]
    pub(crate) tile_pad: usize,
}

impl UpscaleFlags {
    pub(crate) fn stage(&self, device: &str) -> anyhow::Result<UpscaleStage> {
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
pub(crate) struct VideoOut {
    /// Output file or folder (default: next to the input, named after it).
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    /// Video codec: h265, h264 or av1.
    #[arg(long, default_value = "h265", value_parser = parse_lib::<Codec>)]
    pub(crate) codec: Codec,
    /// Constant rate factor (default: 26 for h265, 21 for h264, 32 for av1).
    #[arg(long)]
    pub(crate) crf: Option<u32>,
    /// Encoder preset (x264/x265: ultrafast … veryslow; av1: 0 … 13).
    #[arg(long)]
    pub(crate) preset: Option<String>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Where to run the models: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// Keep the work folder (finished segments) after success.
    #[arg(long)]
    pub(crate) keep_work: bool,
    /// Render only share K of N into the work folder (for job arrays); a run without it joins.
    #[arg(long, value_name = "K/N", value_parser = parse_lib::<Share>)]
    pub(crate) segment: Option<Share>,
    /// Seconds of video per resumable segment (each costs an encoder start: not much shorter);
    /// default 5, or 30 when no model runs.
    #[arg(long, hide = true)]
    pub(crate) segment_seconds: Option<f64>,
}

impl VideoOut {
    /// The job for `input`, with every flag checked before any work.
    pub(crate) fn job(&self, input: &Path, suffix: &str, max_res: MaxRes) -> anyhow::Result<Job> {
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
        job.share = self.segment.map(|s| (s.k, s.n));
        Ok(job)
    }
}

#[derive(Args)]
pub(crate) struct UpscaleArgs {
    /// Videos, images (png, jpg, webp) or folders of them (the models load once).
    #[arg(required = true)]
    pub(crate) input: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) upscale: UpscaleFlags,
    /// Images with transparency: upscale the alpha channel with the model (as a grey image,
    /// sharp edges; the default, as Real-ESRGAN) or resize it (bilinear, faster).
    #[arg(long, value_name = "model|resize", value_parser = parse_lib::<AlphaUpscale>)]
    pub(crate) alpha_upscale: Option<AlphaUpscale>,
    /// Images: write no alpha channel when the image is fully opaque.
    #[arg(long)]
    pub(crate) drop_opaque_alpha: bool,
    #[command(flatten)]
    pub(crate) out: VideoOut,
}

#[derive(Args)]
pub(crate) struct StylizeArgs {
    /// The videos to restyle, or folders of them (never modified; the models load once).
    #[arg(required = true)]
    pub(crate) input: Vec<PathBuf>,
    /// What the frames should look like ("anime style").
    #[arg(short, long)]
    pub(crate) prompt: Option<String>,
    /// What they should not look like.
    #[arg(long, default_value = "")]
    pub(crate) negative_prompt: String,
    /// Stable Diffusion model: a Hugging Face id, a local diffusers folder or a .safetensors/.ckpt
    /// file [default: stabilityai/stable-diffusion-2-base; with --fast stabilityai/sd-turbo].
    #[arg(short, long)]
    pub(crate) model_id: Option<String>,
    /// ControlNet that keeps each frame's structure while the prompt changes its look: a
    /// Hugging Face id (thibaud/controlnet-sd21-canny-diffusers for SD 2, lllyasviel/sd-controlnet-canny
    /// for SD 1.5), a local diffusers folder or a single .safetensors/.pth file. Repeat for
    /// several nets; their effects add up.
    #[arg(short, long, value_name = "ID|DIR|FILE")]
    pub(crate) controlnet_id: Vec<String>,
    /// What each ControlNet sees: canny (the frame's edges; the default), frame (the frame
    /// itself: tile and colour nets) or video (the frame of the same number in
    /// --control-video). Once for every net, or once per net in -c order.
    #[arg(long, value_name = "canny|frame|video")]
    pub(crate) control: Vec<String>,
    /// A video whose frames are the control maps (depth, pose, line art from any tool), with
    /// the input's frame count; one per net whose --control is video, in order (alone, it
    /// makes every net read one).
    #[arg(long, value_name = "PATH")]
    pub(crate) control_video: Vec<PathBuf>,
    /// Canny thresholds LOW,HIGH on the gradient (the ControlNet annotators' 100,200); lower
    /// finds more edges.
    #[arg(long, default_value = "100,200", value_parser = parse_lib::<Thresholds>, value_name = "LOW,HIGH")]
    pub(crate) canny: Thresholds,
    /// How strongly each ControlNet steers (default 1.0, as diffusers' video ControlNet
    /// pipelines and the nets' training; its image-to-image pipeline uses 0.8). Once for
    /// every net, or once per net.
    #[arg(long, value_name = "SCALE")]
    pub(crate) controlnet_scale: Vec<f64>,
    /// Fraction of the denoising steps at which the nets start steering (0..1); once, or
    /// once per net.
    #[arg(long, value_parser = unit_interval, value_name = "FRACTION")]
    pub(crate) control_guidance_start: Vec<f64>,
    /// Fraction of the denoising steps at which the nets stop steering (0..1); once, or
    /// once per net.
    #[arg(long, value_parser = unit_interval, value_name = "FRACTION")]
    pub(crate) control_guidance_end: Vec<f64>,
    /// ControlNet guess mode: the nets steer without seeing the prompt (for control maps
    /// that should hold even against it).
    #[arg(long)]
    pub(crate) guess_mode: bool,
    /// Temporal consistency with AnimateDiff: motion modules added to an SD 1.5 model denoise
    /// windows of frames together (needs -m with an SD 1.5 model; --consistency none).
    #[arg(long)]
    pub(crate) animatediff: bool,
    /// The AnimateDiff motion adapter: a Hugging Face id, a diffusers folder or an original
    /// mm_sd_v15*.ckpt / .safetensors file.
    #[arg(long, default_value = MOTION_ADAPTER, value_name = "ID|DIR|FILE", requires = "animatediff")]
    pub(crate) motion_adapter: String,
    /// Frames the motion modules see at once (at most the adapter's 32; trained on 16).
    #[arg(long, default_value_t = 16, value_name = "N", requires = "animatediff")]
    pub(crate) context_length: usize,
    /// Frames two neighbouring context windows share.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "animatediff")]
    pub(crate) context_overlap: usize,
    /// How the predictions of overlapping windows are averaged: pyramid (a window's middle
    /// counts most) or flat.
    #[arg(long, default_value = "pyramid", value_parser = parse_lib::<Fuse>, requires = "animatediff")]
    pub(crate) context_fuse: Fuse,
    /// How much each frame changes, 0 (not at all) to 1 (entirely).
    #[arg(short, long, default_value_t = 0.6, value_parser = unit_interval)]
    pub(crate) strength: f64,
    /// Denoising steps (of which strength × steps run).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000),
          conflicts_with = "fast")]
    pub(crate) steps: u32,
    /// Classifier-free guidance scale (1 disables the negative prompt).
    #[arg(long, default_value_t = 7.5, conflicts_with = "fast")]
    pub(crate) guidance: f64,
    /// Random seed; the same seed gives the same video. Random and printed when absent.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Sampler: ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, lcm.
    #[arg(long, default_value = "ddim", conflicts_with = "fast")]
    pub(crate) scheduler: String,
    /// Few-step sampling, 6-12x faster per frame: the tiny VAE (unless --vae says otherwise),
    /// no negative-prompt pass, and by model: an LCM-distilled UNet runs the lcm sampler, 4
    /// steps (2 run at strength 0.6), its guidance 8 embedded; a few-step distilled model
    /// (scheduler timestep_spacing trailing, as stabilityai/sd-turbo) runs euler without
    /// guidance, one step at the strength's noise level; an SD 1.x model gets the LCM-LoRA
    /// latent-consistency/lcm-lora-sdv1-5 fused in and runs lcm, 4 steps, guidance 1. SD 2.x
    /// models have no LCM-LoRA and are refused; without --model-id, --fast runs
    /// stabilityai/sd-turbo. Replaces --steps, --guidance and --scheduler.
    #[arg(long)]
    pub(crate) fast: bool,
    /// Hub revision (branch, tag or commit) of --model-id.
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// Weight file variant on the hub, e.g. fp16.
    #[arg(long)]
    pub(crate) variant: Option<String>,
    /// Use only the local Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub(crate) offline: bool,
    /// Model precision: f32, f16 or bf16 (default: f32 on CPU, f16 on GPU).
    #[arg(long, value_parser = parse_lib::<Precision>)]
    pub(crate) dtype: Option<Precision>,
    /// A LoRA fused into the model: a .safetensors file (kohya/A1111 or diffusers/PEFT keys), or
    /// a folder or Hugging Face id holding pytorch_lora_weights.safetensors
    /// (latent-consistency/lcm-lora-sdv1-5 with --scheduler lcm --steps 4 --guidance 1), with
    /// an optional :SCALE (default 1). Repeat for several; their effects add up.
    #[arg(long, value_name = "FILE|DIR|ID[:SCALE]", value_parser = parse_lib::<LoraArg>)]
    pub(crate) lora: Vec<LoraArg>,
    /// The auto-encoder between pixels and latents: full (the model's own), tiny (TAESD,
    /// madebyollin/taesd: encode + decode in a fraction of the time, a little less detail), or
    /// another tiny VAE's Hugging Face id or diffusers folder [default: full; with --fast tiny].
    #[arg(long, value_name = "full|tiny|ID|DIR")]
    pub(crate) vae: Option<String>,
    /// Tile the VAE: auto (when untiled would need over 2 GiB of activations), on, off.
    #[arg(long, default_value = "auto", value_parser = parse_lib::<VaeTiling>)]
    pub(crate) vae_tiling: VaeTiling,
    /// GPU: keep the VAE on the CPU (f32), so its weights and its decoder's full-resolution
    /// activations (the peak of a 720p frame) never take GPU memory; encode and decode then
    /// cost CPU time per frame.
    #[arg(long)]
    pub(crate) offload: bool,
    /// GPU: the memory this run may use, in GB (your card's, or less to leave room). Before
    /// the first frame the run's peak (weights as loaded, activations for the frame size) is
    /// estimated and, over 85 % of this, refused with the flags that bring it down.
    #[arg(long, value_name = "GB")]
    pub(crate) max_vram: Option<f64>,
    /// Where every frame's noise comes from: fixed (the same for all frames: less flicker,
    /// but its texture stays on the screen while the scene moves), per-frame (new noise every
    /// frame), warp (carried along the video's optical flow from the first frame, so it moves
    /// with the scene).
    #[arg(long, default_value = "fixed", value_parser = parse_lib::<Noise>)]
    pub(crate) noise: Noise,
    /// The same as --noise per-frame (kept for scripts that use it).
    #[arg(long, hide = true, conflicts_with = "noise")]
    pub(crate) noise_per_frame: bool,
    /// How frames are kept consistent: cross-frame+flow (both below; the default, or
    /// cross-frame with --keyframe-every, stream with --fast), cross-frame (every frame's self-attention also
    /// looks at the first frame), flow (the previous restyled frame is carried along the
    /// motion into the next), rerender (Rerender-A-Video: attention to the first and previous
    /// frames, their results warped in and a second pass; about 2× the time, needs
    /// --strength 0.8 or so and ddim), stream (StreamV2V: self-attention also looks at a
    /// bank of earlier frames' features, merged as it goes, and close features are pulled
    /// towards the bank's), none (every frame on its own).
    #[arg(long, value_parser = parse_lib::<Consistency>)]
    pub(crate) consistency: Option<Consistency>,
    /// Testing: the keys cross-frame attention uses: anchor, or anchor+self.
    #[arg(long, hide = true, default_value = "anchor", value_parser = parse_lib::<CrossFrameKeys>)]
    pub(crate) cross_frame_keys: CrossFrameKeys,
    /// Restyle only every K-th frame with Stable Diffusion and carry the style to the frames
    /// between along the optical flow from both neighbouring keyframes (about K× faster).
    /// With --consistency rerender: Rerender-A-Video's own set-up, each keyframe following
    /// the first and the previous keyframe.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub(crate) keyframe_every: u64,
    /// Testing: flow fusion STEPS,PIXEL: the share of the steps that run whose x0 is the
    /// previous frame's, and the weight of its decoded pixels (0..1 each).
    #[arg(long, hide = true, value_parser = parse_lib::<FlowFusion>)]
    pub(crate) flow_fusion: Option<FlowFusion>,
    /// Testing: how StreamV2V's feature bank keeps what enters it: merged (the reference's
    /// default, ToMe) or fifo:N (the last N entries whole).
    #[arg(long, hide = true, value_parser = parse_lib::<Keep>)]
    pub(crate) stream_bank: Option<Keep>,
    /// Upscale the stylized frames ×4 with Real-ESRGAN, to full HD (see --upscale-to).
    #[arg(long)]
    pub(crate) upscale: bool,
    #[command(flatten)]
    pub(crate) upscale_flags: UpscaleFlags,
    /// Short side of the stylized frames: 480p, 720p, 1080p or original.
    #[arg(long, default_value = "480p", value_parser = parse_lib::<MaxRes>)]
    pub(crate) max_res: MaxRes,
    #[command(flatten)]
    pub(crate) out: VideoOut,
    /// Render N frames spread over the video (default 4) with these settings and seed, as the
    /// run renders them at a segment start, write a contact sheet <output stem>_preview.png (originals above, results below,
    /// settings and seconds per frame under them), print the estimated time for the whole
    /// video, and stop: try settings in seconds to minutes before committing hours.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "4",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) preview: Option<u64>,
    /// Testing: replace the model stages by `identity` or `invert` to exercise the video path.
    #[arg(long, hide = true)]
    pub(crate) frame_stage: Option<String>,
    /// Testing: sleep this long per frame (to interrupt a run mid-way).
    #[arg(long, hide = true, default_value_t = 0)]
    pub(crate) frame_stage_delay_ms: u64,
}

impl StylizeArgs {
    /// The AnimateDiff context windows of the flags.
    pub(crate) fn context(&self) -> ContextOptions {
        ContextOptions {
            length: self.context_length,
            overlap: self.context_overlap,
            fuse: self.context_fuse,
        }
    }

    /// `--model-id`, or the default for the mode.
    pub(crate) fn model(&self) -> &str {
        match (&self.model_id, self.fast) {
            (Some(id), _) => id,
            (None, true) => FAST_MODEL,
            (None, false) => DEFAULT_MODEL,
        }
    }

    /// `--vae`, or the default for the mode.
    pub(crate) fn vae_choice(&self) -> &str {
        match (&self.vae, self.fast) {
            (Some(v), _) => v,
            (None, true) => "tiny",
            (None, false) => "full",
        }
    }
}

pub(crate) fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..1"))
    }
}

/// For clap: a library type parsed by its `FromStr`, whose errors name the flag.
pub(crate) fn parse_lib<T: std::str::FromStr<Err = Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: Error| e.to_string())
}
