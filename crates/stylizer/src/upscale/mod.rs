//! Real-ESRGAN upscaling: model loading, tiling, target resize, and the pipeline stage.
//!
//! ```no_run
//! use stylizer::upscale::{fetch, Model, UpscaleOptions, Upscaler};
//! # fn main() -> stylizer::Result<()> {
//! let path = fetch::resolve_model("RealESRGAN_x4plus")?; // cache lookup, or a file path
//! let model = Model::load(&path, &candle_core::Device::Cpu)?;
//! let mut up = Upscaler::new(model, UpscaleOptions::default()); // ×4, then fit 1920×1080
//! let img = stylizer::upscale::images::read_image("in.png".as_ref())?; // alpha, 16-bit kept
//! let out = up.upscale_image(&img, stylizer::upscale::AlphaUpscale::Model)?;
//! stylizer::upscale::images::write_image(&out, "out.png".as_ref())?;
//! # Ok(()) }
//! ```
pub mod fetch;
pub mod images;
pub mod load;
pub mod resize;
pub mod stage;
pub mod tile;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::DynamicImage;

use crate::nets::esrgan::{SrConfig, SrNet};
use crate::{Error, Frame, Result};

pub use resize::Target;
pub use stage::UpscaleStage;

/// A loaded Real-ESRGAN network.
pub struct Model {
    net: SrNet,
    path: PathBuf,
    device: Device,
}

impl Model {
    /// Loads `.pth`, `.safetensors` or ncnn `.param`/`.bin` weights and builds the network
    /// they describe. fp16 on GPUs, f32 on the CPU (where fp16 is no faster).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let ts = load::load_weights(path)?;
        let cfg = SrConfig::detect(&ts)
            .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        };
        let vb = VarBuilder::from_tensors(ts, dtype, device);
        let net =
            SrNet::new(vb, &cfg).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        Ok(Self {
            net,
            path: path.to_path_buf(),
            device: device.clone(),
        })
    }

    pub fn config(&self) -> SrConfig {
        self.net.config()
    }

    pub fn scale(&self) -> usize {
        self.net.scale()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn net(&self) -> &SrNet {
        &self.net
    }

    /// Frees the activation buffers the CPU path keeps between calls.
    pub fn release_buffers(&self) {
        self.net.release_buffers();
    }

    /// `[1, 3, H, W]` f32 RGB in [0, 1] (any device) → `[1, 3, H·s, W·s]` f32 on the CPU,
    /// unclamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = if self.device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        };
        let x = x.to_device(&self.device)?.to_dtype(dtype)?;
        let y = self.net.forward(&x)?;
        Ok(y.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}

/// Reflect-pads `[n, c, h, w]` by `pad` on every side (PyTorch `F.pad(.., "reflect")`).
pub fn reflect_pad(x: &Tensor, pad: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if pad >= h || pad >= w {
        return Err(Error::Config(format!(
            "reflect padding {pad} needs an image larger than {w}x{h}"
        )));
    }
    let t = tile::Tile {
        x0: 0,
        y0: 0,
        x1: w,
        y1: h,
        rx0: -(pad as isize),
        ry0: -(pad as isize),
        rx1: (w + pad) as isize,
        ry1: (h + pad) as isize,
    };
    let planar = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let per = c * h * w;
    let mut out = Vec::with_capacity(n * c * (h + 2 * pad) * (w + 2 * pad));
    for i in 0..n {
        out.extend(tile::gather(&planar[i * per..(i + 1) * per], c, h, w, &t));
    }
    Ok(Tensor::from_vec(
        out,
        (n, c, h + 2 * pad, w + 2 * pad),
        &Device::Cpu,
    )?)
}

/// How an [`Upscaler`] runs.
#[derive(Debug, Clone)]
pub struct UpscaleOptions {
    /// Tile size in input pixels; `Some(0)` = whole frame; `None` = the largest that fits
    /// the memory budget (whole frame when it fits).
    pub tile: Option<usize>,
    /// Context pixels around each tile (default 10).
    pub tile_pad: usize,
    /// Reflect padding around the image, as realesrgan-ncnn-vulkan does (default 10).
    pub prepad: usize,
    /// Final size (default: fit 1920×1080).
    pub target: Target,
    /// Activation memory allowed per tile, bytes; `None` = half of the available memory.
    pub max_memory: Option<usize>,
}

impl Default for UpscaleOptions {
    fn default() -> Self {
        Self {
            tile: None,
            tile_pad: 10,
            prepad: 10,
            target: Target::default(),
            max_memory: None,
        }
    }
}

/// How the alpha plane of an image is upscaled (Real-ESRGAN's `--alpha_upsampler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AlphaUpscale {
    /// By the network, as a grey image: sharp edges (Real-ESRGAN's default).
    #[default]
    Model,
    /// Bilinear (OpenCV `INTER_LINEAR`): softer edges, no second network pass.
    Resize,
}

impl std::str::FromStr for AlphaUpscale {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "model" => Ok(Self::Model),
            "resize" => Ok(Self::Resize),
            _ => Err(Error::Config(format!(
                "--alpha-upscale {s}: expected model or resize"
            ))),
        }
    }
}

/// Smallest tile tried when memory runs out; below it a frame falls back to a plain resize.
pub const MIN_TILE: usize = 32;

/// Memory the OS can give us without swapping (Linux `MemAvailable`), else a guess of 4 GB.
fn available_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

/// Planar `[3][h][w]` f32 in [0, 1] from an rgb24 frame.
pub fn frame_to_planar(f: &Frame) -> Vec<f32> {
    let n = f.width as usize * f.height as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in f.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = px[c] as f32 / 255.0;
        }
    }
    out
}

/// rgb24 frame from planar `[3][h][w]` f32: clamp to [0, 1], ×255, round (as RealESRGANer).
pub fn planar_to_frame(p: &[f32], width: u32, height: u32) -> Frame {
    let n = width as usize * height as usize;
    let mut data = vec![0u8; 3 * n];
    for (i, px) in data.chunks_exact_mut(3).enumerate() {
        for c in 0..3 {
            px[c] = (p[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Frame::from_rgb(width, height, data)
}

/// Runs a [`Model`] on whole frames: tiling, out-of-memory retries, resize to the target.
pub struct Upscaler {
    model: Model,
    opts: UpscaleOptions,
    fallbacks: u64,
}

impl Upscaler {
    pub fn new(model: Model, opts: UpscaleOptions) -> Self {
        Self {
            model,
            opts,
            fallbacks: 0,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn options(&self) -> &UpscaleOptions {
        &self.opts
    }

    /// Frames that fell back to a plain Lanczos resize because even the smallest tile ran out
    /// of memory.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// Size of the frames [`Upscaler::upscale_frame`] returns for a `w`×`h` input.
    pub fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        self.opts.target.size(w, h)
    }

    /// Activation bytes allowed per tile. On a GPU the CPU-side estimate does not apply:
    /// there only an explicit `max_memory` limits tiles, and CUDA/Metal out-of-memory errors
    /// trigger the retries.
    fn budget(&self) -> usize {
        match self.opts.max_memory {
            Some(m) => m,
            None if self.model.device().is_cpu() => available_memory() / 2,
            None => usize::MAX,
        }
    }

    fn workspace(&self, t: &tile::Tile) -> usize {
        self.model.net.workspace_bytes(t.region_h(), t.region_w())
    }

    /// The tile size used for a `w`×`h` image: the configured one, or the largest that fits
    /// the memory budget (0 = whole image).
    pub fn tile_for(&self, w: usize, h: usize) -> usize {
        if let Some(t) = self.opts.tile {
            return t;
        }
        let budget = self.budget();
        let m = self.model.config().size_multiple();
        let fits = |t: usize| {
            tile::plan(w, h, t, self.opts.tile_pad, self.opts.prepad, m)
                .iter()
                .all(|r| self.workspace(r) <= budget)
        };
        [0, 1024, 768, 512, 384, 256, 192, 128, 96, 64]
            .into_iter()
            .find(|&t| fits(t))
            .unwrap_or(MIN_TILE)
    }

    /// Model-scale upscale of a planar `[3][h][w]` image in [0, 1] with tiles of `tile`
    /// pixels (0 = whole image): planar `[3][h·s][w·s]`, unclamped.
    pub fn upscale_planar(&self, img: &[f32], w: usize, h: usize, tile: usize) -> Result<Vec<f32>> {
        let s = self.model.scale();
        let m = self.model.config().size_multiple();
        let budget = self.budget();
        let (oh, ow) = (h * s, w * s);
        let mut out = Vec::new();
        out.try_reserve_exact(3 * oh * ow)
            .map_err(|_| Error::OutOfMemory(format!("{ow}x{oh} output frame")))?;
        out.resize(3 * oh * ow, 0f32);
        for t in tile::plan(w, h, tile, self.opts.tile_pad, self.opts.prepad, m) {
            let need = self.workspace(&t);
            if need > budget {
                return Err(Error::OutOfMemory(format!(
                    "a {}x{} tile needs {} MB, the budget is {} MB",
                    t.region_w(),
                    t.region_h(),
                    need >> 20,
                    budget >> 20
                )));
            }
            let region = tile::gather(img, 3, h, w, &t);
            let x = Tensor::from_vec(region, (1, 3, t.region_h(), t.region_w()), &Device::Cpu)?;
            let y = self.model.forward(&x)?;
            let y = y.flatten_all()?.to_vec1::<f32>()?;
            tile::place(&mut out, 3, oh, ow, &y, &t, s);
        }
        Ok(out)
    }

    /// [`Upscaler::upscale_planar`] on a `[1, 3, H, W]` tensor.
    pub fn upscale_tensor(&self, x: &Tensor, tile: usize) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 {
            return Err(Error::Config(format!("expected 3 channels, got {c}")));
        }
        let img = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let s = self.model.scale();
        let out = self.upscale_planar(&img, w, h, tile)?;
        Ok(Tensor::from_vec(out, (1, 3, h * s, w * s), &Device::Cpu)?)
    }

    /// Model-scale upscale of a planar `[3][h][w]` image with the automatic tile size. When
    /// memory runs out it is retried with tiles half as large, down to [`MIN_TILE`]; if that
    /// fails too it returns `None` (counted in [`Upscaler::fallbacks`], with a warning) and the
    /// caller resizes with Lanczos instead.
    fn upscale_retrying(&mut self, img: &[f32], w: usize, h: usize) -> Result<Option<Vec<f32>>> {
        let mut tile = self.tile_for(w, h);
        loop {
            match self.upscale_planar(img, w, h, tile) {
                Ok(out) => return Ok(Some(out)),
                // CUDA / Metal allocation failures are typed where candle's errors convert.
                Err(e @ Error::OutOfMemory(_)) => {
                    self.model.release_buffers();
                    let current = if tile == 0 { w.max(h) } else { tile };
                    if current <= MIN_TILE {
                        self.fallbacks += 1;
                        tracing::warn!(
                            "upscale: out of memory even with {MIN_TILE}px tiles ({e}); this picture is resized with Lanczos instead"
                        );
                        return Ok(None);
                    }
                    tile = (current / 2).max(MIN_TILE);
                    tracing::warn!("upscale: {e}; retrying with {tile}px tiles");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Upscales one frame and resizes it to the target (see `upscale_retrying` for what
    /// happens when memory runs out).
    pub fn upscale_frame(&mut self, frame: &Frame) -> Result<Frame> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (tw, th) = self.output_size(frame.width, frame.height);
        let s = self.model.scale();
        Ok(
            match self.upscale_retrying(&frame_to_planar(frame), w, h)? {
                Some(out) => resize::resize(
                    &planar_to_frame(&out, (w * s) as u32, (h * s) as u32),
                    tw,
                    th,
                ),
                None => resize::resize(frame, tw, th),
            },
        )
    }

    /// Upscales a still image as Real-ESRGAN's `RealESRGANer.enhance` does, then resizes it to
    /// the target: a grey image runs as RGB and comes back grey, the alpha plane is upscaled
    /// as `alpha` says and kept, and 8/16-bit images stay 8/16-bit. An alpha plane with one
    /// value everywhere (an opaque image saved with alpha) skips the network: it upscales to
    /// the same value.
    pub fn upscale_image(
        &mut self,
        img: &DynamicImage,
        alpha: AlphaUpscale,
    ) -> Result<DynamicImage> {
        let planes = images::Planes::split(img);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (tw, th) = self.output_size(img.width(), img.height());
        let s = self.model.scale();
        let fallback = || img.resize_exact(tw, th, image::imageops::FilterType::Lanczos3);
        let Some(colour) = self.upscale_retrying(&planes.colour, w, h)? else {
            return Ok(fallback());
        };
        let alpha = match planes.alpha {
            None => None,
            Some(a) if a.iter().all(|&v| v == a[0]) => Some(vec![a[0]; w * s * h * s]),
            Some(a) if alpha == AlphaUpscale::Resize => {
                Some(resize::linear(&a, w, h, w * s, h * s))
            }
            Some(a) => {
                // As a grey image through the network, back to one plane by luma (cv2
                // GRAY2RGB … BGR2GRAY).
                let grey = images::Planes {
                    width: (w * s) as u32,
                    height: (h * s) as u32,
                    colour: match self.upscale_retrying(&a.repeat(3), w, h)? {
                        Some(out) => out,
                        None => return Ok(fallback()),
                    },
                    alpha: None,
                    grey: true,
                    sixteen_bit: false,
                };
                Some(grey.luma())
            }
        };
        let up = images::Planes {
            width: (w * s) as u32,
            height: (h * s) as u32,
            colour,
            alpha,
            ..planes
        }
        .compose();
        Ok(if (tw, th) == (up.width(), up.height()) {
            up
        } else {
            up.resize_exact(tw, th, image::imageops::FilterType::Lanczos3)
        })
    }
}
