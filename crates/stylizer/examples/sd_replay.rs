//! Replays a golden file from tools/reference/golden_sd.py through the Rust models: reads the
//! golden's inputs, writes our outputs under the same key names, for
//! `tools/reference/compare.py GOLDEN OUT` to judge.
//!
//! ```text
//! cargo run --release --example sd_replay -- --model DIR|FILE|ID --golden IN.safetensors \
//!     --part text_encoder|unet|vae|img2img|frames --out OUT.safetensors \
//!     [--scheduler ddim|euler|euler_a|dpmpp_2m|dpmpp_2m_karras|lcm --prompt TEXT \
//!      --negative-prompt TEXT --strength S --steps N --guidance G]   (img2img; defaults: golden_sd.py's)
//!     [--cross-frame none|anchor|anchor+self --case NAME]          (frames)
//!     [--controlnet DIR|FILE --guess-mode true|false]             (controlnet)
//!     [--controlnet DIR[,DIR] --control-image KEY[,KEY] --controlnet-scale S[,S]
//!      --control-guidance-start F --control-guidance-end F --guess-mode true|false
//!      --case NAME]                                               (img2img with ControlNets)
//!     [--lora FILE[:SCALE][,…]] [--tiny-vae DIR]                  (any part: LoRAs fused, TAESD)
//!     [--motion-adapter DIR|FILE --name v2]                        (motion_unet)
//!     [--motion-adapter DIR|FILE --case NAME --frames F --context-length L
//!      --context-overlap O --context-fuse pyramid|flat]            (animatediff; plus img2img's)
//! ```
//! `motion_unet` replays golden_animatediff.py's forward: for every `CASE.sample` [B,4,F,h,w]
//! (diffusers' video layout) with `CASE.encoder_hidden_states` [B·F,77,D] and `timestep`,
//! writes `NAME.CASE.out` [B,4,F,h,w]. `animatediff` denoises `frames_in[:F]` together in
//! context windows with frame f's noise = row f of `fF.noise_vae` / `fF.noise_add`; writes
//! `NAME.final_latents` [F,4,h,w] and `NAME.frames_out` [F,3,H,W].
//! `controlnet` replays golden_controlnet.py's forward: `sample`, `timestep`,
//! `encoder_hidden_states`, `controlnet_cond`, `conditioning_scale` in; `down_0 … down_N`, `mid` out.
//! `frames` replays golden_crossframe.py: the stack `image_in` [F,3,H,W] restyled one frame at
//! a time (frame 0 the anchor), frame f's noise = row f of `noise_vae` / `noise_add`; writes
//! `NAME.final_latents` and `NAME.image_out`.
//! `flows` (no `--model` needed) reads `frames_u8` [F,H,W,3] u8 (golden_rerender.py) and writes
//! `flow.first.fwd`, `flow.first.bwd`, `flow.prev.fwd`, `flow.prev.bwd`, each f32 [F,2,H,W]
//! (channel 0 = dx, 1 = dy, in pixels): row f ≥ 1 holds `rerender::flow_pair` between frame 0
//! and frame f ("first") and between frame f-1 and frame f ("prev"), fwd = earlier → later,
//! bwd = later → earlier; row 0 is zeros.
//! Each part is one function taking the golden's tensors and returning ours.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use stylizer::nets::sd::cross_frame::{CrossFrameKeys, FrameAnchor, SelfAttention};
use stylizer::nets::sd::vae::VaeTiling;
use stylizer::sampling::animate::{decode_video, denoise_video, ContextOptions};
use stylizer::sampling::frames::{img2img_frames, Across};
use stylizer::sampling::img2img::{
    img2img as run_img2img, AfterStep, Control, ControlInput, ControlWeight, Img2ImgParams,
};
use stylizer::sampling::noise::ReplayNoise;
use stylizer::sampling::schedulers::SchedulerConfig;
use stylizer::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles, SdFiles, SdModel};
use stylizer::temporal::flow::{Flow, Gray};
use stylizer::temporal::rerender::flow_pair;
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

type Tensors = HashMap<String, Tensor>;

fn text_encoder(files: &SdFiles, golden: &Tensors) -> Result<Tensors> {
    let ids = golden["input_ids"].to_dtype(DType::U32)?;
    let out = files.text_encoder()?.forward(&ids)?;
    Ok(HashMap::from([
        ("last_hidden_state".into(), out.last_hidden_state),
        ("pooler_output".into(), out.pooler_output),
    ]))
}

fn unet(files: &SdFiles, golden: &Tensors) -> Result<Tensors> {
    let model = SdModel::load(files, &mut NoProgress)?;
    let (sample, context) = (&golden["sample"], &golden["encoder_hidden_states"]);
    let t = golden["timestep"]
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut out = HashMap::from([(
        "out".into(),
        model.unet(sample, &t, context, &mut SelfAttention::Own, None)?,
    )]);
    if let Some(ts) = golden.get("timesteps2") {
        let ts = ts.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        out.insert(
            "out2".into(),
            model.unet(sample, &ts, context, &mut SelfAttention::Own, None)?,
        );
    }
    Ok(out)
}

fn vae(files: &SdFiles, golden: &Tensors) -> Result<Tensors> {
    let model = SdModel::load(files, &mut NoProgress)?;
    let (mean, logvar) = model.vae_encode(&golden["image"])?;
    let decoded = model.vae_decode(&golden["latent_mean"])?;
    Ok(HashMap::from([
        ("latent_mean".into(), mean),
        ("latent_logvar".into(), logvar),
        ("decoded".into(), decoded),
    ]))
}

/// The img2img settings from the arguments, with golden_sd.py's defaults: (prompt, negative, params).
fn img2img_args(args: &HashMap<String, String>) -> Result<(String, String, Img2ImgParams)> {
    let arg = |k: &str, default: &str| args.get(k).cloned().unwrap_or_else(|| default.to_string());
    let params = Img2ImgParams {
        strength: arg("strength", "0.6").parse().context("--strength")?,
        steps: arg("steps", "10").parse().context("--steps")?,
        guidance: arg("guidance", "7.5").parse().context("--guidance")?,
        scheduler: arg("scheduler", "ddim").parse()?,
    };
    Ok((
        arg("prompt", "a photograph of an astronaut riding a horse"),
        arg("negative-prompt", ""),
        params,
    ))
}

/// A frame stack restyled in order with the golden's per-frame noise (golden_crossframe.py).
fn frames(files: &SdFiles, golden: &Tensors, args: &HashMap<String, String>) -> Result<Tensors> {
    let (prompt, negative, params) = img2img_args(args)?;
    let across = match args.get("cross-frame").map_or("anchor", |s| s.as_str()) {
        "none" => Across::Nothing,
        "anchor" => Across::Anchor(CrossFrameKeys::Anchor),
        "anchor+self" => Across::Anchor(CrossFrameKeys::AnchorAndSelf),
        other => bail!("unknown --cross-frame {other:?} (none, anchor, anchor+self)"),
    };
    let case = args.get("case").context("--case is required")?;
    let text = files.encode_prompts(&prompt, Some(&negative))?;
    let model = SdModel::load(files, &mut NoProgress)?;
    let scheduler = SchedulerConfig::from_value(&files.scheduler_config)?;
    let (latents, images) = img2img_frames(
        &model,
        &scheduler,
        &params,
        &text,
        &golden["image_in"],
        across,
        &mut |f| {
            let mut draws = HashMap::new();
            for key in ["noise_vae", "noise_add"] {
                draws.insert(key.to_string(), golden[key].narrow(0, f, 1)?);
            }
            Ok(Box::new(ReplayNoise::new(draws)))
        },
    )?;
    Ok(HashMap::from([
        (format!("{case}.final_latents"), latents),
        (format!("{case}.image_out"), images),
    ]))
}

/// The model with the nets of `--controlnet DIR[,DIR]` added.
fn with_controlnets(files: &SdFiles, args: &HashMap<String, String>) -> Result<SdModel> {
    let mut model = SdModel::load(files, &mut NoProgress)?;
    let opts = LoadOptions::new(Device::Cpu);
    for dir in args
        .get("controlnet")
        .into_iter()
        .flat_map(|s| s.split(','))
    {
        let net = ControlNetFiles::resolve(&ModelSource::parse(dir)?, &opts, &files.unet_config)?;
        model.add_controlnet(&net)?;
    }
    Ok(model)
}

fn guess_mode(args: &HashMap<String, String>) -> Result<bool> {
    Ok(args.get("guess-mode").map_or(Ok(false), |s| s.parse())?)
}

/// One ControlNet's residuals for the golden's inputs.
fn controlnet(
    files: &SdFiles,
    golden: &Tensors,
    args: &HashMap<String, String>,
) -> Result<Tensors> {
    let model = with_controlnets(files, args)?;
    let t = golden["timestep"]
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let scale = golden["conditioning_scale"]
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let r = model.controlnet(
        0,
        &golden["sample"],
        &t,
        &golden["encoder_hidden_states"],
        &golden["controlnet_cond"],
        scale,
        guess_mode(args)?,
    )?;
    let mut out: Tensors = r
        .down
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("down_{i}"), d))
        .collect();
    out.insert("mid".into(), r.mid);
    Ok(out)
}

/// The `--control-image` keys with their nets and weights (img2img).
fn control(golden: &Tensors, args: &HashMap<String, String>) -> Result<Control> {
    let list = |k: &str| -> Vec<String> {
        args.get(k)
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let number = |k: &str, i: usize, default: f64| -> Result<f64> {
        let v = list(k);
        Ok(match v.len() {
            0 => default,
            1 => v[0].parse()?,
            _ => v
                .get(i)
                .with_context(|| format!("--{k}: no value for net {i}"))?
                .parse()?,
        })
    };
    let mut inputs = Vec::new();
    for (net, key) in list("control-image").iter().enumerate() {
        inputs.push(ControlInput {
            net,
            image: golden
                .get(key)
                .with_context(|| format!("no {key} in the golden"))?
                .clone(),
            weight: ControlWeight {
                scale: number("controlnet-scale", net, 1.0)?,
                start: number("control-guidance-start", net, 0.0)?,
                end: number("control-guidance-end", net, 1.0)?,
            },
        });
    }
    Ok(Control {
        inputs,
        guess_mode: guess_mode(args)?,
    })
}

/// img2img with the golden's recorded noise: `image_in`, `noise_vae`, `noise_add`, `step{i}.noise`.
fn img2img(files: &SdFiles, golden: &Tensors, args: &HashMap<String, String>) -> Result<Tensors> {
    let (prompt, negative, params) = img2img_args(args)?;
    let ids = |text: &str| -> Result<Tensor> {
        let ids: Vec<i64> = files
            .tokenizer()
            .encode(text)?
            .into_iter()
            .map(i64::from)
            .collect();
        let n = ids.len();
        Ok(Tensor::from_vec(ids, (1, n), &Device::Cpu)?)
    };
    let text = files.encode_prompts(&prompt, Some(&negative))?;
    let model = with_controlnets(files, args)?;
    let control = control(golden, args)?;
    let scheduler = SchedulerConfig::from_value(&files.scheduler_config)?;
    let mut noise = ReplayNoise::new(golden.clone());
    let mut out = HashMap::from([
        ("prompt_input_ids".to_string(), ids(&prompt)?),
        ("negative_input_ids".to_string(), ids(&negative)?),
        ("prompt_embeds".to_string(), text.to_dtype(DType::F32)?),
    ]);
    let (latents, image) = run_img2img(
        &model,
        &scheduler,
        &params,
        &text,
        &golden["image_in"],
        &control,
        FrameAnchor::Independent,
        &mut noise,
        &mut NoProgress,
        &mut AfterStep(|i, l: &Tensor| {
            out.insert(format!("step{i}.latents_after"), l.clone());
        }),
    )?;
    if !noise.unused().is_empty() {
        eprintln!(
            "warning: the golden recorded noise this run did not use: {:?}",
            noise.unused()
        );
    }
    // golden_controlnet.py names its cases' results `CASE.final_latents`.
    let prefix = args.get("case").map_or(String::new(), |c| format!("{c}."));
    out.insert(format!("{prefix}final_latents"), latents);
    out.insert(format!("{prefix}image_out"), image);
    Ok(out)
}

/// The model with the motion adapter of `--motion-adapter` loaded.
fn with_motion(files: &SdFiles, args: &HashMap<String, String>) -> Result<SdModel> {
    let mut model = SdModel::load(files, &mut NoProgress)?;
    let source = ModelSource::parse(
        args.get("motion-adapter")
            .context("--motion-adapter is required")?,
    )?;
    model.set_motion_adapter(&MotionAdapterFiles::resolve(
        &source,
        &LoadOptions::new(Device::Cpu),
    )?)?;
    Ok(model)
}

/// `[b, c, f, h, w]` (diffusers' video layout) → `[b·f, c, h, w]`.
fn video_to_frames(x: &Tensor) -> Result<Tensor> {
    let (b, c, f, h, w) = x.dims5()?;
    Ok(x.permute((0, 2, 1, 3, 4))?.reshape((b * f, c, h, w))?)
}

/// The motion UNet on every `CASE.sample` of the golden.
fn motion_unet(
    files: &SdFiles,
    golden: &Tensors,
    args: &HashMap<String, String>,
) -> Result<Tensors> {
    let model = with_motion(files, args)?;
    let name = args.get("name").map_or("v2", |s| s.as_str());
    let t = golden["timestep"]
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut out = HashMap::new();
    for key in golden.keys().filter(|k| k.ends_with(".sample")) {
        let case = key.trim_end_matches(".sample");
        let sample = &golden[key];
        let (b, c, f, h, w) = sample.dims5()?;
        let context = &golden[&format!("{case}.encoder_hidden_states")];
        let o = model.unet_window(&video_to_frames(sample)?, &t, context, f, None)?;
        let o = o
            .reshape((b, f, c, h, w))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?;
        out.insert(format!("{name}.{case}.out"), o);
    }
    Ok(out)
}

/// A frame stack denoised together through the motion UNet (golden_animatediff.py).
fn animatediff(
    files: &SdFiles,
    golden: &Tensors,
    args: &HashMap<String, String>,
) -> Result<Tensors> {
    let (prompt, negative, params) = img2img_args(args)?;
    let case = args.get("case").context("--case is required")?;
    let f: usize = args
        .get("frames")
        .context("--frames is required")?
        .parse()?;
    let get = |k: &str, d: &str| args.get(k).map_or(d, |s| s.as_str()).to_string();
    let context = ContextOptions {
        length: get("context-length", "16").parse()?,
        overlap: get("context-overlap", "4").parse()?,
        fuse: get("context-fuse", "pyramid").parse()?,
    };
    let text = files.encode_prompts(&prompt, Some(&negative))?;
    let model = with_motion(files, args)?;
    let scheduler = SchedulerConfig::from_value(&files.scheduler_config)?;
    let (vae, add) = (
        &golden[&format!("f{f}.noise_vae")],
        &golden[&format!("f{f}.noise_add")],
    );
    let latents = denoise_video(
        &model,
        &scheduler,
        &params,
        &text,
        &golden["frames_in"].narrow(0, 0, f)?,
        &context,
        &mut |row| {
            let mut draws = HashMap::new();
            for (key, t) in [("noise_vae", vae), ("noise_add", add)] {
                draws.insert(key.to_string(), t.narrow(0, row, 1)?);
            }
            Ok(Box::new(ReplayNoise::new(draws)))
        },
        &mut NoProgress,
    )?;
    let frames = decode_video(&model, &latents)?;
    Ok(HashMap::from([
        (format!("{case}.final_latents"), latents),
        (format!("{case}.frames_out"), frames),
    ]))
}

/// Rerender-A-Video's flows (ours, DIS) between the frames of `frames_u8` (golden_rerender.py).
fn flows(golden: &Tensors) -> Result<Tensors> {
    let frames = golden
        .get("frames_u8")
        .context("no frames_u8 in the golden")?;
    let (f, h, w, c) = frames.dims4()?;
    if c != 3 {
        bail!("frames_u8: expected [F,H,W,3], got {:?}", frames.dims());
    }
    let grays = (0..f)
        .map(|i| {
            let rgb = frames.get(i)?.flatten_all()?.to_vec1::<u8>()?;
            Ok(Gray::from_rgb(w, h, &rgb))
        })
        .collect::<Result<Vec<_>>>()?;
    // planar [2,H,W] of one flow
    let planar = |flow: &Flow| -> Vec<f32> {
        assert_eq!((flow.width, flow.height), (w, h));
        let mut out = vec![0f32; 2 * h * w];
        for (i, d) in flow.data.iter().enumerate() {
            out[i] = d[0];
            out[h * w + i] = d[1];
        }
        out
    };
    let mut out = Tensors::new();
    for (name, earlier) in [("first", None), ("prev", Some(1usize))] {
        let (mut fwd, mut bwd) = (vec![0f32; 2 * h * w], vec![0f32; 2 * h * w]);
        for later in 1..f {
            let e = earlier.map_or(0, |back| later - back);
            let (a, b) = flow_pair(&grays[e], &grays[later]);
            fwd.extend(planar(&a));
            bwd.extend(planar(&b));
        }
        for (dir, data) in [("fwd", fwd), ("bwd", bwd)] {
            out.insert(
                format!("flow.{name}.{dir}"),
                Tensor::from_vec(data, (f, 2, h, w), &Device::Cpu)?,
            );
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(key) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}")
        };
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        args.insert(key.to_string(), value);
    }
    let arg = |k: &str| args.get(k).with_context(|| format!("--{k} is required"));
    let golden = candle_core::safetensors::load(arg("golden")?, &Device::Cpu)?;
    if arg("part")? == "flows" {
        let out = flows(&golden)?;
        let out_path = arg("out")?;
        candle_core::safetensors::save(&out, out_path)?;
        println!("wrote {} tensors to {out_path}", out.len());
        return Ok(());
    }
    let source = ModelSource::parse(arg("model")?)?;
    // --lora FILE[:SCALE][,FILE[:SCALE]…] fused into the UNet and text encoder.
    let loras = args
        .get("lora")
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(|spec| {
            let (file, scale) = match spec.rsplit_once(':') {
                Some((f, v)) => (f, v.parse::<f64>().context("--lora FILE:SCALE")?),
                None => (spec, 1.0),
            };
            Ok((ModelSource::File(file.into()), scale))
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = LoadOptions {
        // The goldens are whole-image references.
        vae_tiling: VaeTiling::Off,
        loras,
        tiny_vae: args.get("tiny-vae").map(|d| ModelSource::Folder(d.into())),
        ..LoadOptions::new(Device::Cpu)
    };
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress)?;
    let out = match arg("part")?.as_str() {
        "text_encoder" => text_encoder(&files, &golden)?,
        "unet" => unet(&files, &golden)?,
        "vae" => vae(&files, &golden)?,
        "img2img" => img2img(&files, &golden, &args)?,
        "frames" => frames(&files, &golden, &args)?,
        "controlnet" => controlnet(&files, &golden, &args)?,
        "motion_unet" => motion_unet(&files, &golden, &args)?,
        "animatediff" => animatediff(&files, &golden, &args)?,
        other => {
            bail!("unknown --part {other:?} (text_encoder, unet, vae, img2img, frames, controlnet, motion_unet, animatediff, flows)")
        }
    };
    let out_path = arg("out")?;
    candle_core::safetensors::save(&out, out_path)?;
    println!("wrote {} tensors to {out_path}", out.len());
    Ok(())
}
