//! Every user error: one clear line on stderr, a non-zero exit, and no output file.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;

/// Runs `stylize` on `input` into `dir/out.mp4` and expects a one-line error containing `msg`.
fn fails_with(input: &Path, dir: &Path, args: &[&str], msg: &str) -> Output {
    let output = dir.join("out.mp4");
    let out = run(bin()
        .arg("stylize")
        .arg(input)
        .args(["--quiet", "-o"])
        .arg(&output)
        .args(args));
    let err = stderr(&out);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(err.contains(msg), "expected `{msg}` in: {err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!output.exists(), "no output left behind");
    assert!(
        !dir.join("out.mp4.work").exists(),
        "no work folder left behind"
    );
    out
}

fn clip(dir: &Path) -> std::path::PathBuf {
    make_clip(dir, "in.mp4", "320x240", "25", 0.4, Some("aac"), &[])
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &dir.path().join("nope.mp4"),
        dir.path(),
        &["--frame-stage", "identity"],
        "no such file",
    );
}

#[test]
fn folder_without_videos_as_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"no video here").unwrap();
    fails_with(
        dir.path(),
        dir.path(),
        &["--frame-stage", "identity"],
        "no videos in this folder",
    );
}

#[test]
fn text_file_is_not_a_video() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("notes.mp4");
    std::fs::write(&txt, "this is not a video\n").unwrap();
    fails_with(
        &txt,
        dir.path(),
        &["--frame-stage", "identity"],
        "not a video file",
    );
}

#[test]
fn audio_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("tone.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=duration=1",
        "-c:a",
        "aac",
        a.to_str().unwrap(),
    ]);
    fails_with(&a, dir.path(), &["--frame-stage", "identity"], "audio only");
}

#[test]
fn zero_frames() {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("zero.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2",
        "-t",
        "0",
        "-c:v",
        "libx264",
        z.to_str().unwrap(),
    ]);
    fails_with(
        &z,
        dir.path(),
        &["--frame-stage", "identity"],
        "no video stream",
    );
}

#[test]
fn truncated_file_is_processed_as_far_as_it_decodes_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // A Matroska file keeps its index at the front: cut in half, the first half still plays.
    let full = make_clip(dir.path(), "full.mkv", "320x240", "25", 4.0, None, &[]);
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.mkv");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let output = dir.path().join("out.mp4");
    let out = run(bin()
        .arg("stylize")
        .arg(&cut)
        .args(["--frame-stage", "identity", "--quiet", "-o"])
        .arg(&output));
    let err = stderr(&out);
    if out.status.success() {
        let frames = video_facts(&output).frames;
        assert!(frames > 0 && frames < 100, "{frames} frames");
        assert!(
            err.contains("truncated") || err.contains("damaged"),
            "warned: {err}"
        );
    } else {
        assert!(err.starts_with("error: "), "{err}");
        assert!(!output.exists());
    }
}

#[test]
fn ffmpeg_missing_says_how_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    let output = dir.path().join("out.mp4");
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "-o"])
        .arg(&output)
        .env("FFPROBE", "/nonexistent/ffprobe"));
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("ffprobe not found")
            && err.contains("FFPROBE")
            && err.contains("apt-get install ffmpeg"),
        "{err}"
    );
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "-o"])
        .arg(&output)
        .env("FFMPEG", "/nonexistent/ffmpeg"));
    assert!(
        stderr(&out).contains("FFMPEG=/nonexistent/ffmpeg"),
        "{}",
        stderr(&out)
    );
    assert!(!output.exists());
}

#[test]
fn bad_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    let out = fails_with(
        &input,
        dir.path(),
        &["--frame-stage", "identity", "--strength", "1.5"],
        "1.5 is outside 0..1",
    );
    assert_eq!(out.status.code(), Some(2));
    fails_with(
        &input,
        dir.path(),
        &["--frame-stage", "identity", "--max-res", "4k"],
        "unknown max resolution `4k`",
    );
    fails_with(
        &input,
        dir.path(),
        &["--frame-stage", "identity", "--codec", "vp9"],
        "unknown codec `vp9`",
    );
    fails_with(
        &input,
        dir.path(),
        &["--frame-stage", "identity", "--segment", "4/3"],
        "not K/N",
    );
    fails_with(
        &input,
        dir.path(),
        &["--frame-stage", "identity", "--crf", "60"],
        "out of range",
    );
    fails_with(
        &input,
        dir.path(),
        &["--frame-stage", "identity", "--device", "tpu"],
        "unknown device",
    );
}

#[test]
fn features_that_have_not_landed_stop_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    fails_with(
        &input,
        dir.path(),
        &[
            "-p",
            "anime",
            "--animatediff",
            "-c",
            "lllyasviel/sd-controlnet-canny",
        ],
        "is not available yet",
    );
}

#[test]
fn output_rules() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    // The input itself.
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "--overwrite", "-o"])
        .arg(&input));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("would overwrite the input"),
        "{}",
        stderr(&out)
    );
    // An existing output without --overwrite, then with it.
    let existing = dir.path().join("out.mp4");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "-o"])
        .arg(&existing));
    assert!(
        stderr(&out).contains("already exists (use --overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "--quiet", "--overwrite", "-o"])
        .arg(&existing));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(video_facts(&existing).frames, 10);
    // A folder that does not exist, and one that cannot be written.
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "-o"])
        .arg(dir.path().join("no/such/dir/x.mp4")));
    assert!(
        stderr(&out).contains("output folder does not exist"),
        "{}",
        stderr(&out)
    );
    let out = run(bin().arg("stylize").arg(&input).args([
        "--frame-stage",
        "identity",
        "-o",
        "/proc/x.mp4",
    ]));
    assert!(stderr(&out).contains("not writable"), "{}", stderr(&out));
    assert!(!Path::new("/proc/x.mp4").exists());
    // The input was only read.
    assert!(video_facts(&input).frames == 10);
}

#[test]
fn disk_full_fails_cleanly() {
    // A 1 MiB tmpfs stands in for a full disk (needs root, as CI and this machine have).
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "640x360",
        "25",
        4.0,
        Some("aac"),
        &["-crf", "10"],
    );
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "could not mount a tmpfs (this test needs root)");
    let output = small.join("out.mp4");
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args([
            "--frame-stage",
            "identity",
            "--quiet",
            "--max-res",
            "original",
            "--crf",
            "0",
            "-o",
        ])
        .arg(&output));
    let err = stderr(&out);
    let left = listing(&small);
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert!(!out.status.success());
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!output.exists());
    assert!(!left.iter().any(|n| n.ends_with(".partial")), "{left:?}");
}

/// `probe … | head`: the reader goes away before the output is written; the command ends
/// quietly (no panic about a broken pipe).
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    let mut child = bin()
        .args(["probe"])
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{err}");
}
