//! Stride-1 convolution on the CPU without an im2col buffer: the k×k taps are k² GEMMs
//! accumulated into one output, each reading a shifted view of the zero-padded NCHW input.
//!
//! With the output computed on the padded width (`Wp` columns per row, the last `k - 1`
//! dropped afterwards), tap (kh, kw) of input channel ci is the contiguous run
//! `padded[ci][kh·Wp + kw ..][.. Ho·Wp]`, so each GEMM is `[Cout × Cin] · [Cin × Ho·Wp]` with
//! plain strides on both operands. candle's conv2d builds im2col tiles element by element,
//! which costs more than the multiplication itself on the UNet's and VAE's shapes.
//! Other cases (strides, f16, GPU) use candle's conv2d.
//!
//! Why not [`crate::ops::conv`], the upscaler's NHWC conv: the UNet and VAE run on candle
//! tensors whose other ops (group norm, attention, upsampling) are NCHW, and converting
//! NCHW↔NHWC around every conv costs 10–45 % (shared/DESIGN.md); the upscaler's nets are only
//! convs and activations, so they stay NHWC end to end and fuse bias/activation/residual.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// The GEMM convolution as a candle op on (input, taps `[k·k, out, in]`).
struct ShiftedGemmConv {
    padding: usize,
}

impl CustomOp2 for ShiftedGemmConv {
    fn name(&self) -> &'static str {
        "shifted-gemm-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("shifted-gemm-conv2d: f32 only")
        };
        let (Some((xs, xe)), Some((ws, we))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("shifted-gemm-conv2d: contiguous tensors only")
        };
        let (x, taps) = (&x[xs..xe], &w[ws..we]);
        let (b, cin, h, wd) = l1.shape().dims4()?;
        let (kk, cout, cin_w) = l2.shape().dims3()?;
        let k = (kk as f64).sqrt() as usize;
        if cin_w != cin || k * k != kk {
            candle_core::bail!(
                "shifted-gemm-conv2d: taps {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        let p = self.padding;
        let (hp, wp) = (h + 2 * p, wd + 2 * p);
        if hp < k || wp < k {
            candle_core::bail!("shifted-gemm-conv2d: input smaller than the kernel")
        }
        let (ho, wo) = (hp - k + 1, wp - k + 1);
        let plane = hp * wp;
        let n = ho * wp;
        // The last tap's view runs k - 1 elements past the last plane.
        let mut padded = vec![0f32; cin * plane + k];
        // Batch item bi is computed on the padded width at offset bi·cout·ho·wo and then
        // compacted in place (rows only move towards the start): no second output buffer.
        let item = cout * ho * wo;
        let mut out = vec![0f32; b.saturating_sub(1) * item + cout * n];
        let threads = candle_core::utils::get_num_threads();
        let par = match threads {
            1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        };
        for bi in 0..b {
            let src = &x[bi * cin * h * wd..(bi + 1) * cin * h * wd];
            for ci in 0..cin {
                for r in 0..h {
                    let at = ci * plane + (r + p) * wp + p;
                    padded[at..at + wd]
                        .copy_from_slice(&src[(ci * h + r) * wd..(ci * h + r + 1) * wd]);
                }
            }
            for t in 0..k * k {
                let (kh, kw) = (t / k, t % k);
                // SAFETY: every index the GEMM touches is in bounds: dst is cout × n with row
                // stride n from bi·item, inside out's (b-1)·item + cout·n; lhs is the tap's
                // cout × cin block; rhs row ci starts at ci·plane + kh·wp + kw and spans n
                // elements, ending at most at cin·plane + k - 1.
                unsafe {
                    gemm::gemm(
                        cout,
                        n,
                        cin,
                        out.as_mut_ptr().add(bi * item),
                        1,
                        n as isize,
                        t > 0,
                        taps.as_ptr().add(t * cout * cin),
                        1,
                        cin as isize,
                        padded.as_ptr().add(kh * wp + kw),
                        1,
                        plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
            let dst = &mut out[bi * item..];
            for co in 0..cout {
                for r in 0..ho {
                    let from = co * n + r * wp;
                    dst.copy_within(from..from + wo, (co * ho + r) * wo);
                }
            }
        }
        out.truncate(b * item);
        Ok((CpuStorage::F32(out), Shape::from((b, cout, ho, wo))))
    }
}

/// A 2-D convolution layer (weights `weight` [out, in, k, k] and `bias`, as in PyTorch).
#[derive(Debug, Clone)]
pub enum Conv2d {
    /// f32 on the CPU, stride 1: the weight kept only as taps `[k·k, out, in]`.
    Gemm {
        taps: Tensor,
        bias: Option<Tensor>,
        padding: usize,
    },
    /// Everything else: candle's convolution.
    Candle(candle_nn::Conv2d),
}

impl Conv2d {
    /// Takes over a candle convolution (same weights and settings).
    pub fn new(inner: candle_nn::Conv2d, config: Conv2dConfig) -> Result<Self> {
        let w = inner.weight();
        let (cout, cin, kh, kw) = w.dims4()?;
        let gemm = matches!(w.device(), Device::Cpu)
            && w.dtype() == DType::F32
            && config.stride == 1
            && config.dilation == 1
            && config.groups == 1
            && kh == kw
            && kh > 1;
        if !gemm {
            return Ok(Self::Candle(inner));
        }
        Ok(Self::Gemm {
            taps: w
                .permute((2, 3, 0, 1))?
                .reshape((kh * kw, cout, cin))?
                .contiguous()?,
            bias: inner.bias().cloned(),
            padding: config.padding,
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::Gemm { taps, .. } => taps.dtype(),
            Self::Candle(c) => c.weight().dtype(),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (taps, bias, padding) = match self {
            Self::Candle(c) => return c.forward(xs),
            Self::Gemm {
                taps,
                bias,
                padding,
            } => (taps, bias, *padding),
        };
        let ys = xs
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op2_no_bwd(taps, &ShiftedGemmConv { padding })?;
        match bias {
            Some(bias) => ys.broadcast_add(&bias.reshape((1, (), 1, 1))?),
            None => Ok(ys),
        }
    }
}

/// `candle_nn::conv2d` with the faster CPU path.
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::new(candle_nn::conv2d(cin, cout, k, config, vb)?, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (cin, cout, k, pad, h, w) in
            [(5, 7, 3, 1, 9, 13), (3, 4, 3, 0, 6, 5), (2, 3, 5, 2, 7, 8)]
        {
            let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, cout, &dev)?;
            let config = Conv2dConfig {
                padding: pad,
                ..Default::default()
            };
            let inner = candle_nn::Conv2d::new(wt, Some(bias), config);
            let ours = Conv2d::new(inner.clone(), config)?;
            assert!(matches!(ours, Conv2d::Gemm { .. }));
            let ours = ours.forward(&x)?;
            let theirs = inner.forward(&x)?;
            assert_eq!(ours.dims(), theirs.dims());
            let d: f32 = (ours - theirs)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
            assert!(d < 1e-4, "k{k} pad{pad}: max abs {d}");
        }
        Ok(())
    }
}
