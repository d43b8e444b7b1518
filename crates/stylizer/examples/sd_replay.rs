//! Replays a golden file from tools/reference/golden_sd.py through the Rust models: reads the
//! golden's inputs, writes our outputs under the same key names, for
//! `tools/reference/compare.py GOLDEN OUT` to judge.
//!
//! ```text
//! cargo run --release --example sd_replay -- --model DIR|FILE|ID --golden IN.safetensors \
//!     --part text_encoder|unet|vae --out OUT.safetensors
//! ```
//! Each part is one function taking the golden's tensors and returning ours.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use stylizer::stylize::model::{LoadOptions, SdFiles, SdModel};
use stylizer::stylize::vae::VaeTiling;
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

type Tensors = HashMap<String, Tensor>;

fn text_encoder(files: &SdFiles, golden: &Tensors) -> Result<Tensors> {
    let ids = golden["input_ids"].to_dtype(DType::U32)?;
    let out = files.text_encoder()?.forward(&ids)?;
    Ok(HashMap::from([
        ("last_hidden_state".into(), out.last_hidden_state),
        ("pooler_output".into(), out.pooler_output),
    ]))
}

fn unet(files: &SdFiles, golden: &Tensors) -> Result<Tensors> {
    let model = SdModel::load(files, &mut NoProgress)?;
    let (sample, context) = (&golden["sample"], &golden["encoder_hidden_states"]);
    let t = golden["timestep"]
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut out = HashMap::from([("out".into(), model.unet(sample, &t, context)?)]);
    if let Some(ts) = golden.get("timesteps2") {
        let ts = ts.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        out.insert("out2".into(), model.unet(sample, &ts, context)?);
    }
    Ok(out)
}

fn vae(files: &SdFiles, golden: &Tensors) -> Result<Tensors> {
    let model = SdModel::load(files, &mut NoProgress)?;
    let (mean, logvar) = model.vae_encode(&golden["image"])?;
    let decoded = model.vae_decode(&golden["latent_mean"])?;
    Ok(HashMap::from([
        ("latent_mean".into(), mean),
        ("latent_logvar".into(), logvar),
        ("decoded".into(), decoded),
    ]))
}

fn main() -> Result<()> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(key) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}")
        };
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        args.insert(key.to_string(), value);
    }
    let arg = |k: &str| args.get(k).with_context(|| format!("--{k} is required"));
    let source = ModelSource::parse(arg("model")?)?;
    let golden = candle_core::safetensors::load(arg("golden")?, &Device::Cpu)?;
    let opts = LoadOptions {
        // The goldens are whole-image references.
        vae_tiling: VaeTiling::Off,
        ..LoadOptions::new(Device::Cpu)
    };
    let files = SdFiles::resolve(&source, &opts, &mut NoProgress)?;
    let out = match arg("part")?.as_str() {
        "text_encoder" => text_encoder(&files, &golden)?,
        "unet" => unet(&files, &golden)?,
        "vae" => vae(&files, &golden)?,
        other => bail!("unknown --part {other:?} (text_encoder, unet, vae)"),
    };
    let out_path = arg("out")?;
    candle_core::safetensors::save(&out, out_path)?;
    println!("wrote {} tensors to {out_path}", out.len());
    Ok(())
}
