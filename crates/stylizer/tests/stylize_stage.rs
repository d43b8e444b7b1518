//! The stylize frame stage end to end on frames, with the tiny fixture models
//! (tests/fixtures/sd/tiny-sd, tiny-sd2): loading, determinism, per-frame noise, progress,
//! fingerprints and user errors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::Device;
use stylizer::stylize::cross_frame::CrossFrameKeys;
use stylizer::stylize::img2img::Img2ImgParams;
use stylizer::stylize::model::LoadOptions;
use stylizer::stylize::schedulers::SchedulerKind;
use stylizer::stylize::stage::{StylizeSettings, StylizeStage};
use stylizer::weights::ModelSource;
use stylizer::{Frame, FrameStage, Progress};

fn model(variant: &str) -> ModelSource {
    ModelSource::Folder(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/sd")
            .join(variant),
    )
}

fn settings(variant: &str) -> StylizeSettings {
    StylizeSettings {
        model: model(variant),
        load: LoadOptions::new(Device::Cpu),
        prompt: "a watercolor painting of a cat".into(),
        negative_prompt: "blurry".into(),
        params: Img2ImgParams {
            strength: 0.6,
            steps: 10,
            guidance: 7.5,
            scheduler: SchedulerKind::Ddim,
        },
        seed: 42,
        noise_per_frame: false,
        cross_frame: None,
    }
}

/// A moving diagonal gradient, different for every `t`.
fn frame(w: u32, h: u32, t: u32) -> Frame {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend([
                ((x + t * 7) * 4 % 256) as u8,
                ((y + t * 3) * 5 % 256) as u8,
                ((x + y) * 2 % 256) as u8,
            ]);
        }
    }
    Frame::from_rgb(w, h, data)
}

struct CountSteps(Arc<AtomicUsize>);
impl Progress for CountSteps {
    fn step(&mut self, _i: usize, _n: usize) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn stylizes_frames_deterministically_with_the_same_noise_for_every_frame() {
    let steps = Arc::new(AtomicUsize::new(0));
    let mut stage = StylizeStage::new(settings("tiny-sd"))
        .unwrap()
        .with_progress(Box::new(CountSteps(steps.clone())));
    stage.prepare().unwrap();
    let input = frame(64, 48, 0);
    let a = stage.process(input.clone(), 0).unwrap();
    assert_eq!((a.width, a.height), (64, 48));
    assert_eq!(stage.output_size(64, 48), (64, 48));
    assert_ne!(a, input, "the frame was restyled");
    assert_eq!(
        steps.load(Ordering::Relaxed),
        6,
        "int(10 × 0.6) steps reported"
    );

    // Same frame at another index: same noise by default, so the same pixels.
    assert_eq!(stage.process(input.clone(), 17).unwrap(), a);
    // A fresh stage with the same settings renders the same pixels (resume, other machines).
    let mut again = StylizeStage::new(settings("tiny-sd")).unwrap();
    again.prepare().unwrap();
    assert_eq!(again.process(input.clone(), 0).unwrap(), a);
    // Another frame gives another picture.
    assert_ne!(stage.process(frame(64, 48, 1), 1).unwrap(), a);

    // Per-frame noise: index matters; another seed changes the picture.
    let mut per_frame = StylizeStage::new(StylizeSettings {
        noise_per_frame: true,
        ..settings("tiny-sd")
    })
    .unwrap();
    per_frame.prepare().unwrap();
    let p0 = per_frame.process(input.clone(), 0).unwrap();
    assert_ne!(per_frame.process(input.clone(), 1).unwrap(), p0);
    let mut seed = StylizeStage::new(StylizeSettings {
        seed: 43,
        ..settings("tiny-sd")
    })
    .unwrap();
    seed.prepare().unwrap();
    assert_ne!(seed.process(input, 0).unwrap(), a);
}

#[test]
fn sd2_like_model_without_guidance_and_with_each_scheduler() {
    for (scheduler, guidance) in [
        (SchedulerKind::EulerAncestral, 1.0),
        (SchedulerKind::DpmPp2mKarras, 5.0),
        (SchedulerKind::Lcm, 1.0),
    ] {
        let mut s = settings("tiny-sd2");
        s.params.scheduler = scheduler;
        s.params.guidance = guidance;
        let mut stage = StylizeStage::new(s).unwrap();
        stage.prepare().unwrap();
        // 112×96: latent 14×12, not a multiple of 8 (the UNet's upsample_size path).
        let input = frame(112, 96, 2);
        let out = stage.process(input.clone(), 0).unwrap();
        assert_eq!((out.width, out.height), (112, 96), "{scheduler}");
        assert_ne!(out, input, "{scheduler}");
        let mean = out.data.iter().map(|&v| v as f64).sum::<f64>() / out.data.len() as f64;
        assert!(
            mean > 5.0 && mean < 250.0,
            "{scheduler}: degenerate output, mean {mean}"
        );
    }
}

#[test]
fn fingerprint_covers_every_pixel_changing_setting() {
    let base = StylizeStage::new(settings("tiny-sd"))
        .unwrap()
        .fingerprint();
    assert_eq!(
        base,
        StylizeStage::new(settings("tiny-sd"))
            .unwrap()
            .fingerprint()
    );
    let variants: Vec<(&str, StylizeSettings)> = vec![
        ("model", settings("tiny-sd2")),
        (
            "prompt",
            StylizeSettings {
                prompt: "anime".into(),
                ..settings("tiny-sd")
            },
        ),
        (
            "negative",
            StylizeSettings {
                negative_prompt: "".into(),
                ..settings("tiny-sd")
            },
        ),
        (
            "seed",
            StylizeSettings {
                seed: 7,
                ..settings("tiny-sd")
            },
        ),
        (
            "noise",
            StylizeSettings {
                noise_per_frame: true,
                ..settings("tiny-sd")
            },
        ),
        (
            "cross-frame",
            StylizeSettings {
                cross_frame: Some(CrossFrameKeys::Anchor),
                ..settings("tiny-sd")
            },
        ),
        (
            "cross-frame keys",
            StylizeSettings {
                cross_frame: Some(CrossFrameKeys::AnchorAndSelf),
                ..settings("tiny-sd")
            },
        ),
        ("strength", {
            let mut s = settings("tiny-sd");
            s.params.strength = 0.5;
            s
        }),
        ("steps", {
            let mut s = settings("tiny-sd");
            s.params.steps = 12;
            s
        }),
        ("guidance", {
            let mut s = settings("tiny-sd");
            s.params.guidance = 5.0;
            s
        }),
        ("scheduler", {
            let mut s = settings("tiny-sd");
            s.params.scheduler = SchedulerKind::Euler;
            s
        }),
        ("dtype", {
            let mut s = settings("tiny-sd");
            s.load.dtype = Some(candle_core::DType::F16);
            s
        }),
    ];
    for (what, s) in variants {
        assert_ne!(
            StylizeStage::new(s).unwrap().fingerprint(),
            base,
            "{what} must change the fingerprint"
        );
    }
}

#[test]
fn user_errors_are_clear() {
    let mut s = settings("tiny-sd");
    s.params.strength = 0.05;
    let err = StylizeStage::new(s).err().unwrap().to_string();
    assert!(err.contains("strength"), "{err}");

    let mut stage = StylizeStage::new(StylizeSettings {
        model: ModelSource::Folder("/nonexistent/model".into()),
        ..settings("tiny-sd")
    })
    .unwrap();
    let err = stage.prepare().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/model"), "{err}");

    let mut s = settings("tiny-sd");
    s.params.scheduler = SchedulerKind::Lcm;
    s.params.steps = 60; // more than LCM's 50 original steps
    let err = StylizeStage::new(s)
        .unwrap()
        .prepare()
        .unwrap_err()
        .to_string();
    assert!(err.contains("original_inference_steps"), "{err}");

    let mut stage = StylizeStage::new(settings("tiny-sd2")).unwrap();
    stage.prepare().unwrap();
    let err = stage.process(frame(100, 96, 0), 0).unwrap_err().to_string();
    assert!(err.contains("100x96") && err.contains('8'), "{err}");
}

#[test]
fn cross_frame_attention_renders_the_same_frames_whole_or_resumed() {
    for keys in [CrossFrameKeys::Anchor, CrossFrameKeys::AnchorAndSelf] {
        let cross = StylizeSettings {
            cross_frame: Some(keys),
            ..settings("tiny-sd2")
        };
        let frames: Vec<Frame> = (0..3).map(|t| frame(112, 96, t)).collect();
        let mut whole = StylizeStage::new(cross.clone()).unwrap();
        whole.prepare().unwrap();
        whole.reset().unwrap();
        assert!(whole.warm_up_frames(0).is_empty());
        let out: Vec<Frame> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| whole.process(f.clone(), i as u64).unwrap())
            .collect();
        // A later segment in the same process still holds the anchor.
        whole.reset().unwrap();
        assert!(whole.warm_up_frames(2).is_empty());

        // The anchor attends to itself only: the same as a frame on its own.
        let mut alone = StylizeStage::new(settings("tiny-sd2")).unwrap();
        alone.prepare().unwrap();
        assert_eq!(alone.process(frames[0].clone(), 0).unwrap(), out[0]);
        let independent = alone.process(frames[2].clone(), 2).unwrap();
        let diff = independent
            .data
            .iter()
            .zip(&out[2].data)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            diff > independent.data.len() / 100,
            "{keys}: cross-frame attention changed only {diff} values"
        );

        // A resumed run (fresh process) starting at frame 2 re-runs the anchor first.
        let mut resumed = StylizeStage::new(cross).unwrap();
        resumed.prepare().unwrap();
        resumed.reset().unwrap();
        assert_eq!(resumed.warm_up_frames(2), vec![0]);
        resumed.warm_up(frames[0].clone(), 0).unwrap();
        assert!(resumed.warm_up_frames(2).is_empty());
        assert_eq!(
            resumed.process(frames[2].clone(), 2).unwrap(),
            out[2],
            "{keys}"
        );

        // Without the anchor a later frame cannot be rendered: an error, not another picture.
        let mut missing = StylizeStage::new(StylizeSettings {
            cross_frame: Some(keys),
            ..settings("tiny-sd2")
        })
        .unwrap();
        missing.prepare().unwrap();
        let e = missing.process(frames[1].clone(), 1).unwrap_err();
        assert!(e.to_string().contains("anchor frame 0"), "{e}");
    }
}
