//! SRVGGNetCompact, the small VGG-style network of Real-ESRGAN's video and general-x4v3 models
//! (realesr-animevideov3, realesr-general-x4v3).
//!
//! Paper: Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
//! Synthetic Data" (ICCV Workshops 2021); the compact net ships with Real-ESRGAN v0.2.5.
//! Mirrors `realesrgan/archs/srvgg_arch.py` (`SRVGGNetCompact`): conv + PReLU pairs at the input
//! resolution, a last conv to `out·scale²` channels, pixel shuffle, plus the nearest-upsampled
//! input. Weight names (`body.N.weight`) are those of the official `.pth` files.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, PReLU, VarBuilder};
use rayon::prelude::*;

use crate::ops::conv::nhwc::{Act, BufferPool, Conv3x3, Nhwc};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvggNetConfig {
    pub num_in_ch: usize,
    pub num_out_ch: usize,
    pub num_feat: usize,
    /// Convolutions between the first and the last one.
    pub num_conv: usize,
    pub upscale: usize,
}

impl SrvggNetConfig {
    /// Reads the hyper-parameters from tensor names and shapes: convolutions are the 4-D
    /// `body.N.weight` tensors at even N, PReLU slopes the 1-D ones at odd N; the last conv's
    /// output channels are `out · upscale²`. Only PReLU is supported: the ReLU / LeakyReLU
    /// variants have no weights that would tell them apart, and no released model uses them.
    pub fn from_weights(ts: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |i: usize| {
            ts.get(&format!("body.{i}.weight"))
                .map(|t| t.dims().to_vec())
        };
        let first =
            get(0).ok_or_else(|| Error::Weights("SRVGG weights lack `body.0.weight`".into()))?;
        if get(1).map(|d| d.len()) != Some(1) {
            return Err(Error::Weights(
                "SRVGGNetCompact without PReLU slopes (`body.1.weight`): only the PReLU variant is supported".into(),
            ));
        }
        let convs: Vec<Vec<usize>> = (0..)
            .step_by(2)
            .map_while(|i| get(i).filter(|d| d.len() == 4))
            .collect();
        if convs.len() < 2 {
            return Err(Error::Weights(
                "SRVGGNetCompact needs at least two convolutions".into(),
            ));
        }
        let (num_feat, num_in_ch) = (first[0], first[1]);
        let last_out = convs[convs.len() - 1][0];
        // Output channels equal input channels in every released model (RGB → RGB).
        let num_out_ch = num_in_ch;
        let upscale = (1..=8)
            .find(|s| num_out_ch * s * s == last_out)
            .ok_or_else(|| {
                Error::Weights(format!(
                    "SRVGG last conv has {last_out} channels: not {num_out_ch}·scale²"
                ))
            })?;
        Ok(Self {
            num_in_ch,
            num_out_ch,
            num_feat,
            num_conv: convs.len() - 2,
            upscale,
        })
    }
}

pub struct SrvggNet {
    cfg: SrvggNetConfig,
    convs: Vec<Conv2d>,
    prelus: Vec<PReLU>,
    cpu: Option<FastSrvgg>,
}

impl SrvggNet {
    pub fn new(vb: VarBuilder, cfg: &SrvggNetConfig) -> Result<Self> {
        let ccfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let nf = cfg.num_feat;
        let n = cfg.num_conv + 2;
        let mut convs = Vec::with_capacity(n);
        let mut prelus = Vec::with_capacity(n - 1);
        for i in 0..n {
            let cin = if i == 0 { cfg.num_in_ch } else { nf };
            let cout = if i == n - 1 {
                cfg.num_out_ch * cfg.upscale * cfg.upscale
            } else {
                nf
            };
            convs.push(conv2d(
                cin,
                cout,
                3,
                ccfg,
                vb.pp(format!("body.{}", 2 * i)),
            )?);
            if i < n - 1 {
                prelus.push(candle_nn::prelu(
                    Some(nf),
                    vb.pp(format!("body.{}", 2 * i + 1)),
                )?);
            }
        }
        let cpu = match (vb.device(), vb.dtype()) {
            (Device::Cpu, DType::F32) => Some(FastSrvgg::new(&convs, &prelus)?),
            _ => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            convs,
            prelus,
            cpu,
        })
    }

    pub fn config(&self) -> &SrvggNetConfig {
        &self.cfg
    }

    /// `[1, in, H, W]` in [0, 1] → `[1, out, H·s, W·s]`, unclamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.cpu {
            Some(f) if crate::ops::is_cpu_f32(x) => f.forward(&self.cfg, x),
            _ => Ok(self.forward_candle(x)?),
        }
    }

    /// The same network with candle's own ops (the GPU path, and a cross-check of the fast one).
    pub fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = x.clone();
        for (i, c) in self.convs.iter().enumerate() {
            out = c.forward(&out)?;
            if let Some(p) = self.prelus.get(i) {
                out = p.forward(&out)?;
            }
        }
        let s = self.cfg.upscale;
        let (_, _, h, w) = x.dims4()?;
        candle_nn::ops::pixel_shuffle(&out, s)? + x.upsample_nearest2d(h * s, w * s)?
    }

    /// Frees the activation buffers the CPU path keeps between calls.
    pub fn release_buffers(&self) {
        if let Some(f) = &self.cpu {
            f.pool.clear();
        }
    }

    /// Peak activation memory of the CPU path for an `h`×`w` input, in bytes.
    pub fn workspace_bytes(&self, h: usize, w: usize) -> usize {
        let c = &self.cfg;
        let s2 = c.upscale * c.upscale;
        Nhwc::bytes(h, w, c.num_in_ch)
            + 2 * Nhwc::bytes(h, w, c.num_feat)
            + Nhwc::bytes(h, w, c.num_out_ch * s2)
            + 4 * h * w * s2 * c.num_out_ch
    }
}

struct FastSrvgg {
    convs: Vec<Conv3x3>,
    slopes: Vec<Vec<f32>>,
    pool: BufferPool,
}

impl FastSrvgg {
    fn new(convs: &[Conv2d], prelus: &[PReLU]) -> Result<Self> {
        let convs = convs
            .iter()
            .map(|c| {
                let b = c
                    .bias()
                    .ok_or_else(|| Error::Weights("convolution without bias".into()))?;
                Conv3x3::new(c.weight(), b)
            })
            .collect::<Result<_>>()?;
        let slopes = prelus
            .iter()
            .map(|p| Ok(p.weight().to_dtype(DType::F32)?.to_vec1::<f32>()?))
            .collect::<Result<_>>()?;
        Ok(Self {
            convs,
            slopes,
            pool: BufferPool::default(),
        })
    }

    fn forward(&self, cfg: &SrvggNetConfig, x: &Tensor) -> Result<Tensor> {
        let (_, cin, h, w) = x.dims4()?;
        let (nf, oc, s) = (cfg.num_feat, cfg.num_out_ch, cfg.upscale);
        let pool = &self.pool;
        let planar_in = x.flatten_all()?.to_vec1::<f32>()?;
        let mut input = pool.take(h, w, cin)?;
        input.set_from_planar(&planar_in, cin);
        let mut a = pool.take(h, w, nf)?;
        let mut b = pool.take(h, w, nf)?;
        let n = self.convs.len();
        self.convs[0].run(&input, &mut a, 0, Act::PRelu(&self.slopes[0]), None);
        pool.put(input);
        for i in 1..n - 1 {
            self.convs[i].run(&a, &mut b, 0, Act::PRelu(&self.slopes[i]), None);
            std::mem::swap(&mut a, &mut b);
        }
        let mut last = pool.take(h, w, oc * s * s)?;
        self.convs[n - 1].run(&a, &mut last, 0, Act::None, None);
        pool.put(a);
        pool.put(b);

        // Pixel shuffle (channel c·s² + i·s + j → output pixel (y·s + i, x·s + j) of plane c)
        // plus the nearest-upsampled input, written straight into the planar output.
        let (oh, ow) = (h * s, w * s);
        let mut out = vec![0f32; oc * oh * ow];
        out.par_chunks_mut(ow).enumerate().for_each(|(r, row)| {
            let (c, oy) = (r / oh, r % oh);
            let (y, i) = (oy / s, oy % s);
            for (ox, v) in row.iter_mut().enumerate() {
                let (xx, j) = (ox / s, ox % s);
                *v = last.data()[last.at(y, xx) + c * s * s + i * s + j]
                    + planar_in[(c * h + y) * w + xx];
            }
        });
        pool.put(last);
        Ok(Tensor::from_vec(out, (1, oc, oh, ow), &Device::Cpu)?)
    }
}
