//! Group normalisation ("Group Normalization", Wu & He 2018, arXiv:1803.08494) with the SiLU
//! that follows it in every SD ResNet block fused in, as `torch.nn.GroupNorm` (+ `F.silu`).
//!
//! Why: candle's `GroupNorm` is seven tensor ops (sum, subtract, square, sum, divide, scale,
//! shift) and SiLU an eighth, each a full pass that allocates a tensor of the input's size and
//! all alive until the statement ends: on the VAE's 128×480×848 levels that is 200 MB a pass.
//! Here it is two reads for the statistics and one pass that writes the output. f32 on the
//! CPU; candle's ops elsewhere.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::softmax::exp;

/// `GroupNorm(groups, channels, eps)` with affine weight and bias, as in the checkpoint.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    groups: usize,
    eps: f64,
    /// Weight and bias as plain vectors when the model runs in f32 on the CPU.
    affine: Option<(Vec<f32>, Vec<f32>)>,
}

/// Loads `weight` and `bias` (`[channels]`) from `vb`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get(channels, "weight")?;
    let bias = vb.get(channels, "bias")?;
    let affine = super::is_cpu_f32(&weight)
        .then(|| Ok::<_, candle_core::Error>((weight.to_vec1()?, bias.to_vec1()?)))
        .transpose()?;
    Ok(GroupNorm {
        inner: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
        groups,
        eps,
        affine,
    })
}

impl GroupNorm {
    /// `silu(group_norm(xs))`.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        match &self.affine {
            Some((weight, bias)) if super::is_cpu_f32(xs) => {
                xs.contiguous()?.apply_op1_no_bwd(&GroupNormOp {
                    groups: self.groups,
                    eps: self.eps,
                    weight,
                    bias,
                    silu,
                })
            }
            _ if silu => candle_nn::ops::silu(&self.inner.forward(xs)?),
            _ => self.inner.forward(xs),
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }
}

struct GroupNormOp<'a> {
    groups: usize,
    eps: f64,
    weight: &'a [f32],
    bias: &'a [f32],
    silu: bool,
}

/// Sum of `f(v)` over `vs` in f64, with independent lanes so that it vectorises.
#[inline(always)]
fn sum_f64(vs: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let chunks = vs.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

simd_dispatch! {
    /// One group: `x` holds its channels' planes (`plane` values each) back to back.
    fn normalize_group(
        out: &mut [f32],
        x: &[f32],
        plane: usize,
        affine: (&[f32], &[f32]),
        eps: f64,
        silu: bool,
    ) {
        let (weight, bias) = affine;
        let n = x.len() as f64;
        let mean = sum_f64(x, |v| v) / n;
        let var = sum_f64(x, |v| (v - mean) * (v - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for (j, (out, x)) in out.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
            let scale = (weight[j] as f64 * rstd) as f32;
            let shift = bias[j] - (mean as f32) * scale;
            if silu {
                for (o, &v) in out.iter_mut().zip(x) {
                    let y = v * scale + shift;
                    *o = y / (1.0 + exp(-y));
                }
            } else {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * scale + shift;
                }
            }
        }
    }
}

impl CustomOp1 for GroupNormOp<'_> {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(self.name(), storage, layout)?;
        let dims = layout.dims();
        let channels = dims.get(1).copied().unwrap_or(0);
        let g = self.groups;
        if dims.len() < 2 || channels % g != 0 || self.weight.len() != channels {
            bail!(
                "group-norm: {g} groups, {} weights for shape {dims:?}",
                self.weight.len()
            )
        }
        let plane: usize = dims[2..].iter().product();
        let per_group = channels / g * plane;
        let mut out = vec![0f32; x.len()];
        if per_group == 0 {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        out.par_chunks_mut(per_group)
            .zip(x.par_chunks(per_group))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let c = (i % g) * (channels / g)..(i % g + 1) * (channels / g);
                let affine = (&self.weight[c.clone()], &self.bias[c]);
                normalize_group(out, x, plane, affine, self.eps, self.silu);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn matches_candle_group_norm_and_silu() -> Result<()> {
        let dev = Device::Cpu;
        let (groups, channels) = (4, 12);
        let weight = Tensor::randn(0.5f32, 1.0, channels, &dev)?;
        let bias = Tensor::randn(0.5f32, 1.0, channels, &dev)?;
        let tensors = HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".into(), bias.clone()),
        ]);
        let ours = group_norm(
            groups,
            channels,
            1e-6,
            VarBuilder::from_tensors(tensors, DType::F32, &dev),
        )?;
        assert!(ours.affine.is_some());
        let theirs = candle_nn::GroupNorm::new(weight, bias, channels, groups, 1e-6)?;
        // Mean far from zero, odd spatial size (tails of the lane loops).
        let x = (Tensor::randn(0f32, 2.0, (2, channels, 5, 7), &dev)? + 3.0)?;
        let max_abs =
            |a: Tensor, b: Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar() };
        let plain = max_abs(ours.forward(&x)?, theirs.forward(&x)?)?;
        let silu = max_abs(
            ours.forward_silu(&x)?,
            candle_nn::ops::silu(&theirs.forward(&x)?)?,
        )?;
        assert!(
            plain < 1e-5 && silu < 1e-5,
            "group norm {plain}, with silu {silu}"
        );
        // A strided input goes through the same kernel.
        let t = x.transpose(2, 3)?;
        assert!(max_abs(ours.forward(&t)?, theirs.forward(&t)?)? < 1e-5);
        Ok(())
    }
}
