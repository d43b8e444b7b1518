//! Replays a Real-ESRGAN golden through the Rust upscaler, for outside checks with
//! tools/reference/compare.py:
//!
//! ```text
//! cargo run --release --example esrgan_replay -- --model FILE --golden IN.safetensors \
//!     --key NAME [--prepad 10] [--tile N] [--tile-pad 10] --out OUT.safetensors
//! ```
//! Reads tensor `input` [1,3,H,W] (RGB in [0,1]) and writes the unclamped output under `NAME`.
//! `--prepad P` reflect-pads the image by P pixels first and crops P·scale from the output
//! (the ncnn convention of the `*.output_prepad10_reflect` goldens); `--tile N` runs N-pixel
//! tiles (default: the whole image).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use stylizer::upscale::{Model, UpscaleOptions, Upscaler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        args.insert(k.trim_start_matches("--").to_string(), v);
    }
    let need = |k: &str| args.get(k).cloned().ok_or(format!("missing --{k}"));
    let num = |k: &str, d: usize| -> Result<usize, String> {
        args.get(k).map_or(Ok(d), |v| {
            v.parse().map_err(|_| format!("--{k} {v}: not a number"))
        })
    };
    let model = Model::load(&PathBuf::from(need("model")?), &Device::Cpu)?;
    let golden = candle_core::safetensors::load(need("golden")?, &Device::Cpu)?;
    let input = golden
        .get("input")
        .ok_or("the golden has no `input` tensor")?;
    let opts = UpscaleOptions {
        prepad: num("prepad", 0)?,
        tile_pad: num("tile-pad", 10)?,
        ..Default::default()
    };
    let up = Upscaler::new(model, opts);
    let t0 = std::time::Instant::now();
    let out = up.upscale_tensor(input, num("tile", 0)?)?;
    let key = need("key")?;
    eprintln!(
        "{key}: {:?} -> {:?} in {:.2} s",
        input.dims(),
        out.dims(),
        t0.elapsed().as_secs_f64()
    );
    candle_core::safetensors::save(&HashMap::from([(key, out)]), need("out")?)?;
    Ok(())
}
