//! CLIP text encoder: "Learning Transferable Visual Models From Natural Language
//! Supervision", Radford et al. 2021 (arXiv:2103.00020).
//!
//! Mirrors transformers `models/clip/modeling_clip.py` (`CLIPTextModel`), which diffusers
//! uses for SD 1.x (OpenAI CLIP ViT-L/14, quick_gelu) and SD 2.x (OpenCLIP ViT-H/14 text tower
//! with 23 of its 24 layers, exact gelu). Adapted from candle-transformers'
//! `stable_diffusion/clip.rs` (MIT/Apache-2.0): built from `config.json` instead of presets,
//! the erf GELU that transformers' `"gelu"` means (candle uses the tanh approximation), the
//! configured layer-norm epsilon, and the pooled output.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use crate::nets::sd::config::{ClipActivation, ClipTextConfig};
use crate::ops::linear::{linear, Linear};

struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, vb.pp("q_proj"))?,
            k_proj: linear(d, d, vb.pp("k_proj"))?,
            v_proj: linear(d, d, vb.pp("v_proj"))?,
            out_proj: linear(d, d, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim: d / c.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let in_dtype = xs.dtype();
        let (b, n, d) = xs.dims3()?;
        // (b, n, d) -> (b * heads, n, head_dim), scores in f32 whatever the weights' dtype.
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .reshape((b * self.heads, n, self.head_dim))?
                .to_dtype(DType::F32)
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q_proj.forward(xs)? * scale)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.transpose(1, 2)?.contiguous()?)?;
        let scores = scores
            .reshape((b, self.heads, n, n))?
            .broadcast_add(causal_mask)?
            .reshape((b * self.heads, n, n))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.to_dtype(in_dtype)?;
        let out = out
            .reshape((b, self.heads, n, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        self.out_proj.forward(&out)
    }
}

struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl ClipMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.fc1.forward(xs)?;
        let xs = match self.activation {
            ClipActivation::QuickGelu => (&xs * candle_nn::ops::sigmoid(&(&xs * 1.702)?)?)?,
            ClipActivation::Gelu => xs.gelu_erf()?,
        };
        self.fc2.forward(&xs)
    }
}

struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let mlp = ClipMlp {
            fc1: linear(c.hidden_size, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(c.intermediate_size, c.hidden_size, vb.pp("mlp.fc2"))?,
            activation: c.activation,
        };
        Ok(Self {
            self_attn: ClipAttention::new(vb.pp("self_attn"), c)?,
            layer_norm1: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            mlp,
            layer_norm2: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, causal_mask)?;
        let xs = (h + xs)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        h + xs
    }
}

/// Output of [`ClipTextModel::forward`].
pub struct ClipTextOutput {
    /// `[batch, tokens, hidden]`: what Stable Diffusion conditions on.
    pub last_hidden_state: Tensor,
    /// `[batch, hidden]`: the hidden state at each sequence's first end-of-text token.
    pub pooler_output: Tensor,
}

/// transformers `CLIPTextModel` (weights under `text_model.` or, as transformers 5.6+
/// saves them, at the root).
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextModel {
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let c = config;
        // transformers >= 5.6 saves CLIPTextModel without its `text_model.` level.
        let vb = match vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            true => vb.pp("text_model"),
            false => vb,
        };
        let emb = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(vb.pp("encoder.layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?,
            position_embedding: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                emb.pp("position_embedding"),
            )?,
            layers,
            final_layer_norm: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        Tensor::from_vec(mask, (n, n), device)?.to_dtype(dtype)
    }

    /// `input_ids`: `[batch, tokens]` u32 token ids.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let (_, n) = input_ids.dims2()?;
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, n as u32, device)?;
        let xs = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = Self::causal_mask(n, DType::F32, device)?;
        let mut xs = xs;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        // transformers pools at the first end-of-text token of each row; configs saved before
        // it knew the token (eos_token_id 2) pool at the highest id, which is end-of-text.
        let ids = input_ids.to_vec2::<u32>()?;
        let rows = ids
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let at = if self.config.eos_token_id == 2 {
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max)
                } else {
                    row.iter().position(|&t| t == self.config.eos_token_id)
                };
                last_hidden_state.i((i, at.unwrap_or(0)))
            })
            .collect::<Result<Vec<_>>>()?;
        let pooler_output = Tensor::stack(&rows, 0)?;
        Ok(ClipTextOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}
