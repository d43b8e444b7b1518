//! The GPU memory plan of a model at real frame sizes (docs/gpu.md's budget table): loads
//! the model in f16 on the CPU, counting each component's weights as they load, and prints
//! the estimate of [`stylizer::sd::vram`] per frame size, with and without `--offload`,
//! for candle's ops (the GPU path).
//!
//! ```text
//! cargo run --release --example vram_plan -- MODEL_DIR [--motion DIR [--frames 16]]
//!     [--controlnet DIR] [--sizes 848x480,1280x720]
//! ```

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use stylizer::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles, SdFiles, SdModel};
use stylizer::sd::vram;
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let model_dir = args.first().context("usage: vram_plan MODEL_DIR [...]")?;
    let sizes: Vec<(usize, usize)> = get("--sizes")
        .unwrap_or_else(|| "848x480,1280x720".into())
        .split(',')
        .map(|s| {
            let (w, h) = s.split_once('x').context("--sizes WxH,...")?;
            Ok((w.parse()?, h.parse()?))
        })
        .collect::<Result<_>>()?;
    // As on a GPU: candle's ops, whose needs the estimate follows (and the VAE tiles by).
    stylizer::ops::use_candle_ops_only(true);
    for offload in [false, true] {
        let opts = LoadOptions {
            dtype: Some(DType::F16),
            offload_vae: offload,
            ..LoadOptions::new(Device::Cpu)
        };
        let files = SdFiles::resolve(
            &ModelSource::Folder(model_dir.into()),
            &opts,
            &mut NoProgress,
        )?;
        let mut model = SdModel::load(&files, &mut NoProgress)?;
        let mut batch = 2;
        if let Some(dir) = get("--motion") {
            let adapter = MotionAdapterFiles::resolve(&ModelSource::Folder(dir.into()), &opts)?;
            model.set_motion_adapter(&adapter)?;
            batch = get("--frames").map_or(Ok(16), |f| f.parse())?;
        }
        if let Some(dir) = get("--controlnet") {
            let net = ControlNetFiles::resolve(
                &ModelSource::Folder(dir.into()),
                &opts,
                model.unet_config(),
            )?;
            model.add_controlnet(&net)?;
        }
        for &(w, h) in &sizes {
            let e = vram::estimate(&model, (w, h), batch);
            println!(
                "{w}x{h} batch {batch}{}: {}",
                if offload { " --offload" } else { "" },
                e.describe()
            );
        }
    }
    Ok(())
}
