//! Real-ESRGAN speed, ours against PyTorch in the same invocation:
//!
//! ```text
//! cargo run --release --example esrgan_bench -- [--cases srvgg_full,esrgan_tile] [--reps 2]
//!     [--python tools/reference/.cache/venv/bin/python] [--no-torch]
//! ```
//! Cases (as tools/reference/bench_torch.py): `srvgg_full` = realesr-animevideov3 on a full
//! 854×480 frame, `esrgan_tile` = RealESRGAN_x4plus on a 214×120 tile. Each case runs in its
//! own process (ours: this program with `--child`), so peak RSS is per case; ours and
//! PyTorch's run back to back per case. Weights: the ncnn files from
//! tools/fetch_esrgan_weights.sh (PyTorch uses the same weights converted to safetensors).
//! Prints the best time of each side, the ratio ours/PyTorch and the peak RSS.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use stylizer::upscale::Model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn case(name: &str) -> Result<(&'static str, usize, usize), String> {
    match name {
        "srvgg_full" => Ok(("realesr-animevideov3-x4.param", 854, 480)),
        "esrgan_tile" => Ok(("realesrgan-x4plus.param", 214, 120)),
        _ => Err(format!("unknown case {name} (srvgg_full, esrgan_tile)")),
    }
}

/// Peak resident set size of this process, MB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn child(name: &str, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (file, w, h) = case(name)?;
    let path = root().join("tests/data/esrgan").join(file);
    if !path.exists() {
        return Err(format!(
            "{} missing: run tools/fetch_esrgan_weights.sh",
            path.display()
        )
        .into());
    }
    let model = Model::load(&path, &Device::Cpu)?;
    // Any values do (speed does not depend on them); a fixed pattern keeps runs identical.
    let data: Vec<f32> = (0..3 * w * h)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let x = Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let y = model.forward(&x)?;
        times.push(t0.elapsed().as_secs_f64());
        drop(y);
    }
    let times: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!(
        "RESULT {{\"times_s\": [{}], \"peak_rss_MB\": {:.0}}}",
        times.join(", "),
        peak_rss_mb()
    );
    Ok(())
}

fn result_json(text: &str, prefix: &str) -> Option<serde_json::Value> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|j| serde_json::from_str(j.trim()).ok())
}

fn best(v: &serde_json::Value) -> f64 {
    v["times_s"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_f64())
                .fold(f64::INFINITY, f64::min)
        })
        .unwrap_or(f64::NAN)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let reps: usize = opt("--reps").map_or(Ok(2), |v| v.parse())?;
    if let Some(c) = opt("--child") {
        return child(&c, reps);
    }
    let cases = opt("--cases").unwrap_or_else(|| "srvgg_full,esrgan_tile".into());
    let python = opt("--python")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tools/reference/.cache/venv/bin/python"));
    let no_torch = args.iter().any(|a| a == "--no-torch");
    let me = std::env::current_exe()?;
    println!(
        "{:<12} {:>10} {:>10} {:>7} {:>10} {:>10}   loadavg before",
        "case", "ours s", "torch s", "ratio", "ours MB", "torch MB"
    );
    for name in cases.split(',') {
        case(name)?;
        let load = loadavg();
        // bench_torch.py runs srvgg_full reps+1 times (the first is a warm-up) and esrgan_tile
        // reps times; ours runs the same counts and both report the best.
        let runs = if name == "srvgg_full" { reps + 1 } else { reps };
        let out = Command::new(&me)
            .args(["--child", name, "--reps", &runs.to_string()])
            .output()?;
        let ours =
            result_json(&String::from_utf8_lossy(&out.stdout), "RESULT ").ok_or_else(|| {
                format!(
                    "our {name} run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let torch = if no_torch {
            None
        } else {
            let script = root().join("tools/reference/bench_torch.py");
            let tmp =
                std::env::temp_dir().join(format!("esrgan_bench_{}.json", std::process::id()));
            let out = Command::new(&python)
                .arg(&script)
                .args([name, "--reps", &reps.to_string(), "--out"])
                .arg(&tmp)
                .output()
                .map_err(|e| format!("{}: {e}", python.display()))?;
            let _ = std::fs::remove_file(&tmp);
            let t = result_json(&String::from_utf8_lossy(&out.stdout), &format!("{name} "));
            if t.is_none() {
                eprintln!(
                    "PyTorch {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            t
        };
        let (ob, tb) = (best(&ours), torch.as_ref().map_or(f64::NAN, best));
        println!(
            "{:<12} {:>10.3} {:>10.3} {:>7.3} {:>10.0} {:>10.0}   {load}",
            name,
            ob,
            tb,
            ob / tb,
            ours["peak_rss_MB"].as_f64().unwrap_or(f64::NAN),
            torch
                .as_ref()
                .and_then(|t| t["peak_rss_MB"].as_f64())
                .unwrap_or(f64::NAN)
        );
        println!("  ours  {}", ours["times_s"]);
        if let Some(t) = &torch {
            println!("  torch {}", t["times_s"]);
        }
    }
    Ok(())
}
