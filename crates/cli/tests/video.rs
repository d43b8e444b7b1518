//! The video path end to end with the real binary and real ffmpeg: frame rates, sizes,
//! audio, subtitles, pixel fidelity.

mod common;

use common::*;
use std::path::Path;

/// Pixel fidelity of the pipeline itself (colour matrix, range, alignment, frame order) is
/// checked at high quality: on testsrc2's saturated 1-pixel patterns at 320-640 px, x265 at
/// the default crf 26 alone costs 33-35 dB. The real clip (`real_clip_bigbuckbunny`) is
/// checked at the default crf.
const FIDELITY: [&str; 2] = ["--crf", "12"];

/// Output facts every stylized file must satisfy against its input.
fn assert_matches_input(input: &Path, output: &Path, fps: &str, frames: u64) {
    let v = video_facts(output);
    assert_eq!(v.codec, "hevc");
    assert_eq!(v.pix_fmt, "yuv420p");
    assert_eq!(v.fps, fps, "exact frame rate");
    assert_eq!(v.frames, frames, "frame count");
    let frame = {
        let (n, d) = fps.split_once('/').unwrap();
        d.parse::<f64>().unwrap() / n.parse::<f64>().unwrap()
    };
    let (din, dout) = (format_duration(input), format_duration(output));
    assert!(
        (din - dout).abs() <= frame + 1e-3,
        "duration {dout} vs input {din}"
    );
    if let Some((_, a_in)) = audio_duration(input) {
        let (_, a_out) = audio_duration(output).expect("audio kept");
        assert!((a_in - a_out).abs() < 0.05, "audio {a_out} vs {a_in}");
    }
}

#[test]
fn identity_25fps_keeps_pixels_fps_and_audio() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mp4", "640x360", "25", 3.0, Some("aac"), &[]);
    let output = dir.path().join("out.mp4");
    stylize_ok(
        &input,
        &output,
        "identity",
        &["--max-res", "original", FIDELITY[0], FIDELITY[1]],
    );
    assert_matches_input(&input, &output, "25/1", 75);
    let (codec, _) = audio_duration(&output).unwrap();
    assert_eq!(codec, "aac", "aac is copied, not re-encoded");
    assert_same_picture(&input, &output, 640, 360);
    // The work folder is gone, nothing else was left next to the output.
    assert_eq!(listing(dir.path()), ["in.mp4", "out.mp4"]);
}

#[test]
fn ntsc_rate_stays_exact_and_frames_are_downscaled_to_480p() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "1280x720",
        "30000/1001",
        2.5,
        Some("aac"),
        &[],
    );
    let output = dir.path().join("out.mp4");
    // Short segments so the join crosses many segment boundaries.
    stylize_ok(
        &input,
        &output,
        "identity",
        &["--segment-seconds", "0.5", FIDELITY[0], FIDELITY[1]],
    );
    assert_matches_input(&input, &output, "30000/1001", 75);
    let v = video_facts(&output);
    assert_eq!((v.width, v.height), (848, 480));
    assert_same_picture(&input, &output, 848, 480);
}

#[test]
fn invert_stage_changes_pixels_as_expected() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "in.mkv", "320x240", "25", 1.0, None, &[]);
    let output = dir.path().join("out.mkv");
    stylize_ok(&input, &output, "invert", &FIDELITY);
    let v = video_facts(&output);
    assert_eq!(v.frames, 25);
    let inverted: Vec<Vec<u8>> = decode_rgb(&input, 320, 240, "")
        .into_iter()
        .map(|f| f.into_iter().map(|v| 255 - v).collect())
        .collect();
    let p = psnr(&inverted, &decode_rgb(&output, 320, 240, ""));
    assert!(p >= 35.0, "PSNR vs negated input {p:.1} dB");
    let plain = psnr(
        &decode_rgb(&input, 320, 240, ""),
        &decode_rgb(&output, 320, 240, ""),
    );
    assert!(
        plain < 15.0,
        "the stage really changed the pixels ({plain:.1} dB)"
    );
}

#[test]
fn variable_frame_rate_is_rendered_at_the_average_rate() {
    let dir = tempfile::tempdir().unwrap();
    // 45 frames at 1/30 s, then 15 frames at 3/30 s: r_frame_rate 30, average 150/7.
    let input = make_clip(
        dir.path(),
        "vfr.mp4",
        "320x240",
        "30",
        3.0,
        Some("aac"),
        &[
            "-vf",
            "setpts='if(lt(N,45),N/(30*TB),(45+(N-45)*3)/(30*TB))'",
            "-fps_mode",
            "vfr",
        ],
    );
    let probe = run(bin().args(["probe", "--json"]).arg(&input));
    let j: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(j["vfr"], true);
    assert_eq!(j["fps"], "150/7");
    let output = dir.path().join("out.mp4");
    let out = stylize_ok(&input, &output, "identity", &[]);
    assert!(stderr(&out).contains("variable frame rate"), "warned");
    let v = video_facts(&output);
    assert_eq!(v.fps, "150/7");
    let expected = (format_duration(&input) * 150.0 / 7.0).round() as i64;
    assert!(
        (v.frames as i64 - expected).abs() <= 1,
        "{} frames, expected ~{expected}",
        v.frames
    );
    assert!((format_duration(&output) - format_duration(&input)).abs() < 0.1);
}

#[test]
fn ten_bit_input_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in10.mkv",
        "320x240",
        "24",
        1.0,
        Some("libopus"),
        &[
            "-c:v",
            "libx265",
            "-pix_fmt",
            "yuv420p10le",
            "-x265-params",
            "log-level=error",
        ],
    );
    let j = probe_json(&input);
    assert_eq!(j["bit_depth"], 10);
    let output = dir.path().join("out.mp4");
    stylize_ok(&input, &output, "identity", &FIDELITY);
    assert_matches_input(&input, &output, "24/1", 24);
    assert_eq!(audio_duration(&output).unwrap().0, "opus");
    assert_same_picture(&input, &output, 320, 240);
}

#[test]
fn rotated_input_comes_out_upright() {
    let dir = tempfile::tempdir().unwrap();
    let plain = make_clip(
        dir.path(),
        "plain.mp4",
        "320x240",
        "25",
        1.0,
        Some("aac"),
        &[],
    );
    // A phone-style clip: landscape pixels plus a display matrix (set when remuxing).
    let input = dir.path().join("rot.mp4");
    ffmpeg(&[
        "-i",
        plain.to_str().unwrap(),
        "-c",
        "copy",
        "-metadata:s:v:0",
        "rotate=90",
        input.to_str().unwrap(),
    ]);
    let j = probe_json(&input);
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(240), Some(320))
    );
    let rotation = j["rotation"].as_u64().unwrap();
    assert!(rotation == 90 || rotation == 270, "{rotation}");
    let output = dir.path().join("out.mp4");
    stylize_ok(&input, &output, "identity", &FIDELITY);
    let v = video_facts(&output);
    assert_eq!((v.width, v.height), (240, 320));
    // ffmpeg's autorotate on both sides: same upright picture.
    assert_same_picture(&input, &output, 240, 320);
}

#[test]
fn odd_size_is_rounded_down_to_multiples_of_8() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "odd.mkv",
        "321x241",
        "25",
        1.0,
        Some("aac"),
        &["-pix_fmt", "yuv444p"],
    );
    let output = dir.path().join("out.mp4");
    stylize_ok(&input, &output, "identity", &[]);
    let v = video_facts(&output);
    assert_eq!((v.width, v.height), (320, 240));
    assert_eq!(v.frames, 25);
}

#[test]
fn single_frame_without_audio() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "one.mp4",
        "320x240",
        "25",
        0.04,
        None,
        &["-frames:v", "1"],
    );
    let output = dir.path().join("out.mp4");
    stylize_ok(&input, &output, "identity", &[]);
    let v = video_facts(&output);
    assert_eq!(v.frames, 1);
    assert!(audio_duration(&output).is_none());
}

#[test]
fn pcm_audio_in_mov_is_kept_in_mov_and_converted_for_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "pcm.mov",
        "320x240",
        "25",
        2.0,
        Some("pcm_s16le"),
        &[],
    );
    let mov = dir.path().join("out.mov");
    stylize_ok(&input, &mov, "identity", &[]);
    assert_matches_input(&input, &mov, "25/1", 50);
    assert_eq!(audio_duration(&mov).unwrap().0, "pcm_s16le");
    let mp4 = dir.path().join("out.mp4");
    let out = stylize_ok(&input, &mp4, "identity", &[]);
    assert!(stderr(&out).contains("converting it to AAC"), "warned");
    assert_matches_input(&input, &mp4, "25/1", 50);
    assert_eq!(audio_duration(&mp4).unwrap().0, "aac");
}

#[test]
fn subtitles_are_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let srt = dir.path().join("subs.srt");
    std::fs::write(
        &srt,
        "1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nWorld\n",
    )
    .unwrap();
    let plain = make_clip(
        dir.path(),
        "plain.mkv",
        "320x240",
        "25",
        2.0,
        Some("aac"),
        &[],
    );
    let input = dir.path().join("subs.mkv");
    ffmpeg(&[
        "-i",
        plain.to_str().unwrap(),
        "-i",
        srt.to_str().unwrap(),
        "-map",
        "0",
        "-map",
        "1",
        "-c",
        "copy",
        "-c:s",
        "srt",
        input.to_str().unwrap(),
    ]);
    let output = dir.path().join("out.mp4");
    stylize_ok(&input, &output, "identity", &[]);
    let s = ffprobe_stream(&output, "s:0", "codec_name");
    assert_eq!(s.get("codec_name").map(String::as_str), Some("mov_text"));
    let mkv = dir.path().join("out.mkv");
    stylize_ok(&input, &mkv, "identity", &[]);
    let s = ffprobe_stream(&mkv, "s:0", "codec_name");
    assert_eq!(s.get("codec_name").map(String::as_str), Some("subrip"));
}

#[test]
fn h264_and_av1_codecs() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "320x240",
        "25",
        1.0,
        Some("libopus"),
        &[],
    );
    let h264 = dir.path().join("out264.mp4");
    stylize_ok(
        &input,
        &h264,
        "identity",
        &["--codec", "h264", "--crf", "18"],
    );
    assert_eq!(video_facts(&h264).codec, "h264");
    let webm = dir.path().join("out.webm");
    stylize_ok(
        &input,
        &webm,
        "identity",
        &["--codec", "av1", "--preset", "12"],
    );
    let v = video_facts(&webm);
    assert_eq!(v.codec, "av1");
    assert_eq!(v.frames, 25);
    assert_eq!(audio_duration(&webm).map(|a| a.0).as_deref(), Some("opus"));
}

#[test]
fn real_clip_bigbuckbunny() {
    let input = bigbuckbunny();
    let dir = tempfile::tempdir().unwrap();
    let j = probe_json(&input);
    let frames = j["frame_count"].as_u64().unwrap();
    let fps = j["fps"].as_str().unwrap().to_string();
    assert_eq!(j["has_audio"], true);
    let output = dir.path().join("bbb_stylized.mp4");
    stylize_ok(&input, &output, "identity", &[]);
    assert_matches_input(&input, &output, &fps, frames);
    let v = video_facts(&output);
    assert_eq!((v.width, v.height), (848, 480));
    assert_same_picture(&input, &output, 848, 480);
}

#[test]
fn default_output_name_and_folder_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(dir.path(), "clip.mov", "320x240", "25", 0.4, None, &[]);
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "identity", "--quiet"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("clip_stylized.mp4").exists());
    let sub = dir.path().join("renders");
    std::fs::create_dir(&sub).unwrap();
    let out = run(bin()
        .arg("stylize")
        .arg(&input)
        .args(["--frame-stage", "invert", "--quiet", "-o"])
        .arg(&sub));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sub.join("clip_stylized.mp4").exists());
}

#[test]
fn probe_reports_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "in.mp4",
        "320x240",
        "30000/1001",
        1.0,
        Some("aac"),
        &[],
    );
    let out = run(bin().args(["probe", "--json"]).arg(&input));
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "width",
        "height",
        "fps",
        "frame_count",
        "duration",
        "vfr",
        "has_audio",
        "audio_codec",
        "subtitle_streams",
        "pix_fmt",
        "bit_depth",
        "hdr",
        "rotation",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert_eq!(j["fps"], "30000/1001");
    assert_eq!(j["frame_count"], 30);
    assert_eq!(j["audio_codec"], "aac");
    assert_eq!(j["hdr"], false);
    assert_eq!(j["bit_depth"], 8);
    let text = run(bin().arg("probe").arg(&input));
    assert!(String::from_utf8_lossy(&text.stdout).contains("30000/1001"));
}

#[test]
fn hdr_input_is_tone_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_clip(
        dir.path(),
        "hdr.mkv",
        "320x240",
        "25",
        0.4,
        None,
        &[
            "-c:v",
            "libx265",
            "-pix_fmt",
            "yuv420p10le",
            "-x265-params",
            "log-level=error",
            "-color_primaries",
            "bt2020",
            "-color_trc",
            "smpte2084",
            "-colorspace",
            "bt2020nc",
        ],
    );
    let j = probe_json(&input);
    assert_eq!(j["hdr"], true);
    let output = dir.path().join("out.mp4");
    stylize_ok(&input, &output, "identity", &[]);
    let s = ffprobe_stream(&output, "v:0", "color_transfer,color_primaries");
    assert_eq!(s["color_transfer"], "bt709");
    // testsrc2 decoded as PQ is very bright; tone mapped, it must keep contrast (not a flat,
    // washed-out picture): the spread of pixel values stays wide.
    let frames = decode_rgb(&output, 320, 240, "");
    let f = &frames[0];
    let (min, max) = (f.iter().min().unwrap(), f.iter().max().unwrap());
    assert!(max - min > 150, "contrast kept: {min}..{max}");
}

fn rate(fraction: &str) -> f64 {
    let (n, d) = fraction.split_once('/').unwrap_or((fraction, "1"));
    n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap()
}

/// 2 s at 30 fps then 2 s at 15 fps, with audio: Matroska's header says a constant 30/1, MP4's
/// sample table gives the average away. Found either way, rendered at the average rate, and
/// picture and audio end together (within a frame).
#[test]
fn undeclared_variable_frame_rate_is_found_from_the_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    for (ext, timing) in [("mkv", "variable (undeclared)"), ("mp4", "variable")] {
        let input = make_clip(
            dir.path(),
            &format!("vfr.{ext}"),
            "160x96",
            "30",
            4.0,
            Some("aac"),
            &[
                "-vf",
                "select='lt(n\\,60)+not(mod(n\\,2))'",
                "-fps_mode",
                "vfr",
            ],
        );
        let j = probe_json(&input);
        assert_eq!(
            (j["vfr"].as_bool(), j["timing"].as_str()),
            (Some(true), Some(timing)),
            "{ext}"
        );
        let fps = rate(j["fps"].as_str().unwrap());
        assert!(
            (21.5..23.5).contains(&fps),
            "{ext}: {fps} fps, 90 frames over 4 s"
        );
        let output = dir.path().join(format!("out_{ext}.mp4"));
        let out = stylize_ok(&input, &output, "identity", &[]);
        assert!(stderr(&out).contains("variable frame rate"), "warned");
        let v = video_facts(&output);
        let picture = v.frames as f64 / rate(&v.fps);
        let (_, sound) = audio_duration(&output).unwrap();
        println!(
            "{ext}: {} frames at {} = {picture:.3} s, audio {sound:.3} s",
            v.frames, v.fps
        );
        assert!((88..=92).contains(&v.frames), "{ext}: {} frames", v.frames);
        assert!(
            (picture - sound).abs() <= 1.0 / fps + 0.03,
            "{ext}: ends together"
        );
    }
}

/// An AVI capture with dropped frames (15 fps for 29.6 s, one picture in 7 stored; the muxer
/// writes empty packets for the rest): the output lasts as long as the input, repeating each
/// picture as players and ffmpeg's fps filter do, and the stage runs once per picture.
#[test]
fn dropped_frames_repeat_the_picture_and_are_not_rendered_twice() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("capture.avi");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x96:rate=15:duration=29.6",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=29.6",
        "-vf",
        "select='not(mod(n\\,7))'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "mjpeg",
        "-c:a",
        "pcm_s16le",
        input.to_str().unwrap(),
    ]);
    let j = probe_json(&input);
    assert_eq!(j["timing"], "dropped frames");
    assert_eq!(j["fps"], "15/1");
    assert_eq!(j["coded_frames"], 64);
    let frames = j["frame_count"].as_u64().unwrap();
    assert!((441..=444).contains(&frames), "{frames}");

    let output = dir.path().join("out.mp4");
    // 20 ms per rendered frame: 64 pictures take ~1.3 s, 442 frames would take ~9 s.
    let out = stylize_ok(
        &input,
        &output,
        "identity",
        &["--frame-stage-delay-ms", "20"],
    );
    let err = stderr(&out);
    assert!(err.contains("dropped frames"), "{err}");
    let reused: u64 = err
        .split(" repeated frames reused")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no repeat count in {err}"));
    // Every repeat but those that start a segment (a segment never looks back).
    assert!((370..=378).contains(&reused), "{reused} reused");
    let v = video_facts(&output);
    assert_eq!(v.fps, "15/1");
    assert!(v.frames.abs_diff(frames) <= 1, "{} frames", v.frames);
    // As long as the input's video (its last picture is at 29.4 s, shown for 1/15 s).
    let seconds = j["duration"].as_f64().unwrap();
    assert!(
        (v.frames as f64 / 15.0 - seconds).abs() <= 1.0 / 15.0,
        "{seconds} s"
    );
    assert!(audio_duration(&output).is_some(), "audio kept");
    // The pictures are the input's repeated as ffmpeg's fps filter repeats them.
    let want = decode_rgb(&input, 160, 96, "fps=15,");
    let got = decode_rgb(&output, 160, 96, "");
    assert_eq!(want.len(), got.len());
    // In step: much closer than the same frames three places off (testsrc2 at this size loses
    // ~33 dB to the 4:2:0 round trip whatever the timing).
    let (aligned, off) = (psnr(&want, &got), psnr(&want[3..], &got[..got.len() - 3]));
    assert!(
        aligned >= 30.0 && aligned > off + 3.0,
        "{aligned:.1} dB, {off:.1} dB off by 3"
    );
}

/// `stylize a folder, a broken file and another clip`: each input gets its output, a broken
/// one is reported and the rest go on, the exit status says one failed; `-o` must then be a
/// folder, and two inputs may not write the same file.
#[test]
fn many_inputs_run_in_turn_and_a_bad_one_does_not_stop_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    std::fs::create_dir(&clips).unwrap();
    make_clip(&clips, "a.mp4", "64x48", "25", 0.4, Some("aac"), &[]);
    make_clip(&clips, "b.mkv", "48x64", "30", 0.3, None, &[]);
    std::fs::write(clips.join("notes.txt"), b"not a video").unwrap();
    let broken = dir.path().join("broken.mp4");
    std::fs::write(&broken, b"\x00\x00\x00\x18ftypmp42 and then nothing useful").unwrap();
    let other = make_clip(dir.path(), "c.mov", "64x48", "24", 0.25, None, &[]);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = run(bin()
        .arg("stylize")
        .arg(&clips)
        .arg(&broken)
        .arg(&other)
        .args(["--frame-stage", "invert", "-o"])
        .arg(&outdir));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("[1/4]") && err.contains("[4/4]"), "{err}");
    assert!(err.contains("1 of 4 inputs failed"), "{err}");
    assert!(err.contains("broken.mp4"), "{err}");
    assert_eq!(
        listing(&outdir),
        ["a_stylized.mp4", "b_stylized.mp4", "c_stylized.mp4"]
    );
    for (name, frames) in [("a", 10), ("b", 9), ("c", 6)] {
        let v = video_facts(&outdir.join(format!("{name}_stylized.mp4")));
        assert_eq!(v.frames, frames, "{name}");
    }
    // Rerun: finished outputs are skipped (a batch that stopped half-way resumes).
    let out = run(bin()
        .arg("stylize")
        .arg(&clips)
        .arg(&other)
        .args(["--frame-stage", "invert", "-o"])
        .arg(&outdir));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("skipped").count(),
        3,
        "{}",
        stderr(&out)
    );
    // Without -o, next to each input; all good ⇒ success.
    let out = run(bin()
        .arg("stylize")
        .arg(&clips)
        .args(["--frame-stage", "identity", "--quiet"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(clips.join("a_stylized.mp4").exists() && clips.join("b_stylized.mp4").exists());

    let out = run(bin()
        .arg("stylize")
        .arg(&clips)
        .args(["--frame-stage", "identity", "-o"])
        .arg(dir.path().join("one.mp4")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("-o must be an existing folder"),
        "{}",
        stderr(&out)
    );
    make_clip(&clips, "a.mov", "64x48", "25", 0.2, None, &[]);
    let out = run(bin()
        .arg("stylize")
        .arg(clips.join("a.mp4"))
        .arg(clips.join("a.mov"))
        .args(["--frame-stage", "identity", "-o"])
        .arg(&outdir));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("would both be written to"),
        "{}",
        stderr(&out)
    );
}

/// The video packets' times in `path`, in presentation order.
fn frame_times(path: &Path) -> Vec<f64> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let mut t: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// NTSC video that starts 0.5 s into its audio. Whether the job is one segment encoded
/// straight into the output or several joined, in MP4 and in Matroska, every frame keeps
/// its own time on the 30000/1001 grid and the video starts where ffmpeg's own stream copy
/// into that container puts it (Matroska shifts both streams by the AAC priming).
#[test]
fn frame_times_and_a_late_video_start_survive_both_ways_into_each_container() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("late.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000:duration=3",
        "-itsoffset",
        "0.5",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x96:rate=30000/1001:duration=2",
        "-map",
        "1:v",
        "-map",
        "0:a",
        "-fps_mode",
        "passthrough",
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        input.to_str().unwrap(),
    ]);
    let frames = frame_times(&input).len();
    let step = 1001.0 / 30000.0;
    for ext in ["mp4", "mkv"] {
        let copy = dir.path().join(format!("copy.{ext}"));
        ffmpeg(&[
            "-i",
            input.to_str().unwrap(),
            "-c",
            "copy",
            copy.to_str().unwrap(),
        ]);
        let start = frame_times(&copy)[0];
        for (how, args) in [
            ("one segment", &[][..]),
            ("joined", &["--segment-seconds", "0.4"][..]),
        ] {
            let output = dir
                .path()
                .join(format!("out_{}.{ext}", how.replace(' ', "_")));
            stylize_ok(&input, &output, "identity", args);
            let t = frame_times(&output);
            assert_eq!(t.len(), frames, "{ext}, {how}: frame count");
            assert!(
                (t[0] - start).abs() < 0.0015,
                "{ext}, {how}: video starts at {:.3} s, a stream copy at {start:.3} s",
                t[0]
            );
            for (i, w) in t.windows(2).enumerate() {
                assert!(
                    (w[1] - w[0] - step).abs() < 0.0015,
                    "{ext}, {how}: frame {} lasts {:.4} s",
                    i,
                    w[1] - w[0]
                );
            }
        }
    }
}
