//! `stylize` with Stable Diffusion end to end, on the tiny random-weight SD-2-like model
//! committed under tests/fixtures/sd (real loading code, real sampler, real video path).

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn tiny_sd2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd/tiny-sd2")
}

fn stylize(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    run(bin()
        .arg("stylize")
        .arg(input)
        .args(["-p", "a watercolor painting", "-m"])
        .arg(tiny_sd2())
        .args(["--steps", "4", "--quiet", "-o"])
        .arg(output)
        .args(extra))
}

#[test]
fn tiny_model_stylizes_a_clip_keeping_fps_frames_and_audio() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "72x40",
        "30000/1001",
        0.2,
        Some("aac"),
        &[],
    );
    let output = dir.path().join("out.mp4");
    let out = stylize(&input, &output, &["--seed", "7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = video_facts(&output);
    assert_eq!((v.width, v.height), (72, 40));
    assert_eq!(v.fps, "30000/1001");
    assert_eq!(v.frames, video_facts(&input).frames);
    assert!(audio_duration(&output).is_some(), "audio kept");
    // The frames really changed.
    let p = psnr(
        &decode_rgb(&input, 72, 40, ""),
        &decode_rgb(&output, 72, 40, ""),
    );
    assert!(
        p < 30.0,
        "stylized frames differ from the input ({p:.1} dB)"
    );

    // Same seed, same video; the seed is printed when it is chosen at random.
    let again = dir.path().join("again.mp4");
    assert!(stylize(&input, &again, &["--seed", "7"]).status.success());
    assert!(decode_rgb(&output, 72, 40, "") == decode_rgb(&again, 72, 40, ""));
    let random = dir.path().join("random.mp4");
    let out = stylize(&input, &random, &[]);
    assert!(stderr(&out).contains("seed "), "{}", stderr(&out));
}

#[test]
fn stylize_errors_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let output = dir.path().join("out.mp4");
    let out = stylize(&input, &output, &["--scheduler", "plms"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("plms"), "{}", stderr(&out));
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["-p", "x", "-m"])
        .arg(dir.path().join("no-such-model"))
        .args(["--offline", "-o"])
        .arg(&output));
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out)
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{}",
        stderr(&out)
    );
    let out = run(bin().arg("stylize").arg(&input).args(["-o"]).arg(&output));
    assert!(
        stderr(&out).contains("--prompt is required"),
        "{}",
        stderr(&out)
    );
    let out = stylize(&input, &output, &["--segment", "1/2"]);
    assert!(
        stderr(&out).contains("--segment needs --seed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(listing(dir.path()), ["in.mp4"]);
}
