//! The upscaler as a pipeline [`FrameStage`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::Device;

use image::DynamicImage;

use super::{fetch, AlphaUpscale, Model, UpscaleOptions, Upscaler};
use crate::{Error, Frame, FrameStage, Result};

/// Real-ESRGAN ×scale, then resize to the target. The model file is resolved when the stage is
/// built (a missing model is an error before any work) and loaded in `prepare()`.
pub struct UpscaleStage {
    path: PathBuf,
    device: Device,
    opts: UpscaleOptions,
    upscaler: Option<Upscaler>,
    fallbacks: Arc<AtomicU64>,
}

impl UpscaleStage {
    /// `model` is a model name looked up in the model cache (e.g. `RealESRGAN_x4plus`) or a
    /// path to a `.pth`, `.safetensors` or ncnn `.param` file.
    pub fn new(model: &str, device: Device, opts: UpscaleOptions) -> Result<Self> {
        let path = fetch::resolve_model(model)?;
        Ok(Self {
            path,
            device,
            opts,
            upscaler: None,
            fallbacks: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Count of frames that fell back to a plain Lanczos resize (out of memory even with the
    /// smallest tile); the front end reports it at the end of the run.
    pub fn fallback_counter(&self) -> Arc<AtomicU64> {
        self.fallbacks.clone()
    }

    /// A still image (any layout, alpha kept): see [`Upscaler::upscale_image`].
    pub fn upscale_image(
        &mut self,
        img: &DynamicImage,
        alpha: AlphaUpscale,
    ) -> Result<DynamicImage> {
        self.with_upscaler(|up| up.upscale_image(img, alpha))
    }

    /// Runs `f` on the loaded upscaler, adding its Lanczos fallbacks to the shared counter.
    fn with_upscaler<T>(&mut self, f: impl FnOnce(&mut Upscaler) -> Result<T>) -> Result<T> {
        let up = self
            .upscaler
            .as_mut()
            .ok_or_else(|| Error::Model("upscale stage used before prepare()".into()))?;
        let before = up.fallbacks();
        let out = f(up);
        self.fallbacks
            .fetch_add(up.fallbacks() - before, Ordering::Relaxed);
        out
    }
}

impl FrameStage for UpscaleStage {
    fn name(&self) -> &str {
        "upscale"
    }

    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        self.opts.target.size(width, height)
    }

    fn fingerprint(&self) -> String {
        // Tiling changes pixels (slightly), so an explicit tile size is part of it.
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let tile = self.opts.tile.map_or("auto".to_string(), |t| t.to_string());
        format!(
            "upscale:{}:{size}:to={}:tile={tile}:pad={}:prepad={}",
            self.path.file_name().unwrap_or_default().to_string_lossy(),
            self.opts.target,
            self.opts.tile_pad,
            self.opts.prepad
        )
    }

    fn prepare(&mut self) -> Result<()> {
        if self.upscaler.is_none() {
            let model = Model::load(&self.path, &self.device)?;
            self.upscaler = Some(Upscaler::new(model, self.opts.clone()));
        }
        Ok(())
    }

    fn process(&mut self, frame: Frame, _index: u64) -> Result<Frame> {
        self.with_upscaler(|up| up.upscale_frame(&frame))
    }
}
