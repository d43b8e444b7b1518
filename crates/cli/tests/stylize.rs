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
    // A run that cannot start has no seed to repeat: none is printed.
    assert!(!stderr(&out).contains("seed "), "{}", stderr(&out));
    let out = run(bin()
        .arg("stylize")
        .arg(dir.path().join("missing.mp4"))
        .args(["-p", "x", "-m"])
        .arg(tiny_sd2()));
    assert!(stderr(&out).contains("missing.mp4"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("seed "), "{}", stderr(&out));
    let out = stylize(&input, &output, &["--segment", "1/2"]);
    assert!(
        stderr(&out).contains("--segment needs --seed"),
        "{}",
        stderr(&out)
    );
    // GPU memory flags never silently do nothing on the CPU.
    for flags in [&["--offload"][..], &["--max-vram", "8"]] {
        let out = stylize(&input, &output, &[flags, &["--device", "cpu"]].concat());
        assert!(
            stderr(&out).contains("this run is on the CPU"),
            "{flags:?}: {}",
            stderr(&out)
        );
    }
    // Weights that fail to load (found only once the work folder exists) leave none behind,
    // for stylize and for upscale.
    let models = tempfile::tempdir().unwrap();
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["-p", "x", "-m"])
        .arg(models.path())
        .arg("-o")
        .arg(&output));
    assert!(stderr(&out).contains("lacks"), "{}", stderr(&out));
    let out = run(bin()
        .arg("upscale")
        .arg(&input)
        .arg("--upscale-model")
        .arg(models.path().join("missing.pth"))
        .arg("-o")
        .arg(&output));
    assert!(
        stderr(&out).contains("no such model file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(listing(dir.path()), ["in.mp4"]);
}

#[test]
fn every_temporal_mode_renders_the_same_video_whole_or_in_shares() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "72x40", "25", 0.6, None, &[]);
    // Lossless, so that what a mode changes is not lost among the encoder's choices.
    let seg = [
        "--seed",
        "3",
        "--segment-seconds",
        "0.2",
        "--codec",
        "h264",
        "--crf",
        "0",
    ];
    let render = |name: &str, mode: &[&str]| {
        let out_path = dir.path().join(format!("{name}.mp4"));
        let out = stylize(&input, &out_path, &[&seg[..], mode].concat());
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        decode_rgb(&out_path, 72, 40, "")
    };
    let none = render("none", &["--consistency", "none"]);
    assert_eq!(none.len(), 15);
    // Rerender-A-Video needs a strength that reaches its shape-aware steps.
    let none_08 = render("none_08", &["--consistency", "none", "--strength", "0.8"]);
    let modes: [(&str, &[&str]); 9] = [
        ("cross", &["--consistency", "cross-frame"]),
        ("flow", &["--consistency", "flow"]),
        ("crossflow", &[]),
        ("keyframes", &["--keyframe-every", "3"]),
        ("warp", &["--consistency", "none", "--noise", "warp"]),
        (
            "rerender",
            &["--consistency", "rerender", "--strength", "0.8"],
        ),
        (
            "rerender_keys",
            &[
                "--consistency",
                "rerender",
                "--strength",
                "0.8",
                "--keyframe-every",
                "3",
            ],
        ),
        ("stream", &["--consistency", "stream"]),
        (
            "stream_keys",
            &["--consistency", "stream", "--keyframe-every", "3"],
        ),
    ];
    for (name, mode) in modes {
        let whole = render(name, mode);
        // Shares 2 and 3 start in a process of their own, after frame 0 (segments of 5
        // frames: 5 and 10 are not keyframes): they rebuild the anchor, the look-back frame
        // or the keyframe before them. Keyframes chained by Rerender-A-Video or StreamV2V start
        // the chain again at every segment in one run too (keyframe 12 follows keyframe 9
        // rendered anew).
        let split = dir.path().join(format!("{name}_split.mp4"));
        for k in 1..=3 {
            let share = format!("{k}/3");
            let args = [&seg[..], mode, &["--segment", &share]].concat();
            let out = stylize(&input, &split, &args);
            assert!(out.status.success(), "{name}: {}", stderr(&out));
        }
        let out = run(bin()
            .arg("join")
            .arg(dir.path().join(format!("{name}_split.mp4.work"))));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(whole.len(), 15, "{name}");
        assert!(
            whole == decode_rgb(&split, 72, 40, ""),
            "{name}: joined shares differ from one run"
        );
        // Every mode changes the frames after the first (a mode that did nothing would leave
        // them equal: the video is lossless; cross-frame attention changes little on random
        // weights), and all but warped noise, which draws frame 0's noise its own way, and
        // StreamV2V, whose frame 0 attends to its own first step in its later ones, restyle
        // frame 0 as `none` does.
        let plain = if name.starts_with("rerender") {
            &none_08
        } else {
            &none
        };
        let diff = |t: usize| {
            let (a, b) = (&whole[t], &plain[t]);
            a.iter()
                .zip(b)
                .map(|(x, y)| x.abs_diff(*y) as f64)
                .sum::<f64>()
                / a.len() as f64
        };
        if name != "warp" && !name.starts_with("stream") {
            assert_eq!(diff(0), 0.0, "{name}: frame 0");
        }
        let later = (1..15).map(diff).sum::<f64>() / 14.0;
        assert!(later > 0.1, "{name}: the later frames differ by {later:.2}");
    }
}

#[test]
fn temporal_options_that_cannot_run_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let output = dir.path().join("out.mp4");
    let out = stylize(
        &input,
        &output,
        &["--consistency", "flow", "--keyframe-every", "4"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not available yet"),
        "{}",
        stderr(&out)
    );
    // Rerender-A-Video at strength 0.5 of 4 steps would skip its shape-aware fusion.
    let out = stylize(
        &input,
        &output,
        &["--consistency", "rerender", "--strength", "0.5"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("raise --strength to 0.8"),
        "{}",
        stderr(&out)
    );
    // Nor on frames of one latent cell a side (its warps need two).
    let thin = make_clip(dir.path(), "thin.mp4", "64x8", "25", 0.2, None, &[]);
    let args = [
        "--consistency",
        "rerender",
        "--strength",
        "0.8",
        "--codec",
        "h264",
    ];
    let out = stylize(&thin, &output, &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs frames of at least 16×16"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&thin).unwrap();
    let out = stylize(&input, &output, &["--keyframe-every", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
    let out = stylize(&input, &output, &["--consistency", "wobbly"]);
    assert!(
        stderr(&out).contains("unknown consistency"),
        "{}",
        stderr(&out)
    );
    assert_eq!(listing(dir.path()), ["in.mp4"]);
}

#[test]
fn flicker_compares_a_stylized_video_with_its_original() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "160x96", "25", 0.4, None, &[]);
    let out = run(bin().arg("flicker").arg(&input).arg(&input).arg("--json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "warp_error",
        "warp_error_original",
        "ratio",
        "frames",
        "occluded_fraction",
        "detail",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(v["frames"], 10);
    assert_eq!(v["ratio"], 1.0);
    assert_eq!(v["warp_error"], v["warp_error_original"]);
    assert_eq!(v["detail"], 1.0);
    // Blur cannot pass as steadiness: a blurred copy flickers no more, but has less detail;
    // a sharpened one has more.
    let detail = |name: &str, filter: &str| {
        let copy = dir.path().join(name);
        ffmpeg(&[
            "-i",
            input.to_str().unwrap(),
            "-vf",
            filter,
            "-c:v",
            "libx264",
            "-qp",
            "0",
            copy.to_str().unwrap(),
        ]);
        let out = run(bin().arg("flicker").arg(&input).arg(&copy).arg("--json"));
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["detail"].as_f64().unwrap()
    };
    let blurred = detail("blurred.mkv", "boxblur=2");
    let sharpened = detail("sharpened.mkv", "unsharp=5:5:1.5");
    assert!(blurred < 0.8, "blurred: {blurred}");
    assert!(sharpened > 1.2, "sharpened: {sharpened}");

    let text = run(bin().arg("flicker").arg(&input).arg(&input).args([
        "--flow",
        "ultrafast",
        "--max-frames",
        "3",
    ]));
    assert!(text.status.success(), "{}", stderr(&text));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("frames compared:     3"), "{stdout}");
    assert!(stdout.contains("ratio:"), "{stdout}");
    assert!(stdout.contains("detail:"), "{stdout}");

    let missing = run(bin()
        .arg("flicker")
        .arg(&input)
        .arg(dir.path().join("nope.mp4")));
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("nope.mp4"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn the_tiny_vae_replaces_the_models_own() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "72x40", "25", 0.2, None, &[]);
    let taesd = tiny_sd2().join("../taesd");
    let full = dir.path().join("full.mp4");
    let tiny = dir.path().join("tiny.mp4");
    assert!(stylize(&input, &full, &["--seed", "2"]).status.success());
    let out = stylize(
        &input,
        &tiny,
        &["--seed", "2", "--vae", taesd.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(video_facts(&tiny).frames, video_facts(&input).frames);
    assert!(decode_rgb(&full, 72, 40, "") != decode_rgb(&tiny, 72, 40, ""));
    // A folder that is no tiny VAE: one line, before any frame.
    let out = stylize(
        &input,
        &dir.path().join("bad.mp4"),
        &["--vae", tiny_sd2().to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lacks"), "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["full.mp4", "in.mp4", "tiny.mp4"]);
}

#[test]
fn loras_are_fused_and_misfits_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let fixtures = tiny_sd2().join("..");
    let kohya = fixtures.join("lora/kohya.safetensors");
    let peft = fixtures.join("lora/peft.safetensors");
    let run_sd1 = |out: &str, extra: &[&str]| {
        run(bin()
            .arg("stylize")
            .arg(&input)
            .args(["-p", "a watercolor painting", "-m"])
            .arg(fixtures.join("tiny-sd"))
            .args(["--steps", "4", "--seed", "4", "--quiet", "-o"])
            .arg(dir.path().join(out))
            .args(extra))
    };
    assert!(run_sd1("plain.mp4", &[]).status.success());
    let k = format!("{}:0.8", kohya.display());
    let out = run_sd1(
        "lora.mp4",
        &["--lora", &k, "--lora", peft.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let frames = |f: &str| decode_rgb(&dir.path().join(f), 64, 48, "");
    assert!(frames("plain.mp4") != frames("lora.mp4"));
    // The SD-1 LoRA on the SD-2 model: one line, nothing rendered.
    let out = stylize(&input, &dir.path().join("bad.mp4"), &["--lora", &k]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lacks"), "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["in.mp4", "lora.mp4", "plain.mp4"]);
}

#[test]
fn preview_renders_spread_frames_and_estimates_the_time() {
    let dir = tempfile::tempdir().unwrap();
    // Every frame another hue, so that each is told apart below.
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "72x40",
        "25",
        0.4,
        None,
        &["-vf", "hue=h=36*n"],
    );
    let output = dir.path().join("out.mp4");
    let out = stylize(&input, &output, &["--seed", "9", "--preview", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("preview: 2 frames") && said.contains("10 frames) would take about"),
        "{said}"
    );
    assert_eq!(listing(dir.path()), ["in.mp4", "out_preview.png"]);
    let sheet = image::open(dir.path().join("out_preview.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(sheet.width(), 2 * 72);
    assert!(sheet.height() > 2 * 40, "settings written under the frames");

    // The mechanics, exactly: with the inverting test stage the bottom row is the top row
    // inverted, and the top row shows frames 2 and 7 of 10 (the middles of two halves).
    let inverted = dir.path().join("inv.mp4");
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "invert", "--preview", "2", "--quiet", "-o"])
        .arg(&inverted));
    assert!(out.status.success(), "{}", stderr(&out));
    let sheet = image::open(dir.path().join("inv_preview.png"))
        .unwrap()
        .to_rgb8();
    let frames = decode_rgb(&input, 72, 40, "");
    for (col, index) in [(0u32, 2usize), (1, 7)] {
        let cell = |y| {
            image::imageops::crop_imm(&sheet, col * 72, y, 72, 40)
                .to_image()
                .into_raw()
        };
        let (top, bottom) = (cell(0), cell(40));
        assert!(top.iter().zip(&bottom).all(|(a, b)| *b == 255 - *a));
        let closest = (0..frames.len())
            .max_by(|&a, &b| {
                let p =
                    |j: usize| psnr(std::slice::from_ref(&top), std::slice::from_ref(&frames[j]));
                p(a).total_cmp(&p(b))
            })
            .unwrap();
        assert_eq!(closest, index, "column {col}");
    }
}

/// Copies a diffusers folder (two levels deep) so that a test can edit a config.
fn copy_model(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_model(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn fast_picks_the_few_step_settings_by_model_family() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let fixtures = tiny_sd2().join("..");
    // An offline hub cache holding the tiny SD-1 LoRA as the LCM-LoRA.
    let cache = dir.path().join("hub");
    let repo = cache.join("models--latent-consistency--lcm-lora-sdv1-5");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let lora = fixtures.join("lora/kohya.safetensors");
    std::fs::copy(
        &lora,
        repo.join("snapshots")
            .join(commit)
            .join("pytorch_lora_weights.safetensors"),
    )
    .unwrap();
    let render = |model: &Path, out: &str, hub: &Path, extra: &[&str]| {
        run(bin()
            .arg("stylize")
            .arg(&input)
            .args(["-p", "a watercolor painting", "--seed", "3", "-m"])
            .arg(model)
            .env("HF_HUB_CACHE", hub)
            .env("HF_HUB_OFFLINE", "1")
            .args(["-o"])
            .arg(dir.path().join(out))
            .args(extra))
    };
    let frames = |f: &str| decode_rgb(&dir.path().join(f), 64, 48, "");

    // SD 1.x: the LCM-LoRA fused in, lcm, 4 steps, guidance 1 (the tiny model's VAE kept:
    // TAESD does not fit its 2-level VAE), StreamV2V's bank, the same frames as those settings
    // given by hand.
    let sd1 = fixtures.join("tiny-sd");
    let out = render(&sd1, "fast.mp4", &cache, &["--fast", "--vae", "full"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("LCM-LoRA latent-consistency/lcm-lora-sdv1-5; scheduler lcm, 4 steps (2 run at strength 0.6), guidance 1"),
        "{}",
        stderr(&out)
    );
    let lora = lora.to_str().unwrap();
    let by_hand = [
        "--lora",
        lora,
        "--scheduler",
        "lcm",
        "--steps",
        "4",
        "--guidance",
        "1",
        "--consistency",
        "stream",
        "--quiet",
    ];
    assert!(render(&sd1, "hand.mp4", &cache, &by_hand).status.success());
    assert_eq!(frames("fast.mp4"), frames("hand.mp4"));
    // Offline without the LCM-LoRA: the error names it, nothing is written.
    let empty = dir.path().join("empty");
    let out = render(&sd1, "x.mp4", &empty, &["--fast", "--vae", "full"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--fast needs the LCM-LoRA latent-consistency/lcm-lora-sdv1-5")
            && stderr(&out).contains("offline"),
        "{}",
        stderr(&out)
    );

    // An LCM-distilled UNet: lcm with its guidance embedded, no LoRA.
    let lcm = dir.path().join("lcm");
    copy_model(&sd1, &lcm);
    copy_model(&fixtures.join("tiny-lcm-unet"), &lcm.join("unet"));
    let out = render(&lcm, "lcm.mp4", &empty, &["--fast", "--vae", "full"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(
        "LCM-distilled UNet; scheduler lcm, 4 steps (2 run at strength 0.6), guidance 8"
    ));
    let by_hand = [
        "--scheduler",
        "lcm",
        "--steps",
        "4",
        "--guidance",
        "8",
        "--consistency",
        "stream",
        "--quiet",
    ];
    assert!(render(&lcm, "lcm_hand.mp4", &empty, &by_hand)
        .status
        .success());
    assert_eq!(frames("lcm.mp4"), frames("lcm_hand.mp4"));
    assert!(frames("lcm.mp4") != frames("fast.mp4"));

    // A few-step distilled model (trailing timesteps, as SD-Turbo): euler, no guidance, the
    // tiny VAE by default (offline and not cached: named).
    let turbo = dir.path().join("turbo");
    copy_model(&tiny_sd2(), &turbo);
    let config = turbo.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"leading\"", "\"trailing\"")).unwrap();
    let out = render(&turbo, "x.mp4", &empty, &["--fast"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("madebyollin/taesd"),
        "{}",
        stderr(&out)
    );
    let taesd = fixtures.join("taesd");
    let taesd = taesd.to_str().unwrap();
    let out = render(&turbo, "turbo.mp4", &empty, &["--fast", "--vae", taesd]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out)
        .contains("few-step distilled model; scheduler euler, 2 steps (1 run at strength 0.6)"));
    let by_hand = [
        "--vae",
        taesd,
        "--scheduler",
        "euler",
        "--steps",
        "2",
        "--guidance",
        "0",
        "--consistency",
        "stream",
        "--quiet",
    ];
    assert!(render(&turbo, "turbo_hand.mp4", &empty, &by_hand)
        .status
        .success());
    assert_eq!(frames("turbo.mp4"), frames("turbo_hand.mp4"));

    // SD 2.x without few-step distillation: refused with the way out, before any frame.
    let out = render(&tiny_sd2(), "x.mp4", &empty, &["--fast", "--vae", taesd]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no LCM-LoRA for SD 2")
            && stderr(&out).contains("stabilityai/sd-turbo"),
        "{}",
        stderr(&out)
    );
    // --fast chooses steps, guidance and sampler itself.
    let out = render(&sd1, "x.mp4", &cache, &["--fast", "--steps", "8"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--steps"), "{}", stderr(&out));
    let out = render(
        &sd1,
        "x.mp4",
        &cache,
        &["--fast", "--vae", "full", "--strength", "0.2"],
    );
    assert!(
        stderr(&out).contains("--fast runs 4 steps here, of which strength 0.2 runs none"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        listing(dir.path()),
        [
            "fast.mp4",
            "hand.mp4",
            "hub",
            "in.mp4",
            "lcm",
            "lcm.mp4",
            "lcm_hand.mp4",
            "turbo",
            "turbo.mp4",
            "turbo_hand.mp4"
        ]
    );
}

#[test]
fn animatediff_renders_the_same_video_whole_or_in_shares() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 1.0, None, &[]);
    let fixtures = tiny_sd2().join("..");
    let adapter = fixtures.join("motion/tiny-v2");
    let render = |model: &Path, out: &str, extra: &[&str]| {
        run(bin()
            .arg("stylize")
            .arg(&input)
            .args([
                "-p",
                "a watercolor painting",
                "--steps",
                "4",
                "--seed",
                "3",
                "-m",
            ])
            .arg(model)
            .args(["--quiet", "-o"])
            .arg(dir.path().join(out))
            .args(extra))
    };
    // Windows of 4 frames sharing 2: chunks of 10 frames from 0, 8, 16, 24; segments of 7
    // frames start inside chunks and overlaps.
    let base = [
        "--animatediff",
        "--motion-adapter",
        adapter.to_str().unwrap(),
        "--context-overlap",
        "2",
        "--segment-seconds",
        "0.28",
    ];
    let animate = [&base[..], &["--context-length", "4"]].concat();
    let sd1 = fixtures.join("tiny-sd");
    let out = render(&sd1, "whole.mp4", &animate);
    assert!(out.status.success(), "{}", stderr(&out));
    let frames = |f: &str| decode_rgb(&dir.path().join(f), 64, 48, "");
    let whole = frames("whole.mp4");
    assert_eq!(whole.len(), 25);
    for k in 1..=3 {
        let share = format!("{k}/3");
        let args = [&animate[..], &["--segment", &share]].concat();
        let out = render(&sd1, "split.mp4", &args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(bin().arg("join").arg(dir.path().join("split.mp4.work")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        whole == frames("split.mp4"),
        "joined shares differ from one run"
    );
    // The motion modules change the frames (against every frame on its own).
    let out = render(&sd1, "plain.mp4", &["--consistency", "none"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(psnr(&whole, &frames("plain.mp4")) < 40.0);

    // A preview renders its frame's chunk; the estimate counts a chunk's stride of frames.
    let out = render(
        &sd1,
        "whole.mp4",
        &[&animate[..], &["--preview", "1"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("preview: 1 frames"));

    // SD 2 has no motion adapters: one line saying what to do, before any frame.
    let out = render(&tiny_sd2(), "x.mp4", &animate);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("SD 1.5 only") && stderr(&out).contains("-m"),
        "{}",
        stderr(&out)
    );
    // Windows the adapter cannot encode, modes it does not combine with, flags without it.
    for (args, says) in [
        (&["--context-length", "40"][..], "32 frames at most"),
        (&["--consistency", "flow"][..], "not available yet"),
    ] {
        let out = render(&sd1, "x.mp4", &[&base[..], args].concat());
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    let out = render(&sd1, "x.mp4", &["--context-length", "8"]);
    assert!(stderr(&out).contains("--animatediff"), "{}", stderr(&out));
    assert_eq!(
        listing(dir.path()),
        [
            "in.mp4",
            "plain.mp4",
            "split.mp4",
            "whole.mp4",
            "whole_preview.png"
        ]
    );
}
