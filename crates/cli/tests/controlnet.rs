//! `stylize -c …` end to end on the tiny SD-2-like model and its tiny random ControlNet
//! (tests/fixtures/sd/controlnet, made by tools/reference/golden_controlnet.py), on a cut of
//! a real clip: frames, rate and audio kept, the net changes the result, several nets with a
//! control video render the same whole or in shares, and every misfit stops before any frame.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd")
}

fn net(name: &str) -> String {
    fixtures()
        .join("controlnet")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn stylize(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    run(bin()
        .arg("stylize")
        .arg(input)
        .args(["-p", "a watercolor painting", "-m"])
        .arg(fixtures().join("tiny-sd2"))
        .args(["--steps", "4", "--seed", "5", "--quiet", "-o"])
        .arg(output)
        .args(extra))
}

/// 0.4 s of the real clip at 80×48, with its audio.
fn real_clip(dir: &Path) -> PathBuf {
    let path = dir.join("in.mp4");
    let src = bigbuckbunny();
    ffmpeg(&[
        "-ss",
        "2",
        "-i",
        src.to_str().unwrap(),
        "-t",
        "0.4",
        "-vf",
        "scale=80:48",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        path.to_str().unwrap(),
    ]);
    path
}

#[test]
fn a_controlnet_steers_every_frame_keeping_frames_rate_and_audio() {
    let dir = tempfile::tempdir().unwrap();
    let input = real_clip(dir.path());
    let plain = dir.path().join("plain.mp4");
    assert!(stylize(&input, &plain, &[]).status.success());
    let output = dir.path().join("canny.mp4");
    let out = stylize(&input, &output, &["-c", &net("tiny-sd2-a")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (vi, vo) = (video_facts(&input), video_facts(&output));
    assert_eq!((vo.width, vo.height), (80, 48));
    assert_eq!((vo.fps.clone(), vo.frames), (vi.fps.clone(), vi.frames));
    assert!(audio_duration(&output).is_some(), "audio kept");
    let p = psnr(
        &decode_rgb(&plain, 80, 48, ""),
        &decode_rgb(&output, 80, 48, ""),
    );
    assert!(p < 40.0, "the ControlNet changed nothing ({p:.1} dB)");
    // The single-file copy of the same net gives the same video.
    let single = dir.path().join("single.mp4");
    let out = stylize(&input, &single, &["-c", &net("tiny-sd2-a.safetensors")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(decode_rgb(&output, 80, 48, "") == decode_rgb(&single, 80, 48, ""));
}

#[test]
fn two_nets_with_a_control_video_render_the_same_whole_or_in_shares() {
    let dir = tempfile::tempdir().unwrap();
    let input = real_clip(dir.path());
    // A control video made by another tool: here the input's edges, blurred.
    let control = dir.path().join("control.mp4");
    ffmpeg(&[
        "-i",
        input.to_str().unwrap(),
        "-vf",
        "edgedetect,boxblur=1",
        "-an",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        control.to_str().unwrap(),
    ]);
    let c = control.to_str().unwrap();
    let a = net("tiny-sd2-a");
    let b = net("tiny-sd2-a.safetensors");
    let nets = [
        "-c",
        &a,
        "-c",
        &b,
        "--control",
        "canny",
        "--control",
        "video",
        "--control-video",
        c,
        "--controlnet-scale",
        "1.0",
        "--controlnet-scale",
        "0.5",
        "--control-guidance-end",
        "0.8",
        "--guess-mode",
        "--segment-seconds",
        "0.2",
    ];
    let whole = dir.path().join("whole.mp4");
    let out = stylize(&input, &whole, &nets);
    assert!(out.status.success(), "{}", stderr(&out));
    let shared = dir.path().join("shared.mp4");
    for share in ["1/2", "2/2"] {
        let mut args = nets.to_vec();
        args.extend(["--segment", share]);
        let out = stylize(&input, &shared, &args);
        assert!(out.status.success(), "{share}: {}", stderr(&out));
    }
    // The same command without --segment joins the shares.
    let out = stylize(&input, &shared, &nets);
    assert!(out.status.success(), "join: {}", stderr(&out));
    assert!(
        decode_rgb(&whole, 80, 48, "") == decode_rgb(&shared, 80, 48, ""),
        "shares differ from the whole run"
    );
}

#[test]
fn controlnet_misfits_stop_before_any_frame_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let output = dir.path().join("out.mp4");
    let short = make_clip(dir.path(), "short.mp4", "64x48", "25", 0.12, None, &[]);
    let s = short.to_str().unwrap();
    let a = net("tiny-sd2-a");
    let cases: [(&[&str], &str); 7] = [
        // An SD-1-like net for the SD-2-like model.
        (&["-c", &net("tiny-sd-a")], "does not fit the model"),
        (
            &["-c", &a, "--control-video", s],
            "must match the input frame for frame",
        ),
        (&["--control", "frame"], "--control needs a ControlNet"),
        (
            &["-c", &a, "--control", "video"],
            "read a control video but 0 --control-video",
        ),
        (
            &["-c", &a, "--control", "depth"],
            "unknown --control `depth`",
        ),
        (&["-c", &a, "--canny", "200"], "LOW,HIGH"),
        (
            &[
                "-c",
                &a,
                "--control-guidance-start",
                "0.5",
                "--control-guidance-end",
                "0.5",
            ],
            "must be below",
        ),
    ];
    for (args, want) in cases {
        let out = stylize(&input, &output, args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{args:?}: {err}"
        );
    }
    assert_eq!(listing(dir.path()), ["in.mp4", "short.mp4"]);
}
