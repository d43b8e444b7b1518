//! The KL auto-encoder of Stable Diffusion: "High-Resolution Image Synthesis with Latent
//! Diffusion Models", Rombach et al. 2022 (arXiv:2112.10752), section 3.
//!
//! Mirrors diffusers `models/autoencoders/autoencoder_kl.py` (`AutoencoderKL`: `encode`
//! returning the posterior's mean and log-variance, `decode`, `tiled_encode`,
//! `tiled_decode`, `blend_v`, `blend_h`) and `models/autoencoders/vae.py` (`Encoder`,
//! `Decoder`, `UNetMidBlock2D`, `DownEncoderBlock2D`, `UpDecoderBlock2D`). Adapted from
//! candle-transformers' `stable_diffusion/vae.rs` and `unet_2d_blocks.rs` (MIT/Apache-2.0),
//! whose `DiagonalGaussianDistribution` exposes no mean and which has no tiling, to use
//! [`crate::ops::conv::nchw`].

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nets::sd::config::VaeConfig;
use crate::nets::sd::resnet::ResnetBlock2D;
use crate::ops::attention as flash;
use crate::ops::conv::nchw::{conv2d, Conv2d};
use crate::ops::group_norm::{group_norm, GroupNorm};
use crate::ops::is_cpu_f32;
use crate::ops::linear::{linear, Linear};
use crate::ops::softmax::softmax_last_dim_in_place;

/// When encode/decode split the image into overlapping tiles (bounded memory, slightly
/// different pixels where tiles are blended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeTiling {
    /// Tile when an untiled pass would need more than [`AUTO_TILE_BYTES`] of activations
    /// (on the CPU in f32 from 720p up, in f16 from 1080p up; on a GPU, where candle's
    /// convolutions need an im2col buffer, from about 400×400 up).
    Auto,
    /// Tile whenever a side exceeds one tile (diffusers' `enable_vae_tiling`).
    On,
    /// Never tile.
    Off,
}

impl std::str::FromStr for VaeTiling {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(VaeTiling::Auto),
            "on" => Ok(VaeTiling::On),
            "off" => Ok(VaeTiling::Off),
            _ => Err(crate::Error::Value(format!(
                "unknown VAE tiling `{s}` (auto, on or off)"
            ))),
        }
    }
}

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    conv2d(cin, cout, k, cfg, vb)
}

fn resnet(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<ResnetBlock2D> {
    ResnetBlock2D::new(vb, cin, cout, None, groups, 1e-6, 1.0)
}

/// Single-head self-attention over all pixels with a residual (diffusers `Attention` as the
/// VAE mid block builds it: group norm, q/k/v/out linears, `residual_connection=True`).
struct AttentionBlock {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl AttentionBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, 1e-6, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out.0"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let scale = 1.0 / (c as f64).sqrt();
        let attended = if is_cpu_f32(&q) {
            flash::attention(&q, &k, &v, 1, scale)?
        } else {
            softmax_last_dim_in_place((q.matmul(&k.t()?)? * scale)?)?.matmul(&v)?
        };
        let out = self.to_out.forward(&attended)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + xs
    }
}

/// resnet, attention, resnet at the lowest resolution (diffusers `UNetMidBlock2D`).
struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: AttentionBlock,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            resnet0: resnet(vb.pp("resnets.0"), channels, channels, groups)?,
            attention: AttentionBlock::new(vb.pp("attentions.0"), channels, groups)?,
            resnet1: resnet(vb.pp("resnets.1"), channels, channels, groups)?,
        })
    }

    fn forward(&self, xs: Tensor) -> Result<Tensor> {
        let xs = self.resnet0.forward(xs, None)?;
        let xs = self.attention.forward(&xs)?;
        self.resnet1.forward(xs, None)
    }
}

/// diffusers `DownEncoderBlock2D`: resnets, then a stride-2 conv after padding right and
/// bottom by one.
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsample: Option<Conv2d>,
}

impl DownEncoderBlock {
    fn forward(&self, mut xs: Tensor) -> Result<Tensor> {
        for r in &self.resnets {
            xs = r.forward(xs, None)?;
        }
        match &self.downsample {
            Some(conv) => conv.forward(&xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?),
            None => Ok(xs),
        }
    }
}

/// diffusers `UpDecoderBlock2D`: resnets, then nearest ×2 and a conv.
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsample: Option<Conv2d>,
}

impl UpDecoderBlock {
    fn forward(&self, mut xs: Tensor) -> Result<Tensor> {
        for r in &self.resnets {
            xs = r.forward(xs, None)?;
        }
        match &self.upsample {
            Some(conv) => {
                let (_, _, h, w) = xs.dims4()?;
                conv.forward_upsampled(&xs, (2 * h, 2 * w))
            }
            None => Ok(xs),
        }
    }
}

struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let down_blocks = (0..ch.len())
            .map(|i| {
                let vb = vb.pp("down_blocks").pp(i);
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                let resnets = (0..c.layers_per_block)
                    .map(|j| {
                        resnet(
                            vb.pp("resnets").pp(j),
                            if j == 0 { cin } else { ch[i] },
                            ch[i],
                            g,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let stride2 = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                let downsample = (i + 1 < ch.len())
                    .then(|| conv2d(ch[i], ch[i], 3, stride2, vb.pp("downsamplers.0.conv")))
                    .transpose()?;
                Ok(DownEncoderBlock {
                    resnets,
                    downsample,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let last = *ch.last().expect("validated non-empty");
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), c.in_channels, ch[0], 3)?,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, g)?,
            conv_norm_out: group_norm(c.norm_num_groups, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), last, 2 * c.latent_channels, 3)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            xs = block.forward(xs)?;
        }
        let xs = self.mid_block.forward(xs)?;
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let g = c.norm_num_groups;
        let up_blocks = (0..rev.len())
            .map(|i| {
                let vb = vb.pp("up_blocks").pp(i);
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                let resnets = (0..c.layers_per_block + 1)
                    .map(|j| {
                        resnet(
                            vb.pp("resnets").pp(j),
                            if j == 0 { cin } else { rev[i] },
                            rev[i],
                            g,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let upsample = (i + 1 < rev.len())
                    .then(|| conv(vb.pp("upsamplers.0.conv"), rev[i], rev[i], 3))
                    .transpose()?;
                Ok(UpDecoderBlock { resnets, upsample })
            })
            .collect::<Result<Vec<_>>>()?;
        let first = c.block_out_channels[0];
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), c.latent_channels, rev[0], 3)?,
            mid_block: MidBlock::new(vb.pp("mid_block"), rev[0], g)?,
            up_blocks,
            conv_norm_out: group_norm(c.norm_num_groups, first, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), first, c.out_channels, 3)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.mid_block.forward(self.conv_in.forward(xs)?)?;
        for block in &self.up_blocks {
            xs = block.forward(xs)?;
        }
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

/// diffusers `AutoencoderKL` (weights under the `vae/` component).
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
    tiling: VaeTiling,
}

/// Activation memory above which [`VaeTiling::Auto`] tiles. An untiled decode peaks at about
/// five full-resolution tensors of the first level's width (the last level's first resnet
/// holds its input at twice that width, the normalised copy and the shortcut): 1.0 GB at
/// 848×480 in f32 (measured: whole pipeline 4.98 GB untiled, 4.63 GB tiled, and tiling costs
/// ~15 % more decode time), 2.4 GB at 1280×720.
pub const AUTO_TILE_BYTES: usize = 2 << 30;

/// diffusers' tile overlap (`tile_overlap_factor`).
const TILE_OVERLAP: f64 = 0.25;

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, config: &VaeConfig, tiling: VaeTiling) -> Result<Self> {
        let z = config.latent_channels;
        let quant_conv = match config.use_quant_conv {
            true => Some(conv(vb.pp("quant_conv"), 2 * z, 2 * z, 1)?),
            false => None,
        };
        let post_quant_conv = match config.use_post_quant_conv {
            true => Some(conv(vb.pp("post_quant_conv"), z, z, 1)?),
            false => None,
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
            tiling,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The dtype it computes in (the weights'); inputs are cast to it, outputs cast back.
    pub fn dtype(&self) -> candle_core::DType {
        self.encoder.conv_in.dtype()
    }

    /// Whether an `h`×`w` image is encoded and decoded in tiles.
    pub fn tiled(&self, h: usize, w: usize) -> bool {
        let tile = self.config.sample_size;
        match self.tiling {
            VaeTiling::Off => false,
            VaeTiling::On => h > tile || w > tile,
            VaeTiling::Auto => {
                let untiled = match self.encoder.conv_in.is_cpu_kernel() {
                    // Our CPU kernels hold about five tensors of the first level's width.
                    true => {
                        let width = self.config.block_out_channels[0];
                        (5 * width * h * w * self.dtype().size_in_bytes()) as u64
                    }
                    // candle's ops (the GPU path) need far more: an im2col of the second
                    // level's channels at full resolution.
                    false => vae_activations(&self.config, (w, h), false, self.dtype()),
                };
                untiled > AUTO_TILE_BYTES as u64 && (h > tile || w > tile)
            }
        }
    }

    fn encode_moments(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.encoder.forward(xs)?;
        match &self.quant_conv {
            Some(q) => q.forward(&h),
            None => Ok(h),
        }
    }

    fn decode_tile(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }

    /// Posterior of `image` `[b, 3, H, W]` in [-1, 1]: `(mean, logvar)`, each
    /// `[b, latent_channels, H/f, W/f]`, in the raw latent space (not scaled).
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let in_dtype = image.dtype();
        let image = image.to_dtype(self.dtype())?;
        let (_, _, h, w) = image.dims4()?;
        let moments = if self.tiled(h, w) {
            let tile = self.config.sample_size;
            let f = self.config.scale_factor();
            self.tiled_apply(&image, tile, tile / f, |t| self.encode_moments(t))?
        } else {
            self.encode_moments(&image)?
        };
        let z = self.config.latent_channels;
        let mean = moments.narrow(1, 0, z)?.to_dtype(in_dtype)?;
        let logvar = moments.narrow(1, z, z)?.to_dtype(in_dtype)?;
        Ok((mean, logvar))
    }

    /// Image `[b, out_channels, H, W]` (about [-1, 1]) from raw latents (already divided by the
    /// scaling factor).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let in_dtype = latents.dtype();
        let z = latents.to_dtype(self.dtype())?;
        let (_, _, h, w) = z.dims4()?;
        let f = self.config.scale_factor();
        let out = if self.tiled(h * f, w * f) {
            let tile = self.config.sample_size / f;
            self.tiled_apply(&z, tile, tile * f, |t| self.decode_tile(t))?
        } else {
            self.decode_tile(&z)?
        };
        out.to_dtype(in_dtype)
    }

    /// diffusers' `tiled_encode` / `tiled_decode`: run `f` on `tile_in`-sized tiles whose
    /// starts are `tile_in · (1 - overlap)` apart, blend each tile linearly into its upper
    /// and left neighbours over `tile_out · overlap` pixels, keep the top-left
    /// `tile_out · (1 - overlap)` of each and concatenate.
    fn tiled_apply(
        &self,
        xs: &Tensor,
        tile_in: usize,
        tile_out: usize,
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let stride = (tile_in as f64 * (1.0 - TILE_OVERLAP)) as usize;
        let blend = (tile_out as f64 * TILE_OVERLAP) as usize;
        let keep = tile_out - blend;
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..h).step_by(stride) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride) {
                let tile = xs
                    .narrow(2, i, tile_in.min(h - i))?
                    .narrow(3, j, tile_in.min(w - j))?;
                row.push(f(&tile)?);
            }
            rows.push(row);
        }
        let mut out_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut out_row = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = blend_edge(&rows[i - 1][j], &tile, blend, 2)?;
                }
                if j > 0 {
                    tile = blend_edge(&rows[i][j - 1], &tile, blend, 3)?;
                }
                let (_, _, th, tw) = tile.dims4()?;
                out_row.push(
                    tile.narrow(2, 0, th.min(keep))?
                        .narrow(3, 0, tw.min(keep))?,
                );
                // The blended tile is what its right/lower neighbours blend with.
                rows[i][j] = tile;
            }
            out_rows.push(Tensor::cat(&out_row, 3)?);
        }
        Tensor::cat(&out_rows, 2)
    }

    pub fn tiling(&self) -> VaeTiling {
        self.tiling
    }
}

/// Activations of decoding one `width`×`height` frame (the largest tile when `tiled`).
pub fn vae_activations(
    config: &VaeConfig,
    (width, height): (usize, usize),
    tiled: bool,
    dtype: DType,
) -> u64 {
    let tile = config.sample_size;
    let pixels = match tiled {
        true => (tile.min(width) * tile.min(height)) as u64,
        false => (width * height) as u64,
    };
    let s = dtype.size_in_bytes() as u64;
    // The convolution after the last up-sampling, at full resolution with the second level's
    // channels: input, im2col ×9, matmul output and its transposed copy, and the group norm
    // before it in f32; the whole output image on top.
    let c = config.block_out_channels[1.min(config.block_out_channels.len() - 1)] as u64;
    12 * c * pixels * s + 2 * c * pixels * 4 + 3 * (width * height) as u64 * 4
}

/// diffusers `blend_v` (dim 2) / `blend_h` (dim 3): the first `extent` rows/columns of `b`
/// fade in from the last `extent` of `a`, weight y/extent for `b`.
fn blend_edge(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let device = b.device();
    let ramp: Vec<f32> = (0..extent).map(|y| y as f32 / extent as f32).collect();
    let mut shape = vec![1usize; 4];
    shape[dim] = extent;
    let wb = Tensor::from_vec(ramp, shape, device)?.to_dtype(b.dtype())?;
    let wa = (1.0 - &wb)?;
    let a_edge = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_edge = b.narrow(dim, 0, extent)?;
    let mixed = (a_edge.broadcast_mul(&wa)? + b_edge.broadcast_mul(&wb)?)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Tensor::cat(&[&mixed, &rest], dim)
}
