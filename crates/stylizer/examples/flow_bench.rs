//! Seconds per DIS optical flow (Kroeger et al. 2016; our port of OpenCV's dis_flow.cpp) for each
//! preset on one pair of frames. tools/bench_flow.sh runs it beside OpenCV on the same pair:
//!
//! ```text
//! cargo run --release -p stylizer --example flow_bench -- [--rgb A.rgb B.rgb] [--video CLIP]
//!     [--frame N] [--size WxH] [--runs R] [--opencv DIR]
//! ```
//!
//! Frames: two rgb24 files of the given size (`--rgb`), or frames N and N+1 of `--video`
//! (default tests/data/bigbuckbunny.mp4, frame 40) decoded and scaled by ffmpeg (default
//! 854×480). `--opencv DIR` reads OpenCV's flows `DIR/opencv_{preset}.f32` (raw little-endian
//! f32, [h, w, 2]) and reports the mean EPE between theirs and ours. The last line is JSON.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use stylizer::temporal::flow::{dis_flow, DisParams, DisPreset, Flow, Gray};

struct Args {
    rgb: Option<(PathBuf, PathBuf)>,
    video: PathBuf,
    frame: usize,
    size: (usize, usize),
    runs: usize,
    opencv: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut a = Args {
        rgb: None,
        video: root.join("tests/data/bigbuckbunny.mp4"),
        frame: 40,
        size: (854, 480),
        runs: 5,
        opencv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rgb" => a.rgb = Some((value()?.into(), value()?.into())),
            "--video" => a.video = value()?.into(),
            "--frame" => a.frame = value()?.parse()?,
            "--size" => {
                let v = value()?;
                let (w, h) = v.split_once('x').context("--size WxH")?;
                a.size = (w.parse()?, h.parse()?);
            }
            "--runs" => a.runs = value()?.parse()?,
            "--opencv" => a.opencv = Some(value()?.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(a)
}

/// Frame `n` of `video` as rgb24, scaled to `w`×`h` by ffmpeg.
fn decode(video: &Path, n: usize, (w, h): (usize, usize)) -> Result<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(video)
        .args([
            "-vf",
            &format!("select=eq(n\\,{n}),scale={w}:{h}"),
            "-frames:v",
            "1",
        ])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() || out.stdout.len() != w * h * 3 {
        bail!(
            "ffmpeg could not decode frame {n} of {}: {}",
            video.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn read_rgb(path: &Path, (w, h): (usize, usize)) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() != w * h * 3 {
        bail!(
            "{}: {} bytes, expected {w}x{h}x3",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes)
}

fn read_flow(path: &Path, (w, h): (usize, usize)) -> Result<Flow> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() != w * h * 8 {
        bail!(
            "{}: {} bytes, expected {w}x{h}x2 f32",
            path.display(),
            bytes.len()
        );
    }
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Flow {
        width: w,
        height: h,
        data: v.chunks_exact(2).map(|p| [p[0], p[1]]).collect(),
    })
}

fn mean_epe(f: &Flow, g: &Flow) -> f64 {
    let sum: f64 = f
        .data
        .iter()
        .zip(&g.data)
        .map(|(p, q)| ((p[0] - q[0]) as f64).hypot((p[1] - q[1]) as f64))
        .sum();
    sum / f.data.len() as f64
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (w, h) = args.size;
    let (ra, rb) = match &args.rgb {
        Some((a, b)) => (read_rgb(a, args.size)?, read_rgb(b, args.size)?),
        None => (
            decode(&args.video, args.frame, args.size)?,
            decode(&args.video, args.frame + 1, args.size)?,
        ),
    };
    let (a, b) = (Gray::from_rgb(w, h, &ra), Gray::from_rgb(w, h, &rb));
    println!(
        "{w}x{h}, {} rayon threads, median of {} runs after one warm-up",
        rayon::current_num_threads(),
        args.runs
    );
    let mut json = Vec::new();
    for (name, preset) in [
        ("ultrafast", DisPreset::UltraFast),
        ("fast", DisPreset::Fast),
        ("medium", DisPreset::Medium),
    ] {
        let params = DisParams::preset(preset);
        let flow = dis_flow(&a, &b, &params);
        let mut times: Vec<f64> = (0..args.runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(dis_flow(&a, &b, &params));
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        let epe = match &args.opencv {
            Some(dir) => Some(mean_epe(
                &flow,
                &read_flow(&dir.join(format!("opencv_{name}.f32")), args.size)?,
            )),
            None => None,
        };
        match epe {
            Some(e) => println!("{name:10} {secs:8.4} s   mean EPE vs OpenCV {e:.5} px"),
            None => println!("{name:10} {secs:8.4} s"),
        }
        json.push(format!(
            "\"{name}\": {{\"seconds\": {secs:.6}, \"epe_vs_opencv\": {}}}",
            epe.map_or("null".into(), |e| format!("{e:.6}"))
        ));
    }
    println!("{{{}}}", json.join(", "));
    Ok(())
}
