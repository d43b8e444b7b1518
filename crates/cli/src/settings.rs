//! `stylize` flags turned into library settings: the frame stages a run builds.

use anyhow::bail;
use stylizer::sampling::img2img::{ControlWeight, Img2ImgParams};
use stylizer::sampling::schedulers::SchedulerKind;
use stylizer::sd::model::{LoadOptions, TINY_VAE};
use stylizer::stage::PixelStage;
use stylizer::stylize::control::{ControlNetSpec, ControlSource};
use stylizer::stylize::stage::{StylizeSettings, StylizeStage};
use stylizer::stylize::temporal::{AnimateDiffSettings, Noise, Temporal, TemporalFlags};
use stylizer::weights::ModelSource;
use stylizer::FrameStage;

use crate::args::StylizeArgs;
use crate::progress::CliProgress;

/// The model stages the flags ask for. Features that have not landed stop here, before any
/// work, instead of being silently ignored.
pub(crate) fn build_stages(
    a: &StylizeArgs,
    seed: u64,
    progress: &CliProgress,
) -> anyhow::Result<Vec<Box<dyn FrameStage>>> {
    let mut stages: Vec<Box<dyn FrameStage>> = Vec::new();
    match &a.frame_stage {
        Some(op) => stages.push(Box::new(PixelStage {
            op: op.parse()?,
            delay: std::time::Duration::from_millis(a.frame_stage_delay_ms),
        })),
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
pub(crate) fn sd_stage(a: &StylizeArgs, seed: u64) -> anyhow::Result<StylizeStage> {
    let Some(prompt) = a.prompt.clone() else {
        bail!("--prompt is required (what the frames should look like, e.g. --prompt \"anime style\")");
    };
    let mut load = LoadOptions::new(stylizer::device::select(&a.out.device)?);
    load.dtype = a.dtype.map(|p| p.0);
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
        .map(|l| Ok((ModelSource::parse(&l.source)?, l.scale)))
        .collect::<stylizer::Result<Vec<_>>>()?;
    load.tiny_vae = match a.vae_choice() {
        "full" => None,
        "tiny" => Some(ModelSource::Hub(TINY_VAE.into())),
        other => Some(ModelSource::parse(other)?),
    };
    let controlnets = controlnets(a)?;
    let animatediff = a
        .animatediff
        .then(|| -> stylizer::Result<_> {
            Ok(AnimateDiffSettings {
                adapter: ModelSource::parse(&a.motion_adapter)?,
                context: a.context(),
            })
        })
        .transpose()?;
    let temporal = Temporal::new(TemporalFlags {
        consistency: a.consistency,
        cross_frame_keys: a.cross_frame_keys,
        flow_fusion: a.flow_fusion,
        stream_bank: a.stream_bank,
        keyframe_every: a.keyframe_every,
        noise: match a.noise_per_frame {
            true => Noise::PerFrame,
            false => a.noise,
        },
        animatediff,
        fast: a.fast,
    })?;
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
        temporal,
        controlnets,
        guess_mode: a.guess_mode,
        max_vram_gb: a.max_vram,
    })?)
}

/// The ControlNets of `-c` with their `--control*` settings, matched up per net.
pub(crate) fn controlnets(a: &StylizeArgs) -> anyhow::Result<Vec<ControlNetSpec>> {
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
                low: a.canny.low,
                high: a.canny.high,
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

/// The settings a preview sheet shows under its frames, as the flags that give them.
pub(crate) fn preview_settings(a: &StylizeArgs, seed: u64) -> Vec<String> {
    let mut lines = vec![
        format!("prompt: {}", a.prompt.as_deref().unwrap_or("")),
        format!("-m {}  --vae {}", a.model(), a.vae_choice()),
        match a.fast {
            true => format!(
                "--strength {}  --fast  --seed {seed}  --max-res {}",
                a.strength, a.max_res
            ),
            false => format!(
                "--strength {}  --steps {}  --guidance {}  --scheduler {}  --seed {seed}  --max-res {}",
                a.strength, a.steps, a.guidance, a.scheduler, a.max_res
            ),
        },
    ];
    if !a.negative_prompt.is_empty() {
        lines.insert(1, format!("negative: {}", a.negative_prompt));
    }
    for l in &a.lora {
        lines.push(format!("--lora {}:{}", l.source, l.scale));
    }
    for (i, c) in a.controlnet_id.iter().enumerate() {
        let control = a.control.get(i).or(a.control.first());
        lines.push(format!(
            "-c {c}  --control {}",
            control.map_or("canny", |c| c.as_str())
        ));
    }
    if let Some(c) = a.consistency {
        lines.push(format!("--consistency {c}"));
    }
    if a.keyframe_every > 1 {
        lines.push(format!("--keyframe-every {}", a.keyframe_every));
    }
    if a.animatediff {
        lines.push(format!(
            "--animatediff  --motion-adapter {}  --context-length {}  --context-overlap {}  --context-fuse {}",
            a.motion_adapter, a.context_length, a.context_overlap, a.context_fuse
        ));
    }
    if a.upscale {
        lines.push("--upscale".into());
    }
    lines
}
