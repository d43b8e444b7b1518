//! Multi-head scaled dot-product attention, block by block with an online softmax:
//! "FlashAttention", Dao et al. 2022 (arXiv:2205.14135), as PyTorch's CPU
//! `scaled_dot_product_attention` runs it (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp),
//! which diffusers' `AttnProcessor2_0` calls.
//!
//! Why: with whole score matrices (sliced or not) an SD-2 UNet call at 848×480 spent 29 % of
//! its time in attention at ~65 GFLOP/s: the `queries × keys` products with K = head size run
//! badly as big GEMMs, the head split and merge were single-threaded copies, and the scores
//! went through memory four times. Here each task is one (batch item, head, block of
//! queries): its scores for a block of keys stay in the cache, the GEMMs read q/k/v in place
//! from the projections' `[b, tokens, heads·d]` layout and write the output the same way,
//! and the tasks run in parallel. f32 on the CPU only ([`super::is_cpu_f32`]).

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::softmax::{exp, reduce};
use super::SharedPtr;

/// Query rows per task and keys per block: the scores block (256 KiB) stays in L2, and
/// GEMMs of these sizes ran at 55–70 GFLOP/s per core here against 30–50 for whole rows.
const BLOCK_Q: usize = 128;
const BLOCK_K: usize = 512;

thread_local! {
    /// Per thread: scores block, and per query row the running max, sum and rescale factor.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `softmax(q·kᵀ·scale)·v` per head: `q` `[b, n, heads·d]`, `k` and `v` `[b, m, heads·d]`
/// (head j in columns `j·d..(j+1)·d`, as the q/k/v projections give them) → `[b, n, heads·d]`
/// in the same layout. Only where [`super::is_cpu_f32`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let op = Attention {
        heads,
        scale: scale as f32,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

struct Attention {
    heads: usize,
    scale: f32,
}

simd_dispatch! {
    /// Online softmax over one block of scores (`rows` rows of `cols`): exponentiates in
    /// place against the running row maxima, updates `max` and `sum`, and leaves in `corr`
    /// the factor by which each row's output so far must be rescaled.
    fn softmax_block(s: &mut [f32], cols: usize, max: &mut [f32], sum: &mut [f32], corr: &mut [f32]) {
        for (((row, m), l), c) in s.chunks_exact_mut(cols).zip(max).zip(sum).zip(corr) {
            let new_max = reduce(row, *m, f32::max);
            row.iter_mut().for_each(|v| *v = exp(*v - new_max));
            // exp(-inf) is not 0 with this exp; the first block has nothing to rescale.
            *c = if *m == f32::NEG_INFINITY { 0.0 } else { exp(*m - new_max) };
            *l = *l * *c + reduce(row, 0.0, |a, b| a + b);
            *m = new_max;
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            super::f32_slice(self.name(), qs, ql)?,
            super::f32_slice(self.name(), ks, kl)?,
            super::f32_slice(self.name(), vs, vl)?,
        );
        let (b, n, inner) = ql.shape().dims3()?;
        let (kb, m, k_inner) = kl.shape().dims3()?;
        let h = self.heads;
        if kb != b || k_inner != inner || vl.shape() != kl.shape() || h == 0 || inner % h != 0 {
            bail!(
                "flash-attention: q {:?}, k {:?}, v {:?}, {h} heads",
                ql.dims(),
                kl.dims(),
                vl.dims()
            )
        }
        let d = inner / h;
        let mut out = vec![0f32; b * n * inner];
        let base = SharedPtr(out.as_mut_ptr());
        let q_blocks = n.div_ceil(BLOCK_Q);
        (0..b * h * q_blocks).into_par_iter().for_each(|task| {
            let (bi, head, qb) = (task / (h * q_blocks), task / q_blocks % h, task % q_blocks);
            let q0 = qb * BLOCK_Q;
            let rows = BLOCK_Q.min(n - q0);
            let q_at = (bi * n + q0) * inner + head * d;
            let kv_at = |k0: usize| (bi * m + k0) * inner + head * d;
            // SAFETY: this task alone writes rows q0..q0+rows, columns of its head, of item bi.
            let o = base.offset(q_at).0;
            SCRATCH.with(|cell| {
                let (s, stats) = &mut *cell.borrow_mut();
                s.resize(BLOCK_Q * BLOCK_K, 0.0);
                stats.clear();
                stats.extend((0..rows).map(|_| f32::NEG_INFINITY));
                stats.resize(3 * rows, 0.0);
                let (max, rest) = stats.split_at_mut(rows);
                let (sum, corr) = rest.split_at_mut(rows);
                for k0 in (0..m).step_by(BLOCK_K) {
                    let cols = BLOCK_K.min(m - k0);
                    let s = &mut s[..rows * cols];
                    // SAFETY (both GEMMs): q rows q0.. and k/v rows k0..k0+cols of item bi
                    // are in bounds (row stride `inner`, head columns head·d..+d); s holds
                    // rows × cols; o is this task's block of the output (row stride inner).
                    unsafe {
                        // s = scale · q_block · k_blockᵀ
                        gemm::gemm(
                            rows,
                            cols,
                            d,
                            s.as_mut_ptr(),
                            1,
                            cols as isize,
                            false,
                            q.as_ptr().add(q_at),
                            1,
                            inner as isize,
                            k.as_ptr().add(kv_at(k0)),
                            inner as isize,
                            1,
                            0.0,
                            self.scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    softmax_block(s, cols, max, sum, corr);
                    if k0 > 0 {
                        for (r, c) in corr.iter().enumerate() {
                            // SAFETY: row r of this task's output block.
                            let row =
                                unsafe { std::slice::from_raw_parts_mut(o.add(r * inner), d) };
                            row.iter_mut().for_each(|x| *x *= c);
                        }
                    }
                    unsafe {
                        // o = o + p · v_block
                        gemm::gemm(
                            rows,
                            d,
                            cols,
                            o,
                            1,
                            inner as isize,
                            k0 > 0,
                            s.as_ptr(),
                            1,
                            cols as isize,
                            v.as_ptr().add(kv_at(k0)),
                            1,
                            inner as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
                for (r, l) in sum.iter().enumerate() {
                    // SAFETY: as above.
                    let row = unsafe { std::slice::from_raw_parts_mut(o.add(r * inner), d) };
                    row.iter_mut().for_each(|x| *x /= l);
                }
            });
        });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The textbook computation with candle ops.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let split = |t: &Tensor| -> Result<Tensor> {
            let (b, n, c) = t.dims3()?;
            t.reshape((b, n, heads, c / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let p = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        let o = p.matmul(&v)?.transpose(1, 2)?;
        let (b, n, h, d) = o.dims4()?;
        o.reshape((b, n, h * d))
    }

    #[test]
    fn matches_the_plain_computation() -> Result<()> {
        let dev = Device::Cpu;
        // Several query and key blocks with ragged last ones, more than one head and batch
        // item, scores large enough that the running max changes between key blocks.
        for (b, n, m, heads, d) in [(2, 300, 1100, 3, 8), (1, 7, 77, 2, 5), (1, 129, 513, 1, 16)] {
            let q = Tensor::randn(0f32, 3.0, (b, n, heads * d), &dev)?;
            let k = Tensor::randn(0f32, 3.0, (b, m, heads * d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev)?;
            let scale = 1.0 / (d as f64).sqrt();
            let ours = attention(&q, &k, &v, heads, scale)?;
            let theirs = reference(&q, &k, &v, heads, scale)?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{b} {n} {m} {heads} {d}: max abs diff {diff}");
        }
        // A non-contiguous input is made contiguous first.
        let q = Tensor::randn(0f32, 1.0, (1, 4, 6), &dev)?;
        let kt = Tensor::randn(0f32, 1.0, (1, 6, 9), &dev)?.transpose(1, 2)?;
        let diff = (attention(&q, &kt, &kt, 2, 0.5)? - reference(&q, &kt, &kt, 2, 0.5)?)?
            .abs()?
            .max_keepdim(D::Minus1)?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
