//! RRDBNet, the generator of ESRGAN and Real-ESRGAN.
//!
//! Papers: Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks"
//! (ECCV Workshops 2018) and "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
//! Synthetic Data" (ICCV Workshops 2021). Mirrors BasicSR `basicsr/archs/rrdbnet_arch.py`
//! (`RRDBNet`, `RRDB`, `ResidualDenseBlock`); weight names are those of the official
//! `RealESRGAN_x4plus.pth`, `RealESRGAN_x4plus_anime_6B.pth` and `RealESRGAN_x2plus.pth`.
//!
//! Two forward paths compute the same function: [`RrdbNet::forward_candle`] with candle ops
//! (any device, any float dtype) and, for f32 on the CPU, an NHWC path on
//! [`crate::ops::conv::nhwc`] that keeps the dense blocks' concatenation in one buffer, so no
//! `cat`, no layout change and no allocation happens between layers.

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

use crate::ops::conv::nhwc::{Act, BufferPool, Conv3x3, Nhwc, Residual};
use crate::{Error, Result};

const LRELU: f32 = 0.2;
/// Residual scaling inside the dense blocks and around each RRDB (BasicSR uses 0.2 for both).
const RES_SCALE: f32 = 0.2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrdbNetConfig {
    pub num_in_ch: usize,
    pub num_out_ch: usize,
    /// Overall scale: 4, or 2 / 1 for the variants that pixel-unshuffle their input by 2 / 4.
    pub scale: usize,
    pub num_feat: usize,
    pub num_block: usize,
    pub num_grow_ch: usize,
}

fn dims(ts: &HashMap<String, Tensor>, name: &str) -> Result<Vec<usize>> {
    ts.get(name)
        .map(|t| t.dims().to_vec())
        .ok_or_else(|| Error::Weights(format!("RRDBNet weights lack `{name}`")))
}

impl RrdbNetConfig {
    /// Reads the hyper-parameters from tensor names and shapes (as stable-diffusion.cpp's
    /// `detect_from_weights` does): features and input channels from `conv_first`, output
    /// channels from `conv_last`, block count from the `body.N` names, growth channels from
    /// `body.0.rdb1.conv1`, and the pixel-unshuffle factor from conv_first's input channels.
    pub fn from_weights(ts: &HashMap<String, Tensor>) -> Result<Self> {
        let first = dims(ts, "conv_first.weight")?;
        let last = dims(ts, "conv_last.weight")?;
        let grow = dims(ts, "body.0.rdb1.conv1.weight")?;
        let num_block = (0..)
            .take_while(|i| ts.contains_key(&format!("body.{i}.rdb1.conv1.weight")))
            .count();
        let (num_feat, in_total, num_out_ch) = (first[0], first[1], last[0]);
        // x2plus / x1 variants feed pixel_unshuffle(x, 2 | 4) into conv_first.
        let scale = match in_total / num_out_ch.max(1) {
            1 => 4,
            4 => 2,
            16 => 1,
            _ => {
                return Err(Error::Weights(format!(
                    "RRDBNet conv_first takes {in_total} channels for {num_out_ch} output channels: not a pixel-unshuffle factor"
                )))
            }
        };
        let num_in_ch = in_total * scale * scale / 16;
        Ok(Self {
            num_in_ch,
            num_out_ch,
            scale,
            num_feat,
            num_block,
            num_grow_ch: grow[0],
        })
    }

    fn unshuffle(&self) -> usize {
        4 / self.scale
    }
}

fn conv(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

fn fast(c: &Conv2d) -> Result<Conv3x3> {
    let bias = c
        .bias()
        .ok_or_else(|| Error::Weights("convolution without bias".into()))?;
    Conv3x3::new(c.weight(), bias)
}

fn lrelu(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::leaky_relu(x, LRELU as f64)
}

struct ResidualDenseBlock {
    convs: [Conv2d; 5],
}

impl ResidualDenseBlock {
    fn new(vb: VarBuilder, nf: usize, gc: usize) -> candle_core::Result<Self> {
        let c = |i: usize, cout| conv(nf + (i - 1) * gc, cout, vb.pp(format!("conv{i}")));
        Ok(Self {
            convs: [c(1, gc)?, c(2, gc)?, c(3, gc)?, c(4, gc)?, c(5, nf)?],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut feats = vec![x.clone()];
        for c in &self.convs[..4] {
            let y = lrelu(&c.forward(&Tensor::cat(&feats, 1)?)?)?;
            feats.push(y);
        }
        let x5 = self.convs[4].forward(&Tensor::cat(&feats, 1)?)?;
        (x5 * RES_SCALE as f64)? + x
    }
}

/// Residual-in-residual dense block: three dense blocks and a scaled skip.
struct Rrdb {
    rdbs: [ResidualDenseBlock; 3],
}

impl Rrdb {
    fn new(vb: VarBuilder, nf: usize, gc: usize) -> candle_core::Result<Self> {
        let r = |i: usize| ResidualDenseBlock::new(vb.pp(format!("rdb{i}")), nf, gc);
        Ok(Self {
            rdbs: [r(1)?, r(2)?, r(3)?],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = x.clone();
        for rdb in &self.rdbs {
            out = rdb.forward(&out)?;
        }
        (out * RES_SCALE as f64)? + x
    }
}

pub struct RrdbNet {
    cfg: RrdbNetConfig,
    conv_first: Conv2d,
    body: Vec<Rrdb>,
    conv_body: Conv2d,
    conv_up1: Conv2d,
    conv_up2: Conv2d,
    conv_hr: Conv2d,
    conv_last: Conv2d,
    cpu: Option<FastRrdb>,
}

impl RrdbNet {
    pub fn new(vb: VarBuilder, cfg: &RrdbNetConfig) -> Result<Self> {
        let (nf, gc) = (cfg.num_feat, cfg.num_grow_ch);
        let u = cfg.unshuffle();
        let conv_first = conv(cfg.num_in_ch * u * u, nf, vb.pp("conv_first"))?;
        let body = (0..cfg.num_block)
            .map(|i| Rrdb::new(vb.pp(format!("body.{i}")), nf, gc))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let net = Self {
            cfg: cfg.clone(),
            conv_first,
            body,
            conv_body: conv(nf, nf, vb.pp("conv_body"))?,
            conv_up1: conv(nf, nf, vb.pp("conv_up1"))?,
            conv_up2: conv(nf, nf, vb.pp("conv_up2"))?,
            conv_hr: conv(nf, nf, vb.pp("conv_hr"))?,
            conv_last: conv(nf, cfg.num_out_ch, vb.pp("conv_last"))?,
            cpu: None,
        };
        let cpu = match (vb.device(), vb.dtype()) {
            (Device::Cpu, candle_core::DType::F32) => Some(FastRrdb::new(&net)?),
            _ => None,
        };
        Ok(Self { cpu, ..net })
    }

    pub fn config(&self) -> &RrdbNetConfig {
        &self.cfg
    }

    /// `[1, in, H, W]` in [0, 1] → `[1, out, H·scale, W·scale]`, unclamped. H and W must be
    /// multiples of the unshuffle factor (4 / scale).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.cpu {
            Some(f) if crate::ops::is_cpu_f32(x) => f.forward(&self.cfg, &self.unshuffled(x)?),
            _ => Ok(self.forward_candle(x)?),
        }
    }

    fn unshuffled(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.cfg.unshuffle() {
            1 => Ok(x.clone()),
            u => candle_nn::ops::pixel_unshuffle(x, u),
        }
    }

    /// The same network with candle's own ops (the GPU path, and a cross-check of the fast one).
    pub fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let feat = self.conv_first.forward(&self.unshuffled(x)?)?;
        let mut body = feat.clone();
        for b in &self.body {
            body = b.forward(&body)?;
        }
        let feat = (feat + self.conv_body.forward(&body)?)?;
        let up = |c: &Conv2d, f: &Tensor| {
            let (_, _, h, w) = f.dims4()?;
            lrelu(&c.forward(&f.upsample_nearest2d(2 * h, 2 * w)?)?)
        };
        let feat = up(&self.conv_up2, &up(&self.conv_up1, &feat)?)?;
        self.conv_last
            .forward(&lrelu(&self.conv_hr.forward(&feat)?)?)
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
        let (u, nf) = (c.unshuffle(), c.num_feat);
        let (lh, lw) = (h / u, w / u);
        let cat = nf + 4 * c.num_grow_ch;
        Nhwc::bytes(lh, lw, c.num_in_ch * u * u)
            + 4 * Nhwc::bytes(lh, lw, cat)
            + 2 * Nhwc::bytes(lh, lw, nf)
            + 2 * Nhwc::bytes(2 * lh, 2 * lw, nf)
            + 2 * Nhwc::bytes(4 * lh, 4 * lw, nf)
            + Nhwc::bytes(4 * lh, 4 * lw, c.num_out_ch)
    }
}

/// Weights repacked for [`Conv3x3`] and a pool of activation buffers reused across calls.
struct FastRrdb {
    conv_first: Conv3x3,
    /// `[block][rdb][conv]`
    body: Vec<[[Conv3x3; 5]; 3]>,
    conv_body: Conv3x3,
    conv_up1: Conv3x3,
    conv_up2: Conv3x3,
    conv_hr: Conv3x3,
    conv_last: Conv3x3,
    pool: BufferPool,
}

/// `(&bufs[i], &mut bufs[j])` for `i != j`.
fn pair(bufs: &mut [Nhwc], i: usize, j: usize) -> (&Nhwc, &mut Nhwc) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = bufs.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = bufs.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}

impl FastRrdb {
    fn new(net: &RrdbNet) -> Result<Self> {
        let rdb = |r: &ResidualDenseBlock| -> Result<[Conv3x3; 5]> {
            Ok([
                fast(&r.convs[0])?,
                fast(&r.convs[1])?,
                fast(&r.convs[2])?,
                fast(&r.convs[3])?,
                fast(&r.convs[4])?,
            ])
        };
        let body = net
            .body
            .iter()
            .map(|b| Ok([rdb(&b.rdbs[0])?, rdb(&b.rdbs[1])?, rdb(&b.rdbs[2])?]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_first: fast(&net.conv_first)?,
            body,
            conv_body: fast(&net.conv_body)?,
            conv_up1: fast(&net.conv_up1)?,
            conv_up2: fast(&net.conv_up2)?,
            conv_hr: fast(&net.conv_hr)?,
            conv_last: fast(&net.conv_last)?,
            pool: BufferPool::default(),
        })
    }

    fn forward(&self, cfg: &RrdbNetConfig, x: &Tensor) -> Result<Tensor> {
        let (_, cin, h, w) = x.dims4()?;
        let (nf, gc, oc) = (cfg.num_feat, cfg.num_grow_ch, cfg.num_out_ch);
        let pool = &self.pool;
        let mut input = pool.take(h, w, cin)?;
        input.set_from_planar(&x.flatten_all()?.to_vec1::<f32>()?, cin);
        let mut feat = pool.take(h, w, nf)?;
        self.conv_first.run(&input, &mut feat, 0, Act::None, None);
        pool.put(input);

        // Four buffers of nf + 4·gc channels rotate through the body: a dense block grows its
        // input buffer in place (conv1..4) and writes conv5 (+ skip) into the next buffer,
        // while the RRDB input stays untouched for the outer skip.
        let cat = nf + 4 * gc;
        let mut bufs = Vec::with_capacity(4);
        for _ in 0..4 {
            bufs.push(pool.take(h, w, cat)?);
        }
        bufs[0].copy_channels_from(&feat, nf);
        let mut cur = 0;
        for block in &self.body {
            let mut i = cur;
            for rdb in block {
                for (k, c) in rdb[..4].iter().enumerate() {
                    c.run_inplace(&mut bufs[i], nf + k * gc, Act::LeakyRelu(LRELU));
                }
                let j = (i + 1) % 4;
                let (src, dst) = pair(&mut bufs, i, j);
                let skip = Residual {
                    base: src,
                    scale: RES_SCALE,
                };
                rdb[4].run(src, dst, 0, Act::None, Some(skip));
                i = j;
            }
            let (input, out) = pair(&mut bufs, cur, i);
            out.scale_add(RES_SCALE, input, nf);
            cur = i;
        }
        let mut trunk = pool.take(h, w, nf)?;
        let skip = Residual {
            base: &feat,
            scale: 1.0,
        };
        self.conv_body
            .run(&bufs[cur], &mut trunk, 0, Act::None, Some(skip));
        bufs.into_iter().for_each(|b| pool.put(b));
        pool.put(feat);

        let mut up1 = pool.take(2 * h, 2 * w, nf)?;
        up1.upsample2_from(&trunk, nf);
        pool.put(trunk);
        let mut up1b = pool.take(2 * h, 2 * w, nf)?;
        self.conv_up1
            .run(&up1, &mut up1b, 0, Act::LeakyRelu(LRELU), None);
        pool.put(up1);
        let mut up2 = pool.take(4 * h, 4 * w, nf)?;
        up2.upsample2_from(&up1b, nf);
        pool.put(up1b);
        let mut hr = pool.take(4 * h, 4 * w, nf)?;
        self.conv_up2
            .run(&up2, &mut hr, 0, Act::LeakyRelu(LRELU), None);
        self.conv_hr
            .run(&hr, &mut up2, 0, Act::LeakyRelu(LRELU), None);
        pool.put(hr);
        let mut out = pool.take(4 * h, 4 * w, oc)?;
        self.conv_last.run(&up2, &mut out, 0, Act::None, None);
        pool.put(up2);
        let planar = out.to_planar(oc);
        pool.put(out);
        Ok(Tensor::from_vec(
            planar,
            (1, oc, 4 * h, 4 * w),
            &Device::Cpu,
        )?)
    }
}
