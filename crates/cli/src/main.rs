//! `video-stylizer`: the command line. Parses flags, draws progress, prints errors as one
//! line; everything else is in the `stylizer` library.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use stylizer::pipeline::{self, Job, Outcome};
use stylizer::stage::{Identity, Invert};
use stylizer::video::{probe, Codec, EncodeSettings, MaxRes, VideoInfo};
use stylizer::{Error, FrameStage, Progress, Stage};

use progress::{CliProgress, Mode};

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
    /// Restyle every frame of a video and write `<input>_stylized.mp4`.
    Stylize(Box<StylizeArgs>),
    /// Show what is in a video file.
    Probe {
        input: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
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

#[derive(Args)]
struct StylizeArgs {
    /// The video to restyle (never modified).
    input: PathBuf,
    /// What the frames should look like ("anime style").
    #[arg(short, long)]
    prompt: Option<String>,
    /// What they should not look like.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Stable Diffusion model: a Hugging Face id, a local diffusers folder or a .safetensors/.ckpt file.
    #[arg(short, long, default_value = "stabilityai/stable-diffusion-2-base")]
    model_id: String,
    /// ControlNet model (Hugging Face id or local folder) to keep the frame's structure.
    #[arg(short, long)]
    controlnet_id: Option<String>,
    /// Temporal consistency with AnimateDiff motion modules.
    #[arg(long)]
    animatediff: bool,
    /// How much each frame changes, 0 (not at all) to 1 (entirely).
    #[arg(short, long, default_value_t = 0.6, value_parser = unit_interval)]
    strength: f64,
    /// Denoising steps (of which strength × steps run).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    steps: u32,
    /// Classifier-free guidance scale (1 disables the negative prompt).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Random seed; the same seed gives the same video. Random and printed when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Sampler: ddim, euler, euler-a, dpmpp-2m, lcm.
    #[arg(long, default_value = "ddim")]
    scheduler: String,
    /// Upscale the stylized frames ×4 with Real-ESRGAN, to full HD.
    #[arg(long)]
    upscale: bool,
    /// Real-ESRGAN model name or file.
    #[arg(long, default_value = "RealESRGAN_x4plus")]
    upscale_model: String,
    /// Output file or folder (default: `<input stem>_stylized.mp4` next to the input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Short side of the frames that are stylized: 480p, 720p, 1080p or original.
    #[arg(long, default_value = "480p", value_parser = parse_max_res)]
    max_res: MaxRes,
    /// Video codec: h265, h264 or av1.
    #[arg(long, default_value = "h265", value_parser = parse_codec)]
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
    /// Seconds of video per resumable segment.
    #[arg(long, default_value_t = 2.0, hide = true)]
    segment_seconds: f64,
    /// Testing: replace the model stages by `identity` or `invert` to exercise the video path.
    #[arg(long, hide = true)]
    frame_stage: Option<String>,
    /// Testing: sleep this long per frame (to interrupt a run mid-way).
    #[arg(long, hide = true, default_value_t = 0)]
    frame_stage_delay_ms: u64,
}

fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..1"))
    }
}

fn parse_max_res(s: &str) -> Result<MaxRes, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    s.parse().map_err(|e: Error| e.to_string())
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
fn build_stages(a: &StylizeArgs) -> anyhow::Result<Vec<Box<dyn FrameStage>>> {
    if let Some(name) = &a.frame_stage {
        let inner: Box<dyn FrameStage> = match name.as_str() {
            "identity" => Box::new(Identity),
            "invert" => Box::new(Invert),
            _ => bail!("unknown --frame-stage `{name}` (identity or invert)"),
        };
        let stage: Box<dyn FrameStage> = if a.frame_stage_delay_ms > 0 {
            Box::new(Delayed {
                inner,
                delay: std::time::Duration::from_millis(a.frame_stage_delay_ms),
            })
        } else {
            inner
        };
        return Ok(vec![stage]);
    }
    if a.controlnet_id.is_some() {
        return Err(Error::NotImplemented("ControlNet guidance (--controlnet-id)".into()).into());
    }
    if a.animatediff {
        return Err(Error::NotImplemented(
            "AnimateDiff temporal consistency (--animatediff)".into(),
        )
        .into());
    }
    if a.upscale {
        return Err(Error::NotImplemented("Real-ESRGAN upscaling (--upscale)".into()).into());
    }
    if a.prompt.is_none() {
        bail!("--prompt is required (what the frames should look like, e.g. --prompt \"anime style\")");
    }
    Err(Error::NotImplemented("Stable Diffusion img2img (stylize --prompt)".into()).into())
}

fn stylize(a: StylizeArgs, progress: &mut CliProgress) -> anyhow::Result<ExitCode> {
    // Everything that can be checked without the input is checked first.
    if !a.guidance.is_finite() || a.guidance < 0.0 {
        bail!(
            "invalid value {} for --guidance: expected a number >= 0",
            a.guidance
        );
    }
    if !a.segment_seconds.is_finite() || a.segment_seconds <= 0.0 {
        bail!("--segment-seconds must be positive");
    }
    stylizer::device::select(&a.device)?;
    let encode = EncodeSettings::new(a.codec, a.crf, a.preset.clone())?;
    let mut stages = build_stages(&a)?;

    progress.stage(Stage::Probe);
    let info = probe(&a.input)?;
    let output = pipeline::output_path(&a.input, a.output.as_deref(), "stylized");
    let mut job = Job::new(a.input.clone(), output, encode);
    job.max_res = a.max_res;
    job.overwrite = a.overwrite;
    job.keep_work = a.keep_work;
    job.segment_seconds = a.segment_seconds;
    job.share = a.segment;
    let outcome = pipeline::run(&job, &info, &mut stages, progress);
    progress.finish();
    report(outcome?)
}

fn report(outcome: Outcome) -> anyhow::Result<ExitCode> {
    match outcome {
        Outcome::Finished { output, frames } => {
            eprintln!("wrote {} ({frames} frames)", output.display());
        }
        Outcome::ShareDone {
            k,
            n,
            segments,
            work_dir,
        } => {
            eprintln!(
                "share {k}/{n}: rendered {segments} segment(s) into {}; run `video-stylizer join {}` (or the same command without --segment) once every share is done",
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
            "vfr": i.vfr,
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
        println!("{v}");
    } else {
        println!("{}", i.path.display());
        println!(
            "  video:     {} {}x{} (displayed; stored {}x{}, rotation {}°)",
            i.codec, i.width, i.height, i.coded_width, i.coded_height, i.rotation
        );
        println!(
            "  frames:    {} at {} fps ({:.3} fps){}, {:.3} s",
            i.frame_count,
            i.fps,
            i.fps.as_f64(),
            if i.vfr { ", variable frame rate" } else { "" },
            i.duration
        );
        println!(
            "  pixels:    {}, {}-bit{}",
            i.pix_fmt,
            i.bit_depth,
            if i.hdr { ", HDR" } else { "" }
        );
        println!(
            "  audio:     {}",
            match &i.audio_codec {
                Some(c) => format!("{c} ({} stream(s))", i.audio_streams),
                None => "none".into(),
            }
        );
        println!("  subtitles: {}", i.subtitle_streams);
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut progress = CliProgress::new(Mode::detect(cli.quiet));
    match cli.command {
        Command::Stylize(a) => stylize(*a, &mut progress),
        Command::Probe { input, json } => print_probe(&input, json),
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
