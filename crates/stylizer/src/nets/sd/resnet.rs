//! The residual block of the SD UNet and VAE: "Deep Residual Learning for Image
//! Recognition", He et al. 2015 (arXiv:1512.03385), in the form of diffusers
//! `models/resnet.py` (`ResnetBlock2D`: group norm, SiLU, 3×3 conv, optional time embedding
//! added per channel, group norm, SiLU, 3×3 conv, 1×1 shortcut when the width changes).
//! Adapted from candle-transformers' `stable_diffusion/resnet.rs` (MIT/Apache-2.0) to use
//! [`crate::ops::conv::nchw`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::conv::nchw::{conv2d, Conv2d};
use crate::ops::group_norm::{group_norm, GroupNorm};
use crate::ops::linear::{linear, Linear};

pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// `temb_channels`: width of the time embedding (UNet), `None` in the VAE.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv2d(cin, cout, 3, pad1, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv2d(cout, cout, 3, pad1, vb.pp("conv2"))?,
            time_emb_proj: temb_channels
                .map(|t| linear(t, cout, vb.pp("time_emb_proj")))
                .transpose()?,
            conv_shortcut: (cin != cout)
                .then(|| conv2d(cin, cout, 1, Default::default(), vb.pp("conv_shortcut")))
                .transpose()?,
            output_scale_factor,
        })
    }

    /// Takes `xs` by value and drops each intermediate as soon as it is used (no shadowed
    /// bindings, which would live to the end of the function): on the VAE's last level each
    /// is 200–400 MB.
    pub fn forward(&self, xs: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let (normed, shortcut) = {
            let normed = self.norm1.forward_silu(&xs)?;
            let shortcut = match &self.conv_shortcut {
                Some(c) => c.forward(&xs)?,
                None => xs,
            };
            (normed, shortcut)
        };
        let mut h = self.conv1.forward(&normed)?;
        drop(normed);
        if let (Some(t), Some(proj)) = (temb, &self.time_emb_proj) {
            let t = proj
                .forward(&candle_nn::ops::silu(t)?)?
                .unsqueeze(2)?
                .unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let normed = self.norm2.forward_silu(&h)?;
        drop(h);
        let out = self.conv2.forward_residual(&normed, &shortcut)?;
        match self.output_scale_factor {
            1.0 => Ok(out),
            s => out / s,
        }
    }
}
