//! `torch.nn.Linear` (`y = x·Wᵀ + b`, weight `[out, in]` as in the checkpoint) with its GEMM
//! split into bands of rows, one per task, for f32 on the CPU; candle's `Linear` elsewhere.
//!
//! Why: candle hands the whole `[tokens, in] × [in, out]` product to one GEMM that splits it
//! across threads itself; on the UNet's shapes (12 720 × 320 → 2560 and alike) that ran at
//! 85–120 GFLOP/s on 2 cores, bands of 512 rows with one single-threaded GEMM each at
//! 135–160 (measured side by side). The bias is added per band, while the band is in cache.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use gemm::Parallelism;
use rayon::prelude::*;

use super::{is_cpu_f32, SharedPtr};

/// Rows per band: enough to amortise packing the weight, few enough to share out.
const BAND_ROWS: usize = 512;

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// The bias as a plain vector when the layer runs in f32 on the CPU.
    bias: Option<Vec<f32>>,
}

/// `Linear(in_dim, out_dim)` with weight and bias from `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Linear::new(weight, Some(bias))
}

/// `Linear(in_dim, out_dim, bias=False)` from `vb`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(vb.get((out_dim, in_dim), "weight")?, None)
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let bias_vec = match &bias {
            Some(b) if is_cpu_f32(&weight) => Some(b.to_vec1()?),
            _ => None,
        };
        Ok(Self {
            inner: candle_nn::Linear::new(weight, bias),
            bias: bias_vec,
        })
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w = self.inner.weight();
        if !(is_cpu_f32(xs) && is_cpu_f32(w)) {
            return self.inner.forward(xs);
        }
        let op = BandedLinear {
            bias: self.bias.as_deref(),
        };
        xs.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
    }
}

struct BandedLinear<'a> {
    bias: Option<&'a [f32]>,
}

impl CustomOp2 for BandedLinear<'_> {
    fn name(&self) -> &'static str {
        "banded-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(self.name(), xs, xl)?;
        let w = super::f32_slice(self.name(), ws, wl)?;
        let (out_dim, in_dim) = wl.shape().dims2()?;
        let mut dims = xl.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == in_dim && self.bias.is_none_or(|b| b.len() == out_dim) => {
                *last = out_dim
            }
            _ => bail!(
                "a linear layer that takes {in_dim} features (weight {:?}) was given {:?}",
                wl.dims(),
                xl.dims()
            ),
        }
        let rows = x.len() / in_dim.max(1);
        let mut out = vec![0f32; rows * out_dim];
        let base = SharedPtr(out.as_mut_ptr());
        let band = |r0: usize, n: usize, par: Parallelism| {
            let dst = base.offset(r0 * out_dim).0;
            // SAFETY: rows r0..r0+n of x (row stride in_dim) and of the output (row stride
            // out_dim) are in bounds and this band alone writes them; wᵀ is read in place
            // (column j = weight row j).
            unsafe {
                gemm::gemm(
                    n,
                    out_dim,
                    in_dim,
                    dst,
                    1,
                    out_dim as isize,
                    false,
                    x.as_ptr().add(r0 * in_dim),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    in_dim as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
                if let Some(bias) = self.bias {
                    let y = std::slice::from_raw_parts_mut(dst, n * out_dim);
                    for row in y.chunks_exact_mut(out_dim) {
                        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    }
                }
            }
        };
        let threads = candle_core::utils::get_num_threads();
        let bands = rows.div_ceil(BAND_ROWS).div_ceil(threads) * threads;
        let per_band = rows.div_ceil(bands.max(1));
        if per_band >= 64 {
            (0..rows.div_ceil(per_band)).into_par_iter().for_each(|j| {
                let r0 = j * per_band;
                band(r0, per_band.min(rows - r0), Parallelism::None)
            });
        } else if rows > 0 {
            // Too few rows to share out (the time embedding, short inputs): one GEMM.
            band(0, rows, Parallelism::Rayon(threads));
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_a_plain_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let (i, o) = (37, 29);
        let w = Tensor::randn(0f32, 1.0, (o, i), &dev)?;
        let b = Tensor::randn(0f32, 1.0, o, &dev)?;
        let max_abs =
            |a: Tensor, b: Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar() };
        // One short input (single GEMM), one with several bands and a ragged last one, and a
        // strided one.
        for x in [
            Tensor::randn(0f32, 1.0, (2, 3, i), &dev)?,
            Tensor::randn(0f32, 1.0, (3, 700, i), &dev)?,
            Tensor::randn(0f32, 1.0, (2, i, 150), &dev)?.transpose(1, 2)?,
        ] {
            for bias in [Some(b.clone()), None] {
                let ours = Linear::new(w.clone(), bias.clone())?.forward(&x)?;
                // Not candle's Linear: for this strided input with a batch of 2 it is wrong
                // (candle 0.11.1, max abs error 33).
                let want = x.contiguous()?.broadcast_matmul(&w.t()?)?;
                let want = match &bias {
                    Some(b) => want.broadcast_add(b)?,
                    None => want,
                };
                assert_eq!(ours.dims(), want.dims());
                let d = max_abs(ours, want)?;
                assert!(d < 1e-4, "{:?}: {d}", x.dims());
            }
        }
        Ok(())
    }
}
