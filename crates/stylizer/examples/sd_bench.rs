//! Time and peak memory of the SD components at a real frame size, on the CPU.
//!
//! ```text
//! cargo run --release --example sd_bench -- --model DIR [--cases memory,unet,cross_frame,vae]
//!     [--latent 60x106] [--reps 1] [--vae-tiling auto|on|off] [--slicing auto|off|N]
//!     [--tiny-vae DIR]   (the `vae` and `frame` cases then use TAESD)
//!     [--scheduler S --steps N --strength X --guidance G --lora FILE]   (the `frame` case)
//! ```
//! `memory` runs one frame's worth of work in the order the pipeline does it (text encoder
//! loaded, used, freed; UNet + VAE loaded; VAE encode; one CFG UNet call; VAE decode) and
//! prints the peak resident set of each stage. `unet` times one call at batch 2 (CFG) and
//! batch 1, `cross_frame` one CFG call on its own, recording an anchor, and attending to it
//! (keys `anchor` and `anchor+self`), `vae` one decode and one encode, `controlnet` (with
//! `--controlnet DIR`) one CFG step of net + UNet and the UNet step alone, with the peak
//! resident set of the whole case (both models loaded). `motion` (with `--motion-adapter DIR`
//! `--frames 16`) one CFG step of a window through the motion UNet, and one frame's CFG step
//! without it. `frame` restyles one whole frame as
//! the stylize stage does (VAE encode, sampling, VAE decode; the prompt encoded beforehand)
//! with `--scheduler ddim --steps 10 --strength 0.6 --guidance 7.5` (the defaults) and any
//! `--lora FILE` fused in. Prints one JSON line starting with `RESULT `.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use stylizer::nets::sd::attention::AttentionSlicing;
use stylizer::nets::sd::cross_frame::{AnchorBank, CrossFrameKeys, FrameAnchor, SelfAttention};
use stylizer::nets::sd::vae::VaeTiling;
use stylizer::sampling::img2img::{img2img, Control, Img2ImgParams};
use stylizer::sampling::noise::SeededNoise;
use stylizer::sampling::schedulers::SchedulerConfig;
use stylizer::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles, SdFiles, SdModel};
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

/// Peak resident set (VmHWM) in MB since the last reset.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Restarts the peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn randn(shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1f32, shape, &Device::Cpu)?)
}

/// User + system CPU seconds of this process (less sensitive than wall time to other
/// work on a shared machine).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the parenthesised command name: state, ppid, ..., utime (11th), stime (12th), in ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    tick(11)
        .zip(tick(12))
        .map_or(f64::NAN, |(u, s)| (u + s) / 100.0)
}

thread_local! {
    static CPU: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f`, returns its value and wall seconds; its CPU seconds go to [`take_cpu`].
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let v = f()?;
    CPU.with(|c| {
        c.borrow_mut()
            .push(((cpu_seconds() - c0) * 100.0).round() / 100.0)
    });
    Ok((v, (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0))
}

/// Wall seconds of `reps` runs of `f`.
fn timed_reps<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<f64>> {
    (0..reps).map(|_| Ok(timed(&mut f)?.1)).collect()
}

/// CPU seconds of the `timed` calls since the last take.
fn take_cpu() -> Vec<f64> {
    CPU.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

fn main() -> Result<()> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(key) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}")
        };
        args.insert(
            key.into(),
            it.next().with_context(|| format!("{flag} needs a value"))?,
        );
    }
    let get = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_string());
    let source = ModelSource::parse(args.get("model").context("--model is required")?)?;
    let (lh, lw) = get("latent", "60x106")
        .split_once('x')
        .and_then(|(h, w)| Some((h.parse::<usize>().ok()?, w.parse::<usize>().ok()?)))
        .context("--latent HxW")?;
    let reps: usize = get("reps", "1").parse()?;
    let opts = LoadOptions {
        vae_tiling: match get("vae-tiling", "auto").as_str() {
            "on" => VaeTiling::On,
            "off" => VaeTiling::Off,
            _ => VaeTiling::Auto,
        },
        attention_slicing: match get("slicing", "auto").as_str() {
            "auto" => AttentionSlicing::Auto,
            "off" => AttentionSlicing::Off,
            n => AttentionSlicing::Size(n.parse()?),
        },
        tiny_vae: args.get("tiny-vae").map(|d| ModelSource::Folder(d.into())),
        loras: args
            .get("lora")
            .map(|f| (ModelSource::File(f.into()), 1.0))
            .into_iter()
            .collect(),
        ..LoadOptions::new(Device::Cpu)
    };
    let mut result = json!({"latent_hw": [lh, lw], "threads": candle_core::utils::get_num_threads(),
        "vae_tiling": format!("{:?}", opts.vae_tiling), "slicing": format!("{:?}", opts.attention_slicing)});
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress)?;
    let f = files.vae_config.scale_factor();
    let dim = files.unet_config.cross_attention_dim();

    for case in get("cases", "memory").split(',') {
        match case {
            "memory" => {
                let mut m = serde_json::Map::new();
                reset_peak();
                let (emb, s) =
                    timed(|| Ok(files.encode_prompts("a photograph of an astronaut", Some(""))?))?;
                m.insert("text_encoder_peak_MB".into(), json!(peak_rss_mb()));
                m.insert("text_encoder_s".into(), json!(s));
                reset_peak();
                let (model, s) = timed(|| Ok(SdModel::load(&files, &mut NoProgress)?))?;
                m.insert("load_unet_vae_peak_MB".into(), json!(peak_rss_mb()));
                m.insert("load_unet_vae_s".into(), json!(s));
                reset_peak();
                let image = (randn(&[1, 3, lh * f, lw * f])? * 0.5)?;
                let (_, s) = timed(|| Ok(model.vae_encode(&image)?))?;
                m.insert("vae_encode_peak_MB".into(), json!(peak_rss_mb()));
                m.insert("vae_encode_s".into(), json!(s));
                reset_peak();
                let latents = randn(&[2, 4, lh, lw])?;
                let (_, s) = timed(|| {
                    Ok(model.unet(&latents, &[501.0], &emb, &mut SelfAttention::Own, None)?)
                })?;
                m.insert("unet_b2_peak_MB".into(), json!(peak_rss_mb()));
                m.insert("unet_b2_s".into(), json!(s));
                reset_peak();
                let (_, s) = timed(|| Ok(model.vae_decode(&latents.narrow(0, 0, 1)?)?))?;
                m.insert("vae_decode_peak_MB".into(), json!(peak_rss_mb()));
                m.insert("vae_decode_s".into(), json!(s));
                let overall = [
                    "text_encoder_peak_MB",
                    "load_unet_vae_peak_MB",
                    "vae_encode_peak_MB",
                    "unet_b2_peak_MB",
                    "vae_decode_peak_MB",
                ]
                .iter()
                .filter_map(|k| m[*k].as_f64())
                .fold(0.0, f64::max);
                m.insert("peak_rss_MB".into(), json!(overall));
                m.insert("cpu_s".into(), json!(take_cpu()));
                result["memory"] = Value::Object(m);
            }
            "unet" => {
                let model = SdModel::load(&files, &mut NoProgress)?;
                let emb = randn(&[2, 77, dim])?;
                let x = randn(&[2, 4, lh, lw])?;
                let mut b2 = vec![];
                let mut b1 = vec![];
                for _ in 0..reps {
                    b2.push(
                        timed(|| {
                            Ok(model.unet(&x, &[501.0], &emb, &mut SelfAttention::Own, None)?)
                        })?
                        .1,
                    );
                }
                for _ in 0..reps {
                    let (x1, e1) = (x.narrow(0, 0, 1)?, emb.narrow(0, 0, 1)?);
                    b1.push(
                        timed(|| {
                            Ok(model.unet(&x1, &[501.0], &e1, &mut SelfAttention::Own, None)?)
                        })?
                        .1,
                    );
                }
                result["unet"] = json!({"batch2_s": b2, "batch1_s": b1, "cpu_s": take_cpu(), "peak_rss_MB": peak_rss_mb()});
            }
            "cross_frame" => {
                // One CFG UNet call as a frame on its own, as the anchor (recording its
                // tokens), and attending to the anchor with each key choice.
                let model = SdModel::load(&files, &mut NoProgress)?;
                let emb = randn(&[2, 77, dim])?;
                let x = randn(&[2, 4, lh, lw])?;
                let mut bank = AnchorBank::default();
                let mut times = serde_json::Map::new();
                let mut own = vec![];
                for _ in 0..reps {
                    own.push(
                        timed(|| {
                            Ok(model.unet(&x, &[501.0], &emb, &mut SelfAttention::Own, None)?)
                        })?
                        .1,
                    );
                }
                times.insert("own_s".into(), json!(own));
                let mut record = FrameAnchor::Record(&mut bank);
                let (_, s) =
                    timed(|| Ok(model.unet(&x, &[501.0], &emb, &mut record.step(0)?, None)?))?;
                times.insert("record_s".into(), json!(s));
                times.insert("anchor_MB_per_step".into(), json!(bank.bytes() >> 20));
                for keys in [CrossFrameKeys::Anchor, CrossFrameKeys::AnchorAndSelf] {
                    let mut t = vec![];
                    for _ in 0..reps {
                        let mut attend = FrameAnchor::Attend(&bank, keys);
                        t.push(
                            timed(|| {
                                Ok(model.unet(&x, &[501.0], &emb, &mut attend.step(0)?, None)?)
                            })?
                            .1,
                        );
                    }
                    times.insert(format!("{keys}_s"), json!(t));
                }
                times.insert("cpu_s".into(), json!(take_cpu()));
                times.insert("peak_rss_MB".into(), json!(peak_rss_mb()));
                result["cross_frame"] = Value::Object(times);
            }
            "vae" => {
                let model = SdModel::load(&files, &mut NoProgress)?;
                let z = randn(&[1, 4, lh, lw])?;
                let img = (randn(&[1, 3, lh * f, lw * f])? * 0.5)?.to_dtype(DType::F32)?;
                let mut dec = vec![];
                let mut enc = vec![];
                for _ in 0..reps {
                    dec.push(timed(|| Ok(model.vae_decode(&z)?))?.1);
                }
                for _ in 0..reps {
                    enc.push(timed(|| Ok(model.vae_encode(&img)?))?.1);
                }
                result["vae"] = json!({"decode_s": dec, "encode_s": enc, "cpu_s": take_cpu(), "peak_rss_MB": peak_rss_mb()});
            }
            "conv" => {
                // 3×3 convolutions of the UNet (level 1, CFG batch) and VAE decoder (full size).
                let mut rows = vec![];
                take_cpu();
                for (cin, cout, h, w, b) in [(320, 320, lh, lw, 2), (128, 128, lh * f, lw * f, 1)] {
                    let x = randn(&[b, cin, h, w])?;
                    let wt = (randn(&[cout, cin, 3, 3])? * 0.02)?;
                    let cfg = candle_nn::Conv2dConfig {
                        padding: 1,
                        ..Default::default()
                    };
                    let theirs = candle_nn::Conv2d::new(wt.clone(), None, cfg);
                    let ours = stylizer::ops::conv::nchw::Conv2d::new(theirs.clone(), cfg)?;
                    let flop = 2.0 * (b * cin * cout * 9 * h * w) as f64 * 1e-9;
                    let (a, ta) = timed(|| Ok(candle_core::Module::forward(&ours, &x)?))?;
                    let (c, tc) = timed(|| Ok(candle_core::Module::forward(&theirs, &x)?))?;
                    let diff: f32 = (a - c)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
                    let cpu = take_cpu();
                    rows.push(json!({"shape": format!("{cin}->{cout} {h}x{w} b{b}"),
                        "ours_GFLOPs": (flop / ta).round(), "candle_GFLOPs": (flop / tc).round(),
                        "ours_cpu_s": cpu[0], "candle_cpu_s": cpu[1], "max_abs_diff": diff}));
                }
                result["conv"] = json!(rows);
            }
            "motion" => {
                // One CFG denoising step of a window of `--frames` frames through the motion
                // UNet (`--motion-adapter DIR`), and the same frames one at a time without it.
                reset_peak();
                let n: usize = get("frames", "16").parse()?;
                let adapter = ModelSource::parse(
                    args.get("motion-adapter").context("--motion-adapter DIR")?,
                )?;
                let mut model = SdModel::load(&files, &mut NoProgress)?;
                model.set_motion_adapter(&MotionAdapterFiles::resolve(&adapter, &opts)?)?;
                let emb = randn(&[2 * n, 77, dim])?;
                let x = randn(&[2 * n, 4, lh, lw])?;
                // As denoise_video runs it: the guidance pair as two calls of the window.
                let window = timed_reps(reps, || {
                    let (xu, eu) = (x.narrow(0, 0, n)?, emb.narrow(0, 0, n)?);
                    model.unet_window(&xu, &[501.0], &eu, n, None)?;
                    let (xc, ec) = (x.narrow(0, n, n)?, emb.narrow(0, n, n)?);
                    Ok(model.unet_window(&xc, &[501.0], &ec, n, None)?)
                })?;
                let peak = peak_rss_mb();
                let (x1, e1) = (x.narrow(0, 0, 2)?, emb.narrow(0, 0, 2)?);
                let plain = timed_reps(reps, || {
                    Ok(model.unet(&x1, &[501.0], &e1, &mut SelfAttention::Own, None)?)
                })?;
                result["motion"] = json!({"frames": n, "window_step_s": window, "plain_step_per_frame_s": plain,
                    "peak_rss_MB": peak, "cpu_s": take_cpu()});
            }
            "controlnet" => {
                reset_peak();
                let dir = ModelSource::parse(args.get("controlnet").context("--controlnet DIR")?)?;
                let mut model = SdModel::load(&files, &mut NoProgress)?;
                model.add_controlnet(&ControlNetFiles::resolve(
                    &dir,
                    &opts,
                    &files.unet_config,
                )?)?;
                let emb = randn(&[2, 77, dim])?;
                let x = randn(&[2, 4, lh, lw])?;
                let cond = Tensor::rand(0f32, 1f32, (1, 3, lh * f, lw * f), &Device::Cpu)?;
                let net = || Ok(model.controlnet(0, &x, &[501.0], &emb, &cond, 1.0, false)?);
                let unet = |r: Option<&_>| {
                    Ok(model.unet(&x, &[501.0], &emb, &mut SelfAttention::Own, r)?)
                };
                // One CFG step (net, then the UNet with its residuals), the UNet alone, the net
                // alone, and the UNet with residuals computed beforehand.
                let step = timed_reps(reps, || unet(Some(&net()?)))?;
                let alone = timed_reps(reps, || unet(None))?;
                let net_alone = timed_reps(reps, net)?;
                let r = net()?;
                let with = timed_reps(reps, || unet(Some(&r)))?;
                result["controlnet"] = json!({"step_s": step, "unet_alone_s": alone, "net_alone_s": net_alone, "unet_with_residuals_s": with,
                    "peak_rss_MB": peak_rss_mb(), "cpu_s": take_cpu()});
            }
            "frame" => {
                reset_peak();
                let params = Img2ImgParams {
                    strength: get("strength", "0.6").parse()?,
                    steps: get("steps", "10").parse()?,
                    guidance: get("guidance", "7.5").parse()?,
                    scheduler: get("scheduler", "ddim").parse()?,
                };
                let negative = params.guided().then_some("");
                let text = files.encode_prompts("a photograph of an astronaut", negative)?;
                let (mut model, load_s) = timed(|| Ok(SdModel::load(&files, &mut NoProgress)?))?;
                model.set_guidance(params.guidance)?;
                let scheduler = SchedulerConfig::from_value(&files.scheduler_config)?;
                let image = Tensor::rand(-1f32, 1f32, (1, 3, lh * f, lw * f), &Device::Cpu)?;
                let frame_s = timed_reps(reps, || {
                    Ok(img2img(
                        &model,
                        &scheduler,
                        &params,
                        &text,
                        &image,
                        &Control::default(),
                        FrameAnchor::Independent,
                        &mut SeededNoise::new(0),
                        &mut NoProgress,
                        &mut (),
                    )?)
                })?;
                let cpu = take_cpu();
                result["frame"] = json!({"frame_s": frame_s, "load_s": load_s, "cpu_s": cpu[1..],
                    "unet_calls": (params.steps - params.first_step()?) * (1 + usize::from(params.guided())),
                    "peak_rss_MB": peak_rss_mb()});
            }
            other => {
                bail!("unknown case {other:?} (memory, unet, cross_frame, vae, controlnet, motion, conv, frame)")
            }
        }
    }
    println!("RESULT {result}");
    Ok(())
}
