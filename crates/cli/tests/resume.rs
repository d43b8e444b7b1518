//! Crash safety: kill -9 and resume, Ctrl-C, and scale-out with `--segment K/N` + `join`.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn segments_in(work: &Path) -> usize {
    std::fs::read_dir(work)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("seg_") && n.ends_with(".mp4") && !n.contains("partial")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Polls until `ready`, failing if the child ends first or `limit` passes.
fn wait_until(child: &mut Child, limit: Duration, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be interrupted"
        );
        assert!(t0.elapsed() < limit, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_segments(work: &Path, n: usize, child: &mut Child) {
    wait_until(child, Duration::from_secs(120), || segments_in(work) >= n);
}

/// Ctrl-C: SIGINT to the child; its exit code and stderr.
fn interrupt(child: Child) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn stylize_cmd(input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("stylize")
        .arg(input)
        .args([
            "--frame-stage",
            "invert",
            "--segment-seconds",
            "0.4",
            "--quiet",
            "-o",
        ])
        .arg(output)
        .args(extra);
    c
}

#[test]
fn kill_9_then_rerun_gives_the_same_video() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "320x240", "25", 4.0, Some("aac"), &[]);
    let reference = dir.path().join("reference.mp4");
    stylize_ok(&input, &reference, "invert", &["--segment-seconds", "0.4"]);

    let output = dir.path().join("out.mp4");
    let work = dir.path().join("out.mp4.work");
    let mut child = spawn(&mut stylize_cmd(
        &input,
        &output,
        &["--frame-stage-delay-ms", "40"],
    ));
    wait_for_segments(&work, 3, &mut child);
    child.kill().unwrap(); // SIGKILL: no clean-up at all
    child.wait().unwrap();
    assert!(!output.exists(), "no output after a kill");
    let done = segments_in(&work);
    assert!((3..10).contains(&done), "{done} segments before the kill");

    let out = run(&mut stylize_cmd(&input, &output, &["-v"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let a = decode_rgb(&reference, 320, 240, "");
    let b = decode_rgb(&output, 320, 240, "");
    assert_eq!(a.len(), 100);
    assert!(a == b, "resumed output differs from the uninterrupted one");
    assert!(!work.exists(), "work folder removed after success");
    assert_eq!(audio_duration(&output).map(|a| a.0).as_deref(), Some("aac"));
}

#[test]
fn changed_settings_start_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "320x240", "25", 2.0, None, &[]);
    let output = dir.path().join("out.mp4");
    let out = run(&mut stylize_cmd(&input, &output, &["--keep-work"]));
    assert!(out.status.success());
    let work = dir.path().join("out.mp4.work");
    assert!(work.join("manifest.json").exists(), "--keep-work keeps it");
    std::fs::remove_file(&output).unwrap();
    // Same settings: everything is reused.
    let out = run(&mut stylize_cmd(&input, &output, &["--keep-work", "-v"]));
    assert!(!stderr(&out).contains("starting afresh"));
    std::fs::remove_file(&output).unwrap();
    // Another crf changes pixels: the old segments are thrown away, with a warning.
    let out = run(&mut stylize_cmd(&input, &output, &["--crf", "30"]));
    assert!(out.status.success());
    assert!(stderr(&out).contains("starting afresh"), "{}", stderr(&out));
    assert!(!work.exists());
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_finished_segments() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "320x240", "25", 4.0, None, &[]);
    let output = dir.path().join("out.mp4");
    let work = dir.path().join("out.mp4.work");
    let mut child = spawn(&mut stylize_cmd(
        &input,
        &output,
        &["--frame-stage-delay-ms", "40"],
    ));
    wait_for_segments(&work, 2, &mut child);
    let (code, err) = interrupt(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!output.exists());
    assert!(segments_in(&work) >= 2);
    let leftovers: Vec<String> = listing(&work)
        .into_iter()
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial segment removed: {leftovers:?}"
    );
    // No ffmpeg child outlives us.
    let ps = Command::new("pgrep")
        .args(["-f", work.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "orphan: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

/// A job of one segment writes the output's temporary file itself: Ctrl-C leaves neither it
/// nor the work folder, and the message does not promise a resume.
#[test]
fn ctrl_c_in_a_job_of_one_segment_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "320x240", "25", 2.0, Some("aac"), &[]);
    let output = dir.path().join("out.mp4");
    let mut child = spawn(bin().arg("stylize").arg(&input).args([
        "--frame-stage",
        "invert",
        "--frame-stage-delay-ms",
        "40",
        "-o",
        output.to_str().unwrap(),
    ]));
    let partial = dir.path().join("out.mp4.work/output.partial.tmp");
    wait_until(&mut child, Duration::from_secs(60), || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0)
    });
    let (code, err) = interrupt(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("nothing was kept"), "{err}");
    assert_eq!(
        listing(dir.path()),
        ["in.mp4"],
        "nothing left beside the input"
    );
}

#[test]
fn shares_rendered_in_parallel_join_to_the_same_video() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "320x240",
        "30000/1001",
        3.0,
        Some("aac"),
        &[],
    );
    let reference = dir.path().join("reference.mp4");
    stylize_ok(&input, &reference, "invert", &["--segment-seconds", "0.4"]);

    let output = dir.path().join("out.mp4");
    let n = 3;
    let children: Vec<Child> = (1..=n)
        .map(|k| {
            spawn(&mut stylize_cmd(
                &input,
                &output,
                &["--segment", &format!("{k}/{n}")],
            ))
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!output.exists(), "shares do not join");
    let work = dir.path().join("out.mp4.work");
    let out = run(bin().arg("join").arg(&work));
    assert!(out.status.success(), "{}", stderr(&out));
    let v = video_facts(&output);
    assert_eq!(v.fps, "30000/1001");
    let a = decode_rgb(&reference, 320, 240, "");
    assert!(
        a == decode_rgb(&output, 320, 240, ""),
        "joined shares differ from one run"
    );
    assert!(audio_duration(&output).is_some());
    assert!(!work.exists());
}

#[test]
fn join_refuses_missing_segments() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "320x240", "25", 2.0, None, &[]);
    let output = dir.path().join("out.mp4");
    let out = run(&mut stylize_cmd(&input, &output, &["--segment", "1/2"]));
    assert!(out.status.success());
    let out = run(bin().arg("join").arg(dir.path().join("out.mp4.work")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not rendered yet"),
        "{}",
        stderr(&out)
    );
    assert!(!output.exists());
    // The plain command renders what is missing and joins.
    let out = run(&mut stylize_cmd(&input, &output, &[]));
    assert!(out.status.success());
    assert_eq!(video_facts(&output).frames, 50);
}
