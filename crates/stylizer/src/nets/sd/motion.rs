//! AnimateDiff motion modules: "AnimateDiff: Animate Your Personalized Text-to-Image
//! Diffusion Models without Specific Tuning", Guo et al. 2023 (arXiv:2307.04725).
//!
//! Mirrors diffusers `models/unets/unet_motion_model.py`: `AnimateDiffTransformer3D` (a
//! temporal transformer: every latent pixel's tokens across the window's frames attend to
//! each other), `MotionModules` and `MotionAdapter` (where they sit), and what
//! `UNetMotionModel` does with them: after each resnet (+ spatial transformer) of every down
//! and up block, and between the mid block's attention and second resnet when the adapter has
//! a mid block. As diffusers (unlike the original repository), the module's GroupNorm takes
//! its statistics over all frames of the window.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nets::sd::attention::{AttentionSlicing, BasicTransformerBlock};
use crate::nets::sd::config::{MotionAdapterConfig, UNetConfig};
use crate::nets::sd::cross_frame::SelfAttention;
use crate::ops::group_norm::{group_norm, GroupNorm};
use crate::ops::linear::{linear, Linear};
use crate::{Error, Result as CrateResult};

/// diffusers `AnimateDiffTransformer3D`: group norm over (channels, frames, pixels), project
/// in, transformer blocks (two positioned self-attentions and a GEGLU feed-forward) along
/// the frame axis, project out, residual.
struct TemporalTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl TemporalTransformer {
    fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        c: &MotionAdapterConfig,
        slicing: AttentionSlicing,
    ) -> Result<Self> {
        let vbt = vb.pp("transformer_blocks");
        let positions = Some(c.max_seq_length);
        Ok(Self {
            norm: group_norm(c.norm_num_groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: linear(channels, channels, vb.pp("proj_in"))?,
            blocks: (0..depth)
                .map(|i| {
                    BasicTransformerBlock::new(vbt.pp(i), channels, None, heads, slicing, positions)
                })
                .collect::<Result<_>>()?,
            proj_out: linear(channels, channels, vb.pp("proj_out"))?,
        })
    }

    /// `xs` `[b·f, c, h, w]`, frames of each batch element consecutive.
    fn forward(&self, xs: &Tensor, frames: usize) -> Result<Tensor> {
        let (bf, c, h, w) = xs.dims4()?;
        let b = bf / frames;
        // [b, c, f·h, w]: one group norm over every frame of the window.
        let normed = self.norm.forward(
            &xs.reshape((b, frames, c, h * w))?
                .transpose(1, 2)?
                .reshape((b, c, frames * h, w))?
                .contiguous()?,
        )?;
        // Tokens [b·h·w, f, c]: one sequence along the frames per latent pixel.
        let tokens = normed
            .reshape((b, c, frames, h * w))?
            .permute((0, 3, 2, 1))?
            .reshape((b * h * w, frames, c))?
            .contiguous()?;
        let mut tokens = self.proj_in.forward(&tokens)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, None, &mut SelfAttention::Own)?;
        }
        let out = self
            .proj_out
            .forward(&tokens)?
            .reshape((b, h * w, frames, c))?
            .permute((0, 2, 3, 1))?
            .reshape((bf, c, h, w))?;
        out + xs
    }
}

/// The motion modules of one adapter, by UNet level, loaded from its weights
/// (`down_blocks.{i}.motion_modules.{j}`, `mid_block.motion_modules.{j}`,
/// `up_blocks.{i}.motion_modules.{j}`, diffusers' names).
pub struct MotionAdapter {
    down: Vec<Vec<TemporalTransformer>>,
    mid: Vec<TemporalTransformer>,
    /// In up-block order (deepest level first).
    up: Vec<Vec<TemporalTransformer>>,
    config: MotionAdapterConfig,
}

impl MotionAdapter {
    pub fn new(vb: VarBuilder, c: &MotionAdapterConfig, slicing: AttentionSlicing) -> Result<Self> {
        let modules = |vb: VarBuilder, n: usize, level: usize, depth: usize| {
            let l = &c.levels[level];
            (0..n)
                .map(|j| {
                    let vb = vb.pp("motion_modules").pp(j);
                    TemporalTransformer::new(vb, l.channels, l.heads, depth, c, slicing)
                })
                .collect::<Result<Vec<_>>>()
        };
        let n = c.levels.len();
        let down = (0..n)
            .map(|i| {
                let l = &c.levels[i];
                modules(
                    vb.pp("down_blocks").pp(i),
                    l.modules,
                    i,
                    l.transformer_layers,
                )
            })
            .collect::<Result<_>>()?;
        let up = (0..n)
            .map(|i| {
                let level = n - 1 - i;
                let l = &c.levels[level];
                modules(
                    vb.pp("up_blocks").pp(i),
                    l.modules + 1,
                    level,
                    l.transformer_layers,
                )
            })
            .collect::<Result<_>>()?;
        let mid = match c.mid {
            Some((count, depth)) => modules(vb.pp("mid_block"), count, n - 1, depth)?,
            None => Vec::new(),
        };
        Ok(Self {
            down,
            mid,
            up,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &MotionAdapterConfig {
        &self.config
    }
}

impl MotionAdapterConfig {
    /// Refuses an adapter whose modules do not sit where `unet` has resnets (another base
    /// model's adapter: SD 2.x, SDXL, or another channel layout).
    pub fn check_fits(&self, unet: &UNetConfig) -> CrateResult<()> {
        let ours: Vec<usize> = self.levels.iter().map(|l| l.channels).collect();
        let theirs: Vec<usize> = unet.blocks.iter().map(|b| b.out_channels).collect();
        let layers = self
            .levels
            .iter()
            .find(|l| l.modules != unet.layers_per_block);
        if ours != theirs || layers.is_some() || self.mid.is_some_and(|(n, _)| n != 1) {
            return Err(Error::Config(format!(
                "the motion adapter does not fit the model: its modules are for levels of {ours:?} channels \
                 with {} per block, the UNet has {theirs:?} with {} (AnimateDiff adapters are made for SD 1.5)",
                self.levels.first().map_or(0, |l| l.modules),
                unet.layers_per_block
            )));
        }
        Ok(())
    }
}

/// What the UNet's blocks run under AnimateDiff: an adapter and the number of frames that
/// make up each batch element (the window).
#[derive(Clone, Copy)]
pub struct Motion<'a> {
    pub adapter: &'a MotionAdapter,
    pub frames: usize,
}

impl Motion<'_> {
    /// After resnet (+ attention) `j` of down block `level`.
    pub(crate) fn down(&self, level: usize, j: usize, xs: Tensor) -> Result<Tensor> {
        self.adapter.down[level][j].forward(&xs, self.frames)
    }

    /// Between the mid block's attention and its second resnet; `None` when the adapter
    /// has no mid block.
    pub(crate) fn mid(&self, xs: Tensor) -> Result<Tensor> {
        match self.adapter.mid.first() {
            Some(m) => m.forward(&xs, self.frames),
            None => Ok(xs),
        }
    }

    /// After resnet (+ attention) `j` of up block `i` (deepest first).
    pub(crate) fn up(&self, i: usize, j: usize, xs: Tensor) -> Result<Tensor> {
        self.adapter.up[i][j].forward(&xs, self.frames)
    }
}
