//! Softmax over the last dimension, in place, with an exp the compiler turns into SIMD code.
//!
//! Why: candle's CPU softmax calls libm's scalar `expf` for every score, and an SD-2 UNet call
//! at 848×480 has 5 heads × 6360² scores per self-attention: `expf` alone was 11 % of the
//! UNet's CPU time (perf). The exp here is Cephes' `expf` (range reduction by powers of two,
//! degree-6 polynomial, ~1e-7 relative error) written without branches or libm calls, so the
//! row loops vectorise; max and sum use 16 independent lanes for the same reason.

use candle_core::{bail, CpuStorage, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;

const LANES: usize = 16;

/// e^x for x ≤ 88 (larger x saturate there); about 1e-7 relative error, x ≥ -87.3 exact to
/// that, smaller x give 2^-126 instead of a subnormal or zero.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer with plain SSE2 (no roundps, no libm floor).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.33, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits: an integer subtraction, where `n as i32`
    // (saturating, NaN-checked) compiled to a scalar convert per lane.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // x - n·ln 2 in two parts, so r stays exact for large n.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // Wrapping ops: overflow checks (debug builds) would keep the loop from vectorising.
    y * f32::from_bits((n_int.wrapping_add(127) as u32).wrapping_shl(23))
}

/// Reduces `row` with `f` over [`LANES`] independent accumulators (vectorisable).
#[inline(always)]
pub(crate) fn reduce(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    tail.iter().chain(&acc).fold(init, |a, &v| f(a, v))
}

simd_dispatch! {
    fn softmax_row(row: &mut [f32]) {
        let max = reduce(row, f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|v| *v = exp(*v - max));
        let inv = 1.0 / reduce(row, 0.0, |a, b| a + b);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

struct SoftmaxLastDim;

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            bail!("softmax-last-dim: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("softmax-last-dim: contiguous tensors only")
        };
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        data[start..end].par_chunks_mut(n).for_each(softmax_row);
        Ok(())
    }
}

/// Softmax over the last dimension of `scores`, overwriting them (f32 on the CPU; candle's
/// softmax elsewhere). `scores` must not share its storage with another live tensor: pass the
/// fresh result of a matmul.
pub fn softmax_last_dim_in_place(scores: Tensor) -> Result<Tensor> {
    if !super::is_cpu_f32(&scores) || !scores.is_contiguous() {
        return candle_nn::ops::softmax_last_dim(&scores);
    }
    scores.inplace_op1(&SoftmaxLastDim)?;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn softmax_matches_candle() -> Result<()> {
        // Odd row length (tail of the lane loop), large and negative values.
        let x = (Tensor::randn(0f32, 8.0, (3, 5, 37), &Device::Cpu)? - 20.0)?;
        let theirs = candle_nn::ops::softmax_last_dim(&x)?;
        let ours = softmax_last_dim_in_place(x.copy()?)?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "max abs diff {diff}");
        Ok(())
    }
}
