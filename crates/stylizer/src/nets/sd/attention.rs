//! The UNet's spatial transformer: "High-Resolution Image Synthesis with Latent Diffusion
//! Models", Rombach et al. 2022 (arXiv:2112.10752), section 3.3.
//!
//! Mirrors diffusers `models/transformers/transformer_2d.py` (`Transformer2DModel`),
//! `models/attention.py` (`BasicTransformerBlock`, `FeedForward`, `GEGLU`) and
//! `models/attention_processor.py` (`Attention` with `AttnProcessor`, attention slicing).
//! Adapted from candle-transformers' `stable_diffusion/attention.rs` (MIT/Apache-2.0): the
//! erf GELU of diffusers' GEGLU (candle uses the tanh approximation, off by up to 5e-4),
//! `proj_out` shapes for any inner size, attention block-wise on the CPU
//! ([`crate::ops::attention`], as diffusers' `AttnProcessor2_0` calls PyTorch's SDPA) and
//! sliced by a memory budget elsewhere.

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::{conv2d, layer_norm, Conv2d, LayerNorm, VarBuilder};

use crate::nets::sd::cross_frame::SelfAttention;
use crate::nets::sd::feature_bank::BankCall;
use crate::ops::attention as flash;
use crate::ops::geglu::geglu;
use crate::ops::group_norm::{group_norm, GroupNorm};
use crate::ops::is_cpu_f32;
use crate::ops::linear::{linear, linear_no_bias, Linear};
use crate::ops::softmax::softmax_last_dim_in_place;

/// How attention scores are computed where whole score matrices are made (f16 or a GPU):
/// all at once, or in slices so that the `queries × keys` score matrices never exceed a
/// memory budget (diffusers `enable_attention_slicing`). Slices give identical results.
/// In f32 on the CPU attention always runs block-wise ([`crate::ops::attention`]), whose
/// memory is a few hundred KiB per thread, so this setting does not apply there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionSlicing {
    /// Blocks of query rows whose scores fit in 16 MiB: bounded memory, and the scores stay
    /// in the CPU caches between the two products and the softmax.
    Auto,
    /// Never slice.
    Off,
    /// Slices of this many (batch × head) pairs, all queries at once (diffusers' slice_size).
    Size(usize),
}

/// Score memory per slice for [`AttentionSlicing::Auto`].
pub(crate) const AUTO_SLICE_BYTES: usize = 16 << 20;

impl AttentionSlicing {
    /// (pairs per slice, query rows per slice)
    fn slices(self, pairs: usize, queries: usize, keys: usize) -> (usize, usize) {
        match self {
            AttentionSlicing::Off => (pairs, queries),
            AttentionSlicing::Size(n) => (n.clamp(1, pairs), queries),
            AttentionSlicing::Auto => {
                let rows = (AUTO_SLICE_BYTES / (keys * 4).max(1)).clamp(1, queries);
                let pairs_per = (AUTO_SLICE_BYTES / (rows * keys * 4).max(1)).clamp(1, pairs);
                (pairs_per, rows)
            }
        }
    }
}

/// softmax(q · kt) · v over `[pairs, queries, d]` inputs (`kt` already transposed and
/// scaled), `pair_step` pairs and `row_step` query rows at a time.
fn attend(
    q: &Tensor,
    kt: &Tensor,
    v: &Tensor,
    pair_step: usize,
    row_step: usize,
) -> Result<Tensor> {
    let (pairs, n, _) = q.dims3()?;
    let mut outs = Vec::with_capacity(pairs.div_ceil(pair_step));
    for p0 in (0..pairs).step_by(pair_step) {
        let p = p0..(p0 + pair_step).min(pairs);
        let (kt, v) = (kt.i(p.clone())?, v.i(p.clone())?);
        let mut rows = Vec::with_capacity(n.div_ceil(row_step));
        for r0 in (0..n).step_by(row_step) {
            let r = r0..(r0 + row_step).min(n);
            let scores = q.i((p.clone(), r))?.matmul(&kt)?;
            let probs = softmax_last_dim_in_place(scores)?;
            rows.push(probs.matmul(&v)?);
        }
        outs.push(Tensor::cat(&rows, 1)?);
    }
    Tensor::cat(&outs, 0)
}

/// Multi-head (cross-)attention without bias on q/k/v (diffusers `Attention`).
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    slicing: AttentionSlicing,
}

impl CrossAttention {
    fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        slicing: AttentionSlicing,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            slicing,
        })
    }

    /// (b, n, h·d) -> (b·h, n, d)
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = xs.dims3()?;
        xs.reshape((b, n, self.heads, dim / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, dim / self.heads))?
            .contiguous()
    }

    fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.attend(&q, &k, &v)
    }

    /// Self-attention of `xs` whose keys and values also come from a feature bank, which
    /// sees the layer's own keys, values and output.
    fn forward_banked(&self, xs: &Tensor, bank: &mut BankCall) -> Result<Tensor> {
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(xs)?;
        let v = self.to_v.forward(xs)?;
        let (keys, values) = bank.keys_values(&k, &v)?;
        let out = self.attend(&q, &keys, &values)?;
        bank.attended(k, v, out)
    }

    /// softmax(q·kᵀ·scale)·v through `to_out`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let out = if is_cpu_f32(q) {
            flash::attention(q, k, v, self.heads, self.scale)?
        } else {
            self.sliced(q, k, v)?
        };
        self.to_out.forward(&out)
    }

    /// Attention with whole score matrices, [`AttentionSlicing`] of them at a time (f16 and
    /// GPU devices).
    fn sliced(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, n, _) = q.dims3()?;
        let in_dtype = q.dtype();
        // Scores and softmax in f32 (diffusers' upcast_attention/upcast_softmax).
        let q = self.split_heads(q)?.to_dtype(DType::F32)?;
        let k = self.split_heads(k)?.to_dtype(DType::F32)?;
        let v = self.split_heads(v)?.to_dtype(DType::F32)?;
        let kt = (k.transpose(1, 2)? * self.scale)?.contiguous()?;
        let (pair_step, row_step) = self.slicing.slices(q.dim(0)?, n, kt.dim(2)?);
        let out = attend(&q, &kt, &v, pair_step, row_step)?.to_dtype(in_dtype)?;
        let d = out.dim(2)?;
        out.reshape((b, self.heads, n, d))?
            .transpose(1, 2)?
            .reshape((b, n, self.heads * d))
    }
}

/// `FeedForward` with a GEGLU input projection (`net.0.proj`) and an output linear (`net.2`).
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj_in: linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            proj_out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    /// Per token, so run on bands of tokens whose GEGLU input stays under [`FF_BAND_BYTES`]
    /// (diffusers' `enable_forward_chunking`): the same values, and no allocation so big that
    /// the allocator maps fresh pages (which the kernel zeroes) for it on every call, as a
    /// window of frames under AnimateDiff would otherwise make.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = xs.dims3()?;
        let row_bytes = dim * 8 * xs.dtype().size_in_bytes();
        let band = (FF_BAND_BYTES / row_bytes).max(1);
        if b * n <= band {
            return self.forward_whole(xs);
        }
        let flat = xs.reshape((b * n, dim))?;
        let bands = (0..b * n)
            .step_by(band)
            .map(|r| self.forward_whole(&flat.narrow(0, r, band.min(b * n - r))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&bands, 0)?.reshape((b, n, dim))
    }

    fn forward_whole(&self, xs: &Tensor) -> Result<Tensor> {
        self.proj_out.forward(&geglu(&self.proj_in.forward(xs)?)?)
    }
}

/// The largest GEGLU input [`FeedForward`] makes at once.
pub(crate) const FF_BAND_BYTES: usize = 96 << 20;

/// Self-attention, cross-attention on the text (or a second self-attention), feed-forward;
/// each pre-normed, residual.
pub(crate) struct BasicTransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
    /// Sinusoidal positions `[max_len, dim]` added to the normed tokens before each
    /// attention (diffusers' `positional_embeddings="sinusoidal"`: the motion modules).
    positions: Option<Tensor>,
}

impl BasicTransformerBlock {
    /// A block on `dim`-wide tokens whose second attention reads `context_dim`-wide context
    /// (or, with `None`, is a second self-attention), with sinusoidal positions up to
    /// `max_positions` tokens when given.
    pub(crate) fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        slicing: AttentionSlicing,
        max_positions: Option<usize>,
    ) -> Result<Self> {
        let head_dim = dim / heads;
        let attention = |name: &str, context: usize| {
            CrossAttention::new(vb.pp(name), dim, context, heads, head_dim, slicing)
        };
        Ok(Self {
            attn1: attention("attn1", dim)?,
            attn2: attention("attn2", context_dim.unwrap_or(dim))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            positions: max_positions
                .map(|n| sinusoidal_positions(n, dim, vb.dtype(), vb.device()))
                .transpose()?,
        })
    }

    /// Adds the positions of the first `n` tokens, where the block has them.
    fn positioned(&self, xs: Tensor) -> Result<Tensor> {
        match &self.positions {
            Some(pe) => {
                let n = xs.dim(1)?;
                if n > pe.dim(0)? {
                    candle_core::bail!(
                        "{n} tokens but positions for {} (motion_max_seq_length)",
                        pe.dim(0)?
                    );
                }
                xs.broadcast_add(&pe.narrow(0, 0, n)?)
            }
            None => Ok(xs),
        }
    }

    /// `context`: the text for the second attention (`None`: it attends to the tokens).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        frames: &mut SelfAttention,
    ) -> Result<Tensor> {
        let normed = self.positioned(self.norm1.forward(xs)?)?;
        let attended = match frames.bank() {
            Some(bank) => self.attn1.forward_banked(&normed, bank)?,
            None => {
                let frame_context = frames.context(&normed)?;
                self.attn1.forward(&normed, frame_context.as_ref())?
            }
        };
        let xs = (attended + xs)?;
        let normed = self.positioned(self.norm2.forward(&xs)?)?;
        let xs = (self.attn2.forward(&normed, context)? + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// diffusers `SinusoidalPositionalEmbedding.pe`: row p is sin(p·fᵢ), cos(p·fᵢ) interleaved,
/// fᵢ = exp(2i · −ln(10000)/dim), computed in f32 as torch does.
fn sinusoidal_positions(
    n: usize,
    dim: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    // The factor is a Python float (double) that torch rounds to f32 once.
    let scale = (-(10000f64.ln()) / dim as f64) as f32;
    let mut pe = vec![0f32; n * dim];
    for p in 0..n {
        for i in (0..dim).step_by(2) {
            let arg = p as f32 * (i as f32 * scale).exp();
            pe[p * dim + i] = arg.sin();
            if i + 1 < dim {
                pe[p * dim + i + 1] = arg.cos();
            }
        }
    }
    Tensor::from_vec(pe, (n, dim), device)?.to_dtype(dtype)
}

enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// Where the transformer sits in the UNet and how it is built.
#[derive(Debug, Clone, Copy)]
pub struct SpatialTransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub context_dim: usize,
    pub norm_groups: usize,
    pub use_linear_projection: bool,
    pub slicing: AttentionSlicing,
}

/// diffusers `Transformer2DModel` (continuous input): group norm, project in, transformer
/// blocks over the h·w tokens, project out, residual.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl SpatialTransformer {
    pub fn new(vb: VarBuilder, c: &SpatialTransformerConfig) -> Result<Self> {
        let inner = c.channels;
        let (proj_in, proj_out) = if c.use_linear_projection {
            (
                Proj::Linear(linear(c.channels, inner, vb.pp("proj_in"))?),
                Proj::Linear(linear(inner, c.channels, vb.pp("proj_out"))?),
            )
        } else {
            (
                Proj::Conv(conv2d(
                    c.channels,
                    inner,
                    1,
                    Default::default(),
                    vb.pp("proj_in"),
                )?),
                Proj::Conv(conv2d(
                    inner,
                    c.channels,
                    1,
                    Default::default(),
                    vb.pp("proj_out"),
                )?),
            )
        };
        let vbt = vb.pp("transformer_blocks");
        let blocks = (0..c.depth)
            .map(|i| {
                let context = Some(c.context_dim);
                BasicTransformerBlock::new(vbt.pp(i), inner, context, c.heads, c.slicing, None)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(c.norm_groups, c.channels, 1e-6, vb.pp("norm"))?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    /// `frames` decides what the self-attention layers attend to (the frame itself, or an
    /// anchor frame as well: [`crate::nets::sd::cross_frame`]).
    pub fn forward(
        &self,
        xs: &Tensor,
        context: &Tensor,
        frames: &mut SelfAttention,
    ) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch))
        };
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Proj::Conv(p) => to_tokens(&p.forward(&normed)?)?,
            Proj::Linear(p) => p.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, Some(context), frames)?;
        }
        let inner = tokens.dim(2)?;
        let to_image = |t: &Tensor, ch: usize| -> Result<Tensor> {
            t.reshape((b, h, w, ch))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(&to_image(&tokens, inner)?)?,
            Proj::Linear(p) => to_image(&p.forward(&tokens)?, c)?,
        };
        out + xs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn feed_forward_in_bands_is_the_whole() -> Result<()> {
        let dev = Device::Cpu;
        let dim = 32;
        let vb = candle_nn::VarBuilder::from_tensors(
            [
                (
                    "net.0.proj.weight",
                    Tensor::randn(0f32, 0.1, (dim * 8, dim), &dev)?,
                ),
                ("net.0.proj.bias", Tensor::randn(0f32, 0.1, dim * 8, &dev)?),
                (
                    "net.2.weight",
                    Tensor::randn(0f32, 0.1, (dim, dim * 4), &dev)?,
                ),
                ("net.2.bias", Tensor::randn(0f32, 0.1, dim, &dev)?),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            DType::F32,
            &dev,
        );
        let ff = FeedForward::new(vb, dim)?;
        // Past one band (and not a multiple of it).
        let rows = FF_BAND_BYTES / (dim * 8 * 4) * 2 + 37;
        let xs = Tensor::randn(0f32, 1.0, (1, rows, dim), &dev)?;
        let diff = (ff.forward(&xs)? - ff.forward_whole(&xs)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn slices_give_the_same_attention() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (6, 37, 8), &dev)?;
        let kt = Tensor::randn(0f32, 1.0, (6, 8, 29), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (6, 29, 8), &dev)?;
        let full = attend(&q, &kt, &v, 6, 37)?;
        for (ps, rs) in [(1, 37), (4, 5), (6, 1)] {
            let d: f32 = (attend(&q, &kt, &v, ps, rs)? - &full)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar()?;
            assert!(d < 1e-6, "pairs {ps} rows {rs}: {d}");
        }
        Ok(())
    }

    #[test]
    fn sliced_path_matches_the_block_wise_one() -> Result<()> {
        let dev = Device::Cpu;
        let (dim, ctx, heads) = (12, 10, 3);
        let names = [("to_q", dim), ("to_k", ctx), ("to_v", ctx)];
        let mut tensors: std::collections::HashMap<String, Tensor> = names
            .iter()
            .map(|(n, cin)| {
                Ok((
                    format!("{n}.weight"),
                    Tensor::randn(0f32, 0.5, (dim, *cin), &dev)?,
                ))
            })
            .collect::<Result<_>>()?;
        tensors.insert(
            "to_out.0.weight".into(),
            Tensor::randn(0f32, 0.5, (dim, dim), &dev)?,
        );
        tensors.insert("to_out.0.bias".into(), Tensor::randn(0f32, 0.5, dim, &dev)?);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let xs = Tensor::randn(0f32, 1.0, (2, 33, dim), &dev)?;
        let context = Tensor::randn(0f32, 1.0, (2, 7, ctx), &dev)?;
        for slicing in [
            AttentionSlicing::Auto,
            AttentionSlicing::Off,
            AttentionSlicing::Size(1),
        ] {
            let attn = CrossAttention::new(vb.clone(), dim, ctx, heads, dim / heads, slicing)?;
            let q = attn.to_q.forward(&xs)?;
            let (k, v) = (attn.to_k.forward(&context)?, attn.to_v.forward(&context)?);
            let d: f32 = (attn.sliced(&q, &k, &v)?
                - flash::attention(&q, &k, &v, heads, attn.scale)?)?
            .abs()?
            .max_all()?
            .to_scalar()?;
            assert!(d < 1e-5, "{slicing:?}: {d}");
        }
        Ok(())
    }

    #[test]
    fn auto_slices_bound_the_score_memory() {
        // SD 2 at 848×480, level 1: 10 (batch × head) pairs of 6360 × 6360 scores.
        let (pairs, rows) = AttentionSlicing::Auto.slices(10, 6360, 6360);
        assert!(
            rows * 6360 * 4 * pairs <= AUTO_SLICE_BYTES && rows > 100,
            "{pairs} {rows}"
        );
        // Cross-attention on 77 text tokens fits in one slice per few pairs.
        assert_eq!(AttentionSlicing::Auto.slices(10, 6360, 77).1, 6360);
        assert_eq!(AttentionSlicing::Size(3).slices(10, 50, 50), (3, 50));
        assert_eq!(AttentionSlicing::Off.slices(10, 50, 50), (10, 50));
    }
}
