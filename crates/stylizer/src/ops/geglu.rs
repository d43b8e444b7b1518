//! GEGLU ("GLU Variants Improve Transformer", Shazeer 2020, arXiv:2002.05202) as diffusers'
//! `GEGLU` applies it after `proj`: `hidden, gate = h.chunk(2, -1); hidden * gelu(gate)`, with
//! the exact (erf) GELU.
//!
//! Why: in candle this is two strided `narrow` views, a GELU whose `erf` is libm's scalar
//! `erff`, and a strided multiply, each a single-threaded pass over tensors of 65–130 MB per
//! transformer block at 848×480. Here it is one parallel pass with a polynomial `erf` that
//! vectorises. f32 on the CPU; candle's ops elsewhere.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::softmax::exp;

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7, 6e-7 in f32; the approximation
/// PyTorch's vectorised CPU `erf` uses), branch-free so that loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4_f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

simd_dispatch! {
    /// `out = hidden · gelu_erf(gate)`, element-wise.
    fn geglu_row(out: &mut [f32], hidden: &[f32], gate: &[f32]) {
        for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
            *o = h * (0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2)));
        }
    }
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(self.name(), storage, layout)?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut().filter(|d| **d % 2 == 0 && **d > 0) else {
            bail!(
                "geglu: last dimension must be even, got {:?}",
                layout.dims()
            )
        };
        let half = *last / 2;
        *last = half;
        let mut out = vec![0f32; x.len() / 2];
        out.par_chunks_mut(half)
            .zip(x.par_chunks(2 * half))
            .for_each(|(out, row)| geglu_row(out, &row[..half], &row[half..]));
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `h[..., :n] * gelu_erf(h[..., n:])` for `h` with last dimension `2n`.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    if super::is_cpu_f32(h) {
        return h.contiguous()?.apply_op1_no_bwd(&Geglu);
    }
    let half = h.dim(candle_core::D::Minus1)? / 2;
    let (hidden, gate) = (
        h.narrow(candle_core::D::Minus1, 0, half)?,
        h.narrow(candle_core::D::Minus1, half, half)?,
    );
    hidden * gate.gelu_erf()?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -6.0 + 12.0 * i as f32 / 200_000.0;
            if x == 0.0 {
                continue;
            }
            worst = worst.max((erf(x) - libm_erf(x)).abs());
        }
        assert!(worst < 1e-6, "absolute error {worst}");
        assert!(erf(0.0).abs() < 1e-7);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }

    fn libm_erf(x: f32) -> f32 {
        // From candle's f64 gelu_erf (x·Φ(x)), whose erf is a double-precision one.
        let t = Tensor::new(&[x as f64 * std::f64::consts::SQRT_2], &Device::Cpu).unwrap();
        let g = t.gelu_erf().unwrap().to_vec1::<f64>().unwrap()[0];
        (2.0 * g / (x as f64 * std::f64::consts::SQRT_2) - 1.0) as f32
    }

    #[test]
    fn matches_candle_narrow_and_gelu() -> Result<()> {
        // Odd half width (tail of the vector loop), values well into both tails of erf.
        let h = Tensor::randn(0f32, 3.0, (2, 5, 2 * 37), &Device::Cpu)?;
        let (a, g) = (h.narrow(2, 0, 37)?, h.narrow(2, 37, 37)?);
        let theirs = (a * g.gelu_erf()?)?;
        let ours = geglu(&h)?;
        assert_eq!(ours.dims(), &[2, 5, 37]);
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");
        Ok(())
    }
}
