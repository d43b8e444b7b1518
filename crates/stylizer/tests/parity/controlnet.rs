//! ControlNet parity with diffusers on the tiny fixtures (tools/reference/golden_controlnet.py):
//! the net's forward (residuals, guess mode, BGR nets) at 1e-4, every loading path (diffusers
//! folder, original-layout `.pth` with `control_model.` keys, `.safetensors` without a prefix),
//! full img2img through `StableDiffusionControlNetImg2ImgPipeline` (one net, guidance window,
//! guess mode, two nets) at 1e-3 with the recorded noise replayed, Canny edges against OpenCV
//! on real photos, and the refusal of a net that does not fit the model.

use candle_core::{DType, Tensor};
use stylizer::sampling::img2img::{Control, ControlInput, ControlWeight, Img2ImgParams};
use stylizer::sampling::schedulers::SchedulerKind;
use stylizer::sd::model::{ControlNetFiles, LoadOptions, SdModel};
use stylizer::stylize::canny::canny;
use stylizer::weights::ModelSource;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd;
use crate::tiny_sd::fixtures;

fn golden(variant: &str, name: &str) -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join(format!("golden/{variant}/{name}.safetensors"));
    common::load_tensors(path)
}

fn net_source(file: &str) -> ModelSource {
    let path = fixtures().join("controlnet").join(file);
    match path.is_dir() {
        true => ModelSource::Folder(path),
        false => ModelSource::File(path),
    }
}

fn add_net(model: &mut SdModel, file: &str) {
    let files = ControlNetFiles::resolve(
        &net_source(file),
        &LoadOptions::new(common::device()),
        model.unet_config(),
    )
    .unwrap();
    model.add_controlnet(&files).unwrap();
}

/// Forward of every net of `variant`, loaded from `files` (net i from files[i]), against the golden.
fn forward_parity(variant: &str, files: &[(&str, &str)]) {
    let (_, _, mut model, _) = tiny_sd::load(variant);
    let g = golden(variant, "controlnet");
    let t: Vec<f64> = vec![g["timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()];
    let scale = g["conditioning_scale"].to_scalar::<f32>().unwrap() as f64;
    for (i, (name, file)) in files.iter().enumerate() {
        add_net(&mut model, file);
        for guess in [false, true] {
            let key = if guess {
                format!("{name}.guess")
            } else {
                name.to_string()
            };
            let r = model
                .controlnet(
                    i,
                    &g["sample"],
                    &t,
                    &g["encoder_hidden_states"],
                    &g["controlnet_cond"],
                    scale,
                    guess,
                )
                .unwrap();
            let mut worst = max_abs(&r.mid, &g[&format!("{key}.mid")]);
            for (k, d) in r.down.iter().enumerate() {
                worst = worst.max(max_abs(d, &g[&format!("{key}.down_{k}")]));
            }
            assert!(
                !g.contains_key(&format!("{key}.down_{}", r.down.len())),
                "{variant} {key}: fewer residuals than diffusers"
            );
            println!("{variant} {file} guess={guess}: max abs {worst:.2e}");
            assert!(
                worst < 1e-4,
                "{variant} {file} guess={guess}: off by {worst}"
            );
        }
    }
}

#[test]
fn forward_matches_diffusers_from_folders() {
    forward_parity("tiny-sd", &[("a", "tiny-sd-a"), ("b", "tiny-sd-b")]);
    forward_parity("tiny-sd2", &[("a", "tiny-sd2-a")]);
}

#[test]
fn forward_matches_diffusers_from_single_files() {
    forward_parity("tiny-sd", &[("a", "tiny-sd-a.pth")]);
    forward_parity("tiny-sd2", &[("a", "tiny-sd2-a.safetensors")]);
}

#[test]
fn img2img_matches_diffusers() {
    for (variant, cases) in [
        ("tiny-sd", &["one", "window", "guess", "two"][..]),
        ("tiny-sd2", &["one", "window", "guess"][..]),
    ] {
        let (_, text, mut model, scheduler) = tiny_sd::load(variant);
        add_net(&mut model, &format!("{variant}-a"));
        if cases.contains(&"two") {
            add_net(&mut model, &format!("{variant}-b"));
        }
        let g = golden(variant, "controlnet_img2img");
        let params = Img2ImgParams {
            strength: 0.6,
            steps: 10,
            guidance: 7.5,
            scheduler: SchedulerKind::Ddim,
        };
        let full = ControlWeight {
            scale: 1.0,
            start: 0.0,
            end: 1.0,
        };
        let input = |net: usize, key: &str, weight: ControlWeight| ControlInput {
            net,
            image: g[key].clone(),
            weight,
        };
        for &case in cases {
            let control = match case {
                "one" => Control {
                    inputs: vec![input(0, "control_canny", full)],
                    guess_mode: false,
                },
                "window" => Control {
                    inputs: vec![input(
                        0,
                        "control_canny",
                        ControlWeight {
                            start: 0.2,
                            end: 0.7,
                            ..full
                        },
                    )],
                    guess_mode: false,
                },
                "guess" => Control {
                    inputs: vec![input(0, "control_canny", full)],
                    guess_mode: true,
                },
                "two" => Control {
                    inputs: vec![
                        input(0, "control_canny", full),
                        input(1, "control_frame", ControlWeight { scale: 0.5, ..full }),
                    ],
                    guess_mode: false,
                },
                _ => unreachable!(),
            };
            let (latents, image) =
                tiny_sd::replay_img2img(&model, &scheduler, &params, &text, &g, &control);
            let e_lat = max_abs(&latents, &g[&format!("{case}.final_latents")]);
            let e_img = max_abs(&image, &g[&format!("{case}.image_out")]);
            println!("{variant} {case}: max abs latents {e_lat:.2e}, image {e_img:.2e}");
            assert!(
                e_lat < 1e-3 && e_img < 1e-3,
                "{variant} {case}: latents off by {e_lat}, image by {e_img}"
            );
        }
    }
}

#[test]
fn canny_equals_opencv_on_real_photos() {
    let dir = fixtures().join("../canny");
    let mut checked = 0;
    for name in ["astronaut", "coffee", "chelsea"] {
        let rgb = image::open(dir.join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let want = image::open(dir.join(format!("{name}_canny.png")))
            .unwrap()
            .to_luma8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let got = canny(rgb.as_raw(), w, h, 3, 100.0, 200.0);
        let differ = got
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        let edges = want.as_raw().iter().filter(|&&v| v == 255).count();
        println!("{name} {w}x{h}: {edges} edge pixels, {differ} differ from cv2.Canny");
        assert_eq!(differ, 0, "{name}: {differ} pixels differ from OpenCV");
        checked += w * h;
    }
    assert!(checked > 100_000);
    // The golden's control image is the test image's edges too.
    let g = golden("tiny-sd2", "controlnet_img2img");
    let frame = &g["control_frame"];
    let (_, _, h, w) = frame.dims4().unwrap();
    let rgb: Vec<u8> = (frame.squeeze(0).unwrap().permute((1, 2, 0)).unwrap() * 255.0)
        .unwrap()
        .round()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let edges = canny(&rgb, w, h, 3, 100.0, 200.0);
    let want: Vec<f32> = g["control_canny"]
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got: Vec<f32> = edges.iter().map(|&v| v as f32 / 255.0).collect();
    assert_eq!(got, want, "the golden's control image");
}

#[test]
fn a_net_for_another_model_is_refused_with_one_line() {
    let (_, _, mut model, _) = tiny_sd::load("tiny-sd");
    let files = ControlNetFiles::resolve(
        &net_source("tiny-sd2-a"),
        &LoadOptions::new(common::device()),
        model.unet_config(),
    )
    .unwrap();
    let err = model.add_controlnet(&files).unwrap_err().to_string();
    assert!(
        err.contains("tiny-sd2-a") && err.contains("does not fit") && !err.contains('\n'),
        "{err}"
    );
    // A file that is not a ControlNet at all.
    let not_a_net = fixtures().join("single-file/tiny-sd.safetensors");
    let err = ControlNetFiles::resolve(
        &ModelSource::File(not_a_net),
        &LoadOptions::new(common::device()),
        model.unet_config(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not a ControlNet"), "{err}");
}
