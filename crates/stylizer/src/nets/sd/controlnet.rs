//! ControlNet: "Adding Conditional Control to Text-to-Image Diffusion Models", Zhang, Rao and
//! Agrawala 2023 (arXiv:2302.05543). A trainable copy of the UNet's way down reads a control
//! image (edges, depth, pose…) and adds, through zero-initialised 1×1 convolutions, a residual
//! to every skip connection of the UNet and to its mid block output.
//!
//! Mirrors diffusers `models/controlnets/controlnet.py` (`ControlNetModel`,
//! `ControlNetConditioningEmbedding`) and `models/controlnets/multicontrolnet.py` (several nets:
//! residuals summed); the UNet side is [`crate::nets::sd::unet::UNet2DConditionModel::forward`]'s
//! `control` argument.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nets::sd::attention::AttentionSlicing;
use crate::nets::sd::config::ControlNetConfig;
use crate::nets::sd::cross_frame::SelfAttention;
use crate::nets::sd::unet::{conv3x3, ControlResiduals, UNetEncoder};
use crate::ops::conv::nchw::{conv2d, Conv2d};

/// diffusers `ControlNetConditioningEmbedding`: the control image (full resolution) down to
/// the latent grid by a stack of 3×3 convolutions with SiLU between them.
struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(vb: VarBuilder, cin: usize, channels: &[usize], cout: usize) -> Result<Self> {
        let mut blocks = Vec::new();
        for (i, pair) in channels.windows(2).enumerate() {
            let vb = vb.pp("blocks");
            blocks.push(conv3x3(vb.pp(2 * i), pair[0], pair[0], 1, 1)?);
            blocks.push(conv3x3(vb.pp(2 * i + 1), pair[0], pair[1], 2, 1)?);
        }
        let last = *channels.last().expect("config checks a non-empty list");
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cin, channels[0], 1, 1)?,
            blocks,
            conv_out: conv3x3(vb.pp("conv_out"), last, cout, 1, 1)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?.silu()?;
        for block in &self.blocks {
            xs = block.forward(&xs)?.silu()?;
        }
        self.conv_out.forward(&xs)
    }
}

/// diffusers `ControlNetModel` for SD 1.x / 2.x.
pub struct ControlNetModel {
    encoder: UNetEncoder,
    cond_embedding: ConditioningEmbedding,
    /// `controlnet_down_blocks`: one zero convolution per skip connection.
    down_zero: Vec<Conv2d>,
    /// `controlnet_mid_block`.
    mid_zero: Conv2d,
    config: ControlNetConfig,
    /// The last control image's embedding, by tensor: a frame's image is the same at every
    /// denoising step, and its full-resolution convolutions need not run again.
    embedded: std::sync::Mutex<Option<(candle_core::TensorId, Tensor)>>,
}

fn conv1x1(vb: VarBuilder, channels: usize) -> Result<Conv2d> {
    conv2d(channels, channels, 1, Conv2dConfig::default(), vb)
}

impl ControlNetModel {
    pub fn new(
        vb: VarBuilder,
        config: &ControlNetConfig,
        slicing: AttentionSlicing,
    ) -> Result<Self> {
        let c = &config.unet;
        let encoder = UNetEncoder::new(&vb, c, slicing)?;
        let ch0 = c.blocks[0].out_channels;
        let cond_embedding = ConditioningEmbedding::new(
            vb.pp("controlnet_cond_embedding"),
            config.conditioning_channels,
            &config.conditioning_embedding_out_channels,
            ch0,
        )?;
        // Skip connections: conv_in's output, then per level every resnet's and the
        // down-sampler's (all levels but the last).
        let mut channels = vec![ch0];
        for (i, block) in c.blocks.iter().enumerate() {
            let n = c.layers_per_block + usize::from(i + 1 < c.blocks.len());
            channels.extend(std::iter::repeat_n(block.out_channels, n));
        }
        let down_zero = channels
            .iter()
            .enumerate()
            .map(|(i, &ch)| conv1x1(vb.pp("controlnet_down_blocks").pp(i), ch))
            .collect::<Result<Vec<_>>>()?;
        let ch_last = c.blocks[c.blocks.len() - 1].out_channels;
        Ok(Self {
            encoder,
            cond_embedding,
            down_zero,
            mid_zero: conv1x1(vb.pp("controlnet_mid_block"), ch_last)?,
            config: config.clone(),
            embedded: std::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ControlNetConfig {
        &self.config
    }

    /// `cond`'s embedding on the latent grid, reused while `cond` is the same tensor.
    fn embed(&self, cond: &Tensor) -> Result<Tensor> {
        let mut held = self.embedded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, emb)) = held.as_ref() {
            if *id == cond.id() {
                return Ok(emb.clone());
            }
        }
        let mut x = cond.to_dtype(self.encoder.dtype())?;
        if self.config.bgr {
            let channels = [x.narrow(1, 2, 1)?, x.narrow(1, 1, 1)?, x.narrow(1, 0, 1)?];
            x = Tensor::cat(&channels, 1)?;
        }
        let emb = self.cond_embedding.forward(&x)?;
        *held = Some((cond.id(), emb.clone()));
        Ok(emb)
    }

    /// The residuals for `xs` `[b, 4, h, w]` at `timesteps`, text `context` `[b, tokens, dim]`
    /// and the control image `cond` `[b or 1, 3, H, W]` in [0, 1] (H, W = the latent size × the
    /// VAE factor; one image serves the whole batch), scaled by `scale`. `guess_mode` scales the
    /// residuals from 0.1 (first skip) up to 1 (mid block) on a log scale, as diffusers does
    /// for prompt-free control.
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        cond: &Tensor,
        scale: f64,
        guess_mode: bool,
    ) -> Result<ControlResiduals> {
        let b = xs.dim(0)?;
        let dtype = self.encoder.dtype();
        let temb = self
            .encoder
            .time_embedding(timesteps, b, xs.device(), None)?;
        let context = context.to_dtype(dtype)?;
        let xs = self
            .encoder
            .conv_in(xs)?
            .broadcast_add(&self.embed(cond)?)?;
        let (mid, skips) =
            self.encoder
                .forward(xs, &temb, &context, &mut SelfAttention::Own, None)?;
        let n = skips.len();
        let scales: Vec<f64> = if guess_mode && !self.config.global_pool_conditions {
            // torch.logspace(-1, 0, n + 1) × scale
            (0..=n)
                .map(|k| 10f64.powf(-1.0 + k as f64 / n as f64) * scale)
                .collect()
        } else {
            vec![scale; n + 1]
        };
        let finish = |t: Tensor, s: f64| -> Result<Tensor> {
            let t = (t * s)?;
            if self.config.global_pool_conditions {
                t.mean_keepdim(3)?.mean_keepdim(2)
            } else {
                Ok(t)
            }
        };
        let down = skips
            .iter()
            .zip(&self.down_zero)
            .zip(&scales)
            .map(|((x, conv), &s)| finish(conv.forward(x)?, s))
            .collect::<Result<Vec<_>>>()?;
        let mid = finish(self.mid_zero.forward(&mid)?, scales[n])?;
        Ok(ControlResiduals { down, mid })
    }
}
