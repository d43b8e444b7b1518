//! The denoising UNet of Stable Diffusion: "High-Resolution Image Synthesis with Latent
//! Diffusion Models", Rombach et al. 2022 (arXiv:2112.10752).
//!
//! Mirrors diffusers `models/unets/unet_2d_condition.py` (`UNet2DConditionModel`) and the
//! blocks of `models/unets/unet_2d_blocks.py` it uses for SD 1.x/2.x (`DownBlock2D`,
//! `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`, `CrossAttnUpBlock2D`).
//! Adapted from candle-transformers' `stable_diffusion/unet_2d.rs` and `unet_2d_blocks.rs`
//! (MIT/Apache-2.0): one timestep per batch element (img2img with per-frame schedules, the
//! golden's `timesteps2`), up-block types read separately from down-block types, the
//! configured group count in every resnet, and the sinusoidal time embedding computed in
//! f32 exactly as diffusers' `get_timestep_embedding` does.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nets::sd::attention::{AttentionSlicing, SpatialTransformer, SpatialTransformerConfig};
use crate::nets::sd::config::UNetConfig;
use crate::nets::sd::cross_frame::SelfAttention;
use crate::nets::sd::feature_bank::Block;
use crate::nets::sd::motion::Motion;
use crate::nets::sd::resnet::ResnetBlock2D;
use crate::ops::conv::nchw::{conv2d, Conv2d};
use crate::ops::group_norm::{group_norm, GroupNorm};

/// What the ControlNets add to the UNet: one tensor per skip connection (in the order the
/// down path makes them) and one for the mid block's output.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

impl ControlResiduals {
    /// The residuals of several nets summed, as diffusers' `MultiControlNetModel` does.
    pub fn sum(self, other: &ControlResiduals) -> Result<Self> {
        let down = self
            .down
            .iter()
            .zip(&other.down)
            .map(|(a, b)| a + b)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            down,
            mid: (self.mid + &other.mid)?,
        })
    }

    /// Zeros for the unconditional half of a guided batch, then these (guess mode: the net
    /// ran on the prompt half only).
    pub fn with_zero_uncond(self) -> Result<Self> {
        let pad = |t: &Tensor| Tensor::cat(&[&t.zeros_like()?, t], 0);
        Ok(Self {
            down: self.down.iter().map(pad).collect::<Result<Vec<_>>>()?,
            mid: pad(&self.mid)?,
        })
    }
}

pub(crate) fn conv3x3(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

/// A resolution level on the way down: resnets (each followed by a transformer when the
/// block has cross-attention), then an optional stride-2 convolution.
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    downsample: Option<(Conv2d, usize)>,
}

impl DownBlock {
    /// Returns the block output and the states the up path concatenates (one per resnet,
    /// plus the down-sampled one).
    fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        frames: &mut SelfAttention,
        motion: Option<(&Motion, usize)>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context, frames)?;
            }
            if let Some((motion, level)) = motion {
                xs = motion.down(level, i, xs)?;
            }
            states.push(xs.clone());
        }
        if let Some((conv, padding)) = &self.downsample {
            // diffusers' Downsample2D pads right/bottom by one when its padding is 0.
            if *padding == 0 {
                xs = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            }
            xs = conv.forward(&xs)?;
            states.push(xs.clone());
        }
        Ok((xs, states))
    }
}

/// A resolution level on the way up: resnets on [x, skip] (each followed by a transformer
/// when the block has cross-attention), then an optional nearest ×2 up-sampling + conv.
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
        frames: &mut SelfAttention,
        motion: Option<(&Motion, usize)>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            xs = resnet.forward(Tensor::cat(&[&xs, skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context, frames)?;
            }
            if let Some((motion, block)) = motion {
                xs = motion.up(block, i, xs)?;
            }
        }
        if let Some(conv) = &self.upsample {
            let (_, _, h, w) = xs.dims4()?;
            let (h, w) = upsample_size.unwrap_or((2 * h, 2 * w));
            xs = conv.forward_upsampled(&xs, (h, w))?;
        }
        Ok(xs)
    }
}

/// diffusers `TimestepEmbedding`: linear, SiLU, linear; LCM UNets first add a projection of
/// the guidance-scale embedding (`cond_proj`, no bias).
struct TimestepEmbedding {
    cond_proj: Option<candle_nn::Linear>,
    linear_1: candle_nn::Linear,
    linear_2: candle_nn::Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, channels: usize, dim: usize, cond_dim: Option<usize>) -> Result<Self> {
        Ok(Self {
            cond_proj: cond_dim
                .map(|c| candle_nn::linear_no_bias(c, channels, vb.pp("cond_proj")))
                .transpose()?,
            linear_1: candle_nn::linear(channels, dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let xs = match (&self.cond_proj, cond) {
            (Some(proj), Some(c)) => (xs + proj.forward(&c.to_dtype(xs.dtype())?)?)?,
            (Some(_), None) => {
                candle_core::bail!("unet: this UNet embeds the guidance scale and none was given")
            }
            (None, _) => xs.clone(),
        };
        self.linear_2.forward(&self.linear_1.forward(&xs)?.silu()?)
    }
}

/// diffusers `get_guidance_scale_embedding`: `[sin | cos]` of 1000·w · 10000^(−i/(half−1)), in
/// f32, one row per value of `w` (the guidance scale minus one).
pub fn guidance_embedding(w: &[f64], dim: usize, device: &candle_core::Device) -> Result<Tensor> {
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let mut out = Vec::with_capacity(w.len() * dim);
    for &w in w {
        let w = w as f32 * 1000.0;
        let args: Vec<f32> = (0..half).map(|i| w * (i as f32 * -step).exp()).collect();
        out.extend(args.iter().map(|a| a.sin()));
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_vec(out, (w.len(), dim), device)
}

/// The UNet's way down: `conv_in`, the time embedding, the down blocks and the mid block.
/// The UNet and the ControlNet (a trainable copy of it, Zhang et al. 2023) are built from it
/// under the same weight names.
pub(crate) struct UNetEncoder {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_resnets: (ResnetBlock2D, ResnetBlock2D),
    mid_attention: SpatialTransformer,
    config: UNetConfig,
}

/// A resnet of `config`'s blocks (time-conditioned, its group count and epsilon).
fn config_resnet(
    vb: VarBuilder,
    c: &UNetConfig,
    cin: usize,
    cout: usize,
    scale: f64,
) -> Result<ResnetBlock2D> {
    let time_dim = c.blocks[0].out_channels * 4;
    ResnetBlock2D::new(
        vb,
        cin,
        cout,
        Some(time_dim),
        c.norm_num_groups,
        c.norm_eps,
        scale,
    )
}

/// A transformer of `config`'s resolution level `level` over `channels` channels.
fn config_transformer(
    vb: VarBuilder,
    c: &UNetConfig,
    channels: usize,
    level: usize,
    slicing: AttentionSlicing,
) -> Result<SpatialTransformer> {
    let b = &c.blocks[level];
    let cfg = SpatialTransformerConfig {
        channels,
        heads: b.heads,
        depth: b.transformer_layers,
        context_dim: b.cross_attention_dim,
        norm_groups: c.norm_num_groups,
        use_linear_projection: c.use_linear_projection,
        slicing,
    };
    SpatialTransformer::new(vb, &cfg)
}

impl UNetEncoder {
    pub(crate) fn new(
        vb: &VarBuilder,
        config: &UNetConfig,
        slicing: AttentionSlicing,
    ) -> Result<Self> {
        let c = config;
        let n = c.blocks.len();
        let ch0 = c.blocks[0].out_channels;
        let mut down_blocks = Vec::with_capacity(n);
        for (i, block) in c.blocks.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let cin = if i == 0 {
                ch0
            } else {
                c.blocks[i - 1].out_channels
            };
            let cout = block.out_channels;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                let rin = if j == 0 { cin } else { cout };
                resnets.push(config_resnet(vb.pp("resnets").pp(j), c, rin, cout, 1.0)?);
                if block.down_cross_attn {
                    let vb = vb.pp("attentions").pp(j);
                    attentions.push(config_transformer(vb, c, cout, i, slicing)?);
                }
            }
            let downsample = if i + 1 < n {
                let p = c.downsample_padding;
                Some((conv3x3(vb.pp("downsamplers.0.conv"), cout, cout, 2, p)?, p))
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsample,
            });
        }
        let last = n - 1;
        let ch_last = c.blocks[last].out_channels;
        let mid = vb.pp("mid_block");
        let mid_scale = c.mid_block_scale_factor;
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), c.in_channels, ch0, 1, 1)?,
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                ch0,
                ch0 * 4,
                c.time_cond_proj_dim,
            )?,
            down_blocks,
            mid_resnets: (
                config_resnet(mid.pp("resnets.0"), c, ch_last, ch_last, mid_scale)?,
                config_resnet(mid.pp("resnets.1"), c, ch_last, ch_last, mid_scale)?,
            ),
            mid_attention: config_transformer(mid.pp("attentions.0"), c, ch_last, last, slicing)?,
            config: config.clone(),
        })
    }

    pub(crate) fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub(crate) fn dtype(&self) -> candle_core::DType {
        self.conv_in.dtype()
    }

    /// diffusers `get_timestep_embedding` (`Timesteps` module): `[cos | sin]` of t · 10000^(-i/(half - shift))
    /// when `flip_sin_to_cos`, computed in f32 like torch does, one row per timestep.
    fn timestep_features(&self, timesteps: &[f64]) -> Vec<f32> {
        let dim = self.config.blocks[0].out_channels;
        let half = dim / 2;
        let shift = self.config.freq_shift as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| ((-(10000f64.ln() as f32) * i as f32) / (half as f32 - shift)).exp())
            .collect();
        let mut out = Vec::with_capacity(timesteps.len() * dim);
        for &t in timesteps {
            let args: Vec<f32> = freqs.iter().map(|f| t as f32 * f).collect();
            let (sin, cos) = (args.iter().map(|a| a.sin()), args.iter().map(|a| a.cos()));
            if self.config.flip_sin_to_cos {
                out.extend(cos.chain(sin));
            } else {
                out.extend(sin.chain(cos));
            }
            out.extend(std::iter::repeat_n(0.0, dim - 2 * half));
        }
        out
    }

    /// The time embedding `[b, 4·ch0]` for a batch of `b` at `timesteps` (one value for the
    /// whole batch, or one per element); `cond` is the guidance embedding of an LCM UNet
    /// (`[1 or b, time_cond_proj_dim]`).
    pub(crate) fn time_embedding(
        &self,
        timesteps: &[f64],
        b: usize,
        device: &candle_core::Device,
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ts: Vec<f64> = match timesteps.len() {
            1 => vec![timesteps[0]; b],
            n if n == b => timesteps.to_vec(),
            n => candle_core::bail!("unet: {n} timesteps for a batch of {b}"),
        };
        let dim = self.config.blocks[0].out_channels;
        let t_emb = Tensor::from_vec(self.timestep_features(&ts), (b, dim), device)?
            .to_dtype(self.dtype())?;
        let cond = cond.map(|c| c.broadcast_as((b, c.dim(1)?))).transpose()?;
        self.time_embedding.forward(&t_emb, cond.as_ref())
    }

    /// `conv_in` of the latents (in the model dtype, centred when the config asks).
    pub(crate) fn conv_in(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.to_dtype(self.dtype())?;
        if self.config.center_input_sample {
            xs = ((xs * 2.0)? - 1.0)?;
        }
        self.conv_in.forward(&xs)
    }

    /// The down blocks and the mid block from `conv_in`'s output `xs`: returns the mid
    /// block's output and the skip states (`xs` first, then every down-block state).
    /// `motion` adds AnimateDiff's motion modules where diffusers' `UNetMotionModel` has them.
    pub(crate) fn forward(
        &self,
        xs: Tensor,
        temb: &Tensor,
        context: &Tensor,
        frames: &mut SelfAttention,
        motion: Option<&Motion>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = vec![xs.clone()];
        let mut xs = xs;
        for (level, block) in self.down_blocks.iter().enumerate() {
            frames.enter(Block::Down(level));
            let (out, states) = block
                .forward(&xs, temb, context, frames, motion.map(|m| (m, level)))
                .map_err(|e| e.context(format!("down_blocks.{level}")))?;
            skips.extend(states);
            xs = out;
        }
        let mid = |xs: Tensor, frames: &mut SelfAttention| -> Result<Tensor> {
            let xs = self.mid_resnets.0.forward(xs, Some(temb))?;
            let xs = self.mid_attention.forward(&xs, context, frames)?;
            let xs = match motion {
                Some(motion) => motion.mid(xs)?,
                None => xs,
            };
            self.mid_resnets.1.forward(xs, Some(temb))
        };
        frames.enter(Block::Mid);
        let xs = mid(xs, frames).map_err(|e| e.context("mid_block"))?;
        Ok((xs, skips))
    }
}

/// diffusers `UNet2DConditionModel` for SD 1.x / 2.x (weights under the `unet/` component).
pub struct UNet2DConditionModel {
    encoder: UNetEncoder,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// The dtype of the weights, which the activations keep.
    pub fn dtype(&self) -> candle_core::DType {
        self.encoder.dtype()
    }

    pub fn new(vb: VarBuilder, config: &UNetConfig, slicing: AttentionSlicing) -> Result<Self> {
        let c = config;
        let n = c.blocks.len();
        let ch0 = c.blocks[0].out_channels;
        let ch_last = c.blocks[n - 1].out_channels;
        let encoder = UNetEncoder::new(&vb, config, slicing)?;
        let mut up_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("up_blocks").pp(i);
            let level = n - 1 - i;
            let cout = c.blocks[level].out_channels;
            let prev_out = if i == 0 {
                ch_last
            } else {
                c.blocks[level + 1].out_channels
            };
            let skip_in = c.blocks[level.saturating_sub(1)].out_channels;
            let layers = c.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { skip_in } else { cout };
                let rin = if j == 0 { prev_out } else { cout };
                resnets.push(config_resnet(
                    vb.pp("resnets").pp(j),
                    c,
                    rin + skip,
                    cout,
                    1.0,
                )?);
                if c.blocks[level].up_cross_attn {
                    let vb = vb.pp("attentions").pp(j);
                    attentions.push(config_transformer(vb, c, cout, level, slicing)?);
                }
            }
            let upsample = if i + 1 < n {
                Some(conv3x3(vb.pp("upsamplers.0.conv"), cout, cout, 1, 1)?)
            } else {
                None
            };
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsample,
            });
        }
        Ok(Self {
            encoder,
            up_blocks,
            conv_norm_out: group_norm(c.norm_num_groups, ch0, c.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), ch0, c.out_channels, 1, 1)?,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        self.encoder.config()
    }

    /// Predicts noise (or v) for `xs` `[b, in_channels, h, w]` at `timesteps` (one value for
    /// the whole batch, or one per element) given text embeddings `[b, tokens, dim]`.
    /// Any latent size works; sizes that are not multiples of 2^(levels-1) up-sample to
    /// the skip connections' sizes as diffusers does. `frames` decides what the
    /// self-attention layers attend to ([`SelfAttention::Own`]: the frame alone). `control`
    /// is added to the skip connections and the mid block's output (diffusers'
    /// `down_block_additional_residuals` / `mid_block_additional_residual`). `guidance` is an
    /// LCM UNet's `timestep_cond` ([`guidance_embedding`]). `motion`: AnimateDiff's motion
    /// modules, with the batch made of windows of `motion.frames` consecutive frames (each
    /// frame with its own text and timestep rows, as diffusers' `UNetMotionModel` repeats them).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        frames: &mut SelfAttention,
        control: Option<&ControlResiduals>,
        guidance: Option<&Tensor>,
        motion: Option<&Motion>,
    ) -> Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let temb = self
            .encoder
            .time_embedding(timesteps, b, xs.device(), guidance)?;
        let context = context.to_dtype(self.encoder.dtype())?;
        let xs = self.encoder.conv_in(xs)?;
        let (mut xs, mut skips) = self.encoder.forward(xs, &temb, &context, frames, motion)?;
        if let Some(control) = control {
            if control.down.len() != skips.len() {
                candle_core::bail!(
                    "unet: {} ControlNet residuals for {} skip connections",
                    control.down.len(),
                    skips.len()
                );
            }
            for (skip, residual) in skips.iter_mut().zip(&control.down) {
                *skip = skip.broadcast_add(&residual.to_dtype(skip.dtype())?)?;
            }
            xs = xs.broadcast_add(&control.mid.to_dtype(self.encoder.dtype())?)?;
        }

        let up_factor = 1usize << (self.up_blocks.len() - 1);
        let odd_size = h % up_factor != 0 || w % up_factor != 0;
        for (i, block) in self.up_blocks.iter().enumerate() {
            frames.enter(Block::Up(i));
            let rest = skips.split_off(skips.len() - block.resnets.len());
            let is_final = i + 1 == self.up_blocks.len();
            let upsample_size = match skips.last() {
                Some(next) if odd_size && !is_final => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            xs = block
                .forward(
                    &xs,
                    &rest,
                    &temb,
                    &context,
                    upsample_size,
                    frames,
                    motion.map(|m| (m, i)),
                )
                .map_err(|e| e.context(format!("up_blocks.{i}")))?;
        }
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}
