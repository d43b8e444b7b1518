//! Hyper-parameters of each Stable Diffusion component, read from the component's own
//! `config.json` (diffusers `ConfigMixin` for the UNet and VAE, transformers
//! `CLIPTextConfig` for the text encoder). Missing keys take the defaults of the Python
//! constructors, so that a config written by any diffusers version reads the same.
//! Features this port does not implement are rejected with their key name instead of
//! being silently ignored.

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// A config value that diffusers accepts either as one value for every block or as a list
/// with one entry per block (`attention_head_dim`, `cross_attention_dim`, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PerBlock<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    fn expand(&self, n: usize, key: &str) -> Result<Vec<T>> {
        self.expand_in("unet", n, key)
    }

    fn expand_in(&self, what: &str, n: usize, key: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Many(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Many(v) => Err(Error::Config(format!(
                "{what} config: {key} has {} entries for {n} blocks",
                v.len()
            ))),
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(json: &Value, what: &str) -> Result<T> {
    T::deserialize(json).map_err(|e| Error::Config(format!("{what} config.json: {e}")))
}

fn unsupported(what: &str, key: &str, value: impl std::fmt::Display) -> Error {
    Error::Config(format!(
        "{what} config: {key} = {value} is not supported by this version of video-stylizer"
    ))
}

/// One resolution level of the UNet, as the down path sees it (the up path mirrors it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UNetBlock {
    pub out_channels: usize,
    /// Whether the down block at this level has cross-attention transformers.
    pub down_cross_attn: bool,
    /// Whether the up block that outputs this level's channels has cross-attention.
    pub up_cross_attn: bool,
    /// Attention heads of the transformers (diffusers' `attention_head_dim` historically
    /// means the number of heads, not their size).
    pub heads: usize,
    pub transformer_layers: usize,
    pub cross_attention_dim: usize,
}

/// `UNet2DConditionModel` configuration (diffusers `unet/config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub blocks: Vec<UNetBlock>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub use_linear_projection: bool,
    /// Compute attention scores in f32 even when the model runs in f16 (SD 2.1).
    pub upcast_attention: bool,
    pub sample_size: Option<usize>,
    /// LCM UNets: the width of the guidance-scale embedding added to the time embedding.
    pub time_cond_proj_dim: Option<usize>,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawUNet {
    in_channels: usize,
    out_channels: usize,
    center_input_sample: bool,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    mid_block_type: Option<String>,
    only_cross_attention: PerBlock<bool>,
    block_out_channels: Vec<usize>,
    layers_per_block: PerBlock<usize>,
    downsample_padding: usize,
    mid_block_scale_factor: f64,
    act_fn: String,
    norm_num_groups: usize,
    norm_eps: f64,
    cross_attention_dim: PerBlock<usize>,
    transformer_layers_per_block: PerBlock<usize>,
    attention_head_dim: PerBlock<usize>,
    num_attention_heads: Option<PerBlock<usize>>,
    dual_cross_attention: bool,
    use_linear_projection: bool,
    upcast_attention: bool,
    class_embed_type: Option<String>,
    addition_embed_type: Option<String>,
    resnet_time_scale_shift: String,
    time_embedding_type: String,
    time_cond_proj_dim: Option<usize>,
    encoder_hid_dim: Option<usize>,
    conv_in_kernel: usize,
    conv_out_kernel: usize,
    attention_type: String,
    sample_size: Option<usize>,
}

impl Default for RawUNet {
    // The defaults of diffusers' `UNet2DConditionModel.__init__`.
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                s("CrossAttnDownBlock2D"),
                s("CrossAttnDownBlock2D"),
                s("CrossAttnDownBlock2D"),
                s("DownBlock2D"),
            ],
            up_block_types: vec![
                s("UpBlock2D"),
                s("CrossAttnUpBlock2D"),
                s("CrossAttnUpBlock2D"),
                s("CrossAttnUpBlock2D"),
            ],
            mid_block_type: Some(s("UNetMidBlock2DCrossAttn")),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: s("silu"),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            upcast_attention: false,
            class_embed_type: None,
            addition_embed_type: None,
            resnet_time_scale_shift: s("default"),
            time_embedding_type: s("positional"),
            time_cond_proj_dim: None,
            encoder_hid_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: s("default"),
            sample_size: None,
        }
    }
}

impl UNetConfig {
    pub fn from_json(json: &Value) -> Result<Self> {
        let r: RawUNet = parse(json, "unet")?;
        let what = "unet";
        let n = r.block_out_channels.len();
        if n == 0 || r.down_block_types.len() != n || r.up_block_types.len() != n {
            return Err(Error::Config(format!(
                "unet config: {n} block_out_channels but {} down and {} up block types",
                r.down_block_types.len(),
                r.up_block_types.len()
            )));
        }
        let checks: [(&str, bool, String); 11] = [
            ("act_fn", r.act_fn != "silu", r.act_fn.clone()),
            (
                "mid_block_type",
                r.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn"),
                format!("{:?}", r.mid_block_type),
            ),
            (
                "class_embed_type",
                r.class_embed_type.is_some(),
                format!("{:?}", r.class_embed_type),
            ),
            (
                "addition_embed_type",
                r.addition_embed_type.is_some(),
                format!("{:?}", r.addition_embed_type),
            ),
            (
                "resnet_time_scale_shift",
                r.resnet_time_scale_shift != "default",
                r.resnet_time_scale_shift.clone(),
            ),
            (
                "time_embedding_type",
                r.time_embedding_type != "positional",
                r.time_embedding_type.clone(),
            ),
            (
                "encoder_hid_dim",
                r.encoder_hid_dim.is_some(),
                format!("{:?}", r.encoder_hid_dim),
            ),
            (
                "dual_cross_attention",
                r.dual_cross_attention,
                "true".into(),
            ),
            (
                "conv_in_kernel/conv_out_kernel",
                r.conv_in_kernel != 3 || r.conv_out_kernel != 3,
                format!("{}/{}", r.conv_in_kernel, r.conv_out_kernel),
            ),
            (
                "attention_type",
                r.attention_type != "default",
                r.attention_type.clone(),
            ),
            (
                "only_cross_attention",
                r.only_cross_attention
                    .expand(n, "only_cross_attention")?
                    .contains(&true),
                "true".into(),
            ),
        ];
        if let Some((key, _, value)) = checks.into_iter().find(|c| c.1) {
            return Err(unsupported(what, key, value));
        }
        let layers = r.layers_per_block.expand(n, "layers_per_block")?;
        if layers.iter().any(|&l| l != layers[0]) {
            return Err(unsupported(what, "layers_per_block", format!("{layers:?}")));
        }
        let heads = r
            .num_attention_heads
            .as_ref()
            .unwrap_or(&r.attention_head_dim)
            .expand(n, "attention_head_dim")?;
        let cross = r.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let depth = r
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")?;
        let kind = |t: &str, plain: &str, attn: &str| -> Result<bool> {
            if t == plain {
                Ok(false)
            } else if t == attn {
                Ok(true)
            } else {
                Err(unsupported(what, "block type", t))
            }
        };
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            blocks.push(UNetBlock {
                out_channels: r.block_out_channels[i],
                down_cross_attn: kind(
                    &r.down_block_types[i],
                    "DownBlock2D",
                    "CrossAttnDownBlock2D",
                )?,
                up_cross_attn: kind(
                    &r.up_block_types[n - 1 - i],
                    "UpBlock2D",
                    "CrossAttnUpBlock2D",
                )?,
                heads: heads[i],
                transformer_layers: depth[i],
                cross_attention_dim: cross[i],
            });
        }
        Ok(Self {
            in_channels: r.in_channels,
            out_channels: r.out_channels,
            center_input_sample: r.center_input_sample,
            flip_sin_to_cos: r.flip_sin_to_cos,
            freq_shift: r.freq_shift,
            blocks,
            layers_per_block: layers[0],
            downsample_padding: r.downsample_padding,
            mid_block_scale_factor: r.mid_block_scale_factor,
            norm_num_groups: r.norm_num_groups,
            norm_eps: r.norm_eps,
            use_linear_projection: r.use_linear_projection,
            upcast_attention: r.upcast_attention,
            sample_size: r.sample_size,
            time_cond_proj_dim: r.time_cond_proj_dim,
        })
    }

    /// The width of the text embeddings the UNet attends to.
    pub fn cross_attention_dim(&self) -> usize {
        self.blocks[0].cross_attention_dim
    }
}

/// `ControlNetModel` configuration (diffusers `controlnet/config.json`): the UNet's way down
/// plus the control image's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// The encoder half (the up-block fields mirror the down blocks and are not used).
    pub unet: UNetConfig,
    pub conditioning_channels: usize,
    /// Widths of the control image's embedding convolutions; each step after the first
    /// halves the resolution, so their count sets the VAE factor the net expects.
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// `controlnet_conditioning_channel_order = "bgr"`: the net was trained on BGR images.
    pub bgr: bool,
    /// Residuals averaged over the image (shuffle nets); implies guess mode.
    pub global_pool_conditions: bool,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawControlNet {
    conditioning_channels: usize,
    conditioning_embedding_out_channels: Vec<usize>,
    controlnet_conditioning_channel_order: String,
    global_pool_conditions: bool,
}

impl Default for RawControlNet {
    // The defaults of diffusers' `ControlNetModel.__init__`.
    fn default() -> Self {
        Self {
            conditioning_channels: 3,
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            controlnet_conditioning_channel_order: "rgb".into(),
            global_pool_conditions: false,
        }
    }
}

impl ControlNetConfig {
    pub fn from_json(json: &Value) -> Result<Self> {
        let r: RawControlNet = parse(json, "controlnet")?;
        // The UNet keys are the same; the up blocks a ControlNet lacks mirror its down blocks.
        let mut unet = json.clone();
        if let Some(map) = unet.as_object_mut() {
            if let Some(Value::Array(down)) = map.get("down_block_types").cloned() {
                let up: Vec<Value> = down
                    .iter()
                    .rev()
                    .map(|t| Value::String(t.as_str().unwrap_or("").replace("Down", "Up")))
                    .collect();
                map.insert("up_block_types".into(), Value::Array(up));
            } else {
                map.remove("up_block_types");
            }
            map.remove("out_channels");
        }
        let unet = UNetConfig::from_json(&unet).map_err(|e| match e {
            Error::Config(m) => Error::Config(m.replacen("unet", "controlnet", 1)),
            e => e,
        })?;
        let order = r.controlnet_conditioning_channel_order.as_str();
        if order != "rgb" && order != "bgr" {
            return Err(unsupported(
                "controlnet",
                "controlnet_conditioning_channel_order",
                order,
            ));
        }
        Self::new(
            unet,
            r.conditioning_channels,
            r.conditioning_embedding_out_channels,
            order == "bgr",
            r.global_pool_conditions,
        )
    }

    /// A net with `unet`'s way down (what a single-file checkpoint without a config is read
    /// with: the nets are copies of the UNet they were trained on).
    pub fn new(
        unet: UNetConfig,
        conditioning_channels: usize,
        conditioning_embedding_out_channels: Vec<usize>,
        bgr: bool,
        global_pool_conditions: bool,
    ) -> Result<Self> {
        if conditioning_embedding_out_channels.is_empty() {
            return Err(Error::Config(
                "controlnet config: conditioning_embedding_out_channels is empty".into(),
            ));
        }
        Ok(Self {
            unet,
            conditioning_channels,
            conditioning_embedding_out_channels,
            bgr,
            global_pool_conditions,
        })
    }

    /// Pixels per latent the control image is embedded with (must equal the VAE's).
    pub fn scale_factor(&self) -> usize {
        1 << (self.conditioning_embedding_out_channels.len() - 1)
    }
}

/// `AutoencoderTiny` configuration (diffusers `config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TinyVaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub scaling_factor: f64,
}

impl Default for TinyVaeConfig {
    // The defaults of diffusers' `AutoencoderTiny.__init__` (= madebyollin/taesd's config).
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            scaling_factor: 1.0,
        }
    }
}

impl TinyVaeConfig {
    pub fn from_json(json: &Value) -> Result<Self> {
        let what = "tiny VAE";
        let c: Self = parse(json, what)?;
        if c.act_fn != "relu" {
            return Err(unsupported(what, "act_fn", c.act_fn));
        }
        if c.upsample_fn != "nearest" {
            return Err(unsupported(what, "upsample_fn", c.upsample_fn));
        }
        if c.upsampling_scaling_factor != 2 {
            return Err(unsupported(
                what,
                "upsampling_scaling_factor",
                c.upsampling_scaling_factor,
            ));
        }
        if c.encoder_block_out_channels.is_empty()
            || c.encoder_block_out_channels.len() != c.num_encoder_blocks.len()
            || c.decoder_block_out_channels.len() != c.num_decoder_blocks.len()
            || c.decoder_block_out_channels.len() != c.encoder_block_out_channels.len()
        {
            return Err(Error::Config(format!(
                "tiny VAE config: block lists of different lengths ({:?}, {:?}, {:?}, {:?})",
                c.encoder_block_out_channels,
                c.num_encoder_blocks,
                c.decoder_block_out_channels,
                c.num_decoder_blocks
            )));
        }
        Ok(c)
    }

    /// Pixels per latent along each axis: one stride-2 conv per encoder block after the first.
    pub fn scale_factor(&self) -> usize {
        1 << (self.encoder_block_out_channels.len() - 1)
    }
}

/// `AutoencoderKL` configuration (diffusers `vae/config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// The VAE overflows in f16: run it in f32 even when the UNet runs in f16.
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub sample_size: usize,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawVae {
    in_channels: usize,
    out_channels: usize,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    act_fn: String,
    latent_channels: usize,
    norm_num_groups: usize,
    sample_size: usize,
    scaling_factor: f64,
    shift_factor: Option<f64>,
    force_upcast: bool,
    use_quant_conv: bool,
    use_post_quant_conv: bool,
    mid_block_add_attention: bool,
}

impl Default for RawVae {
    // The defaults of diffusers' `AutoencoderKL.__init__`.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    pub fn from_json(json: &Value) -> Result<Self> {
        let r: RawVae = parse(json, "vae")?;
        let n = r.block_out_channels.len();
        if n == 0 || r.down_block_types.len() != n || r.up_block_types.len() != n {
            return Err(Error::Config(format!(
                "vae config: {n} block_out_channels but {} down and {} up block types",
                r.down_block_types.len(),
                r.up_block_types.len()
            )));
        }
        if let Some(t) = r
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(unsupported("vae", "down_block_types", t));
        }
        if let Some(t) = r.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(unsupported("vae", "up_block_types", t));
        }
        if r.act_fn != "silu" {
            return Err(unsupported("vae", "act_fn", r.act_fn));
        }
        if !r.mid_block_add_attention {
            return Err(unsupported("vae", "mid_block_add_attention", "false"));
        }
        Ok(Self {
            in_channels: r.in_channels,
            out_channels: r.out_channels,
            block_out_channels: r.block_out_channels,
            layers_per_block: r.layers_per_block,
            latent_channels: r.latent_channels,
            norm_num_groups: r.norm_num_groups,
            scaling_factor: r.scaling_factor,
            shift_factor: r.shift_factor,
            force_upcast: r.force_upcast,
            use_quant_conv: r.use_quant_conv,
            use_post_quant_conv: r.use_post_quant_conv,
            sample_size: r.sample_size,
        })
    }

    /// Pixels per latent along each axis: 2^(number of down-sampling blocks), as in diffusers'
    /// `vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)`.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Activation of the CLIP MLP (transformers `ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP (SD 1.x).
    QuickGelu,
    /// Exact erf GELU: OpenCLIP (SD 2.x). transformers' "gelu" is the erf form.
    Gelu,
}

/// `CLIPTextModel` configuration (transformers `text_encoder/config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub activation: ClipActivation,
    pub layer_norm_eps: f64,
    pub eos_token_id: u32,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawClip {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
    eos_token_id: u32,
}

impl Default for RawClip {
    // The defaults of transformers' `CLIPTextConfig`.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    pub fn from_json(json: &Value) -> Result<Self> {
        let r: RawClip = parse(json, "text_encoder")?;
        let activation = match r.hidden_act.as_str() {
            "quick_gelu" => ClipActivation::QuickGelu,
            "gelu" => ClipActivation::Gelu,
            other => return Err(unsupported("text_encoder", "hidden_act", other)),
        };
        if r.num_attention_heads == 0 || r.hidden_size % r.num_attention_heads != 0 {
            return Err(Error::Config(format!(
                "text_encoder config: hidden_size {} is not a multiple of num_attention_heads {}",
                r.hidden_size, r.num_attention_heads
            )));
        }
        Ok(Self {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            max_position_embeddings: r.max_position_embeddings,
            activation,
            layer_norm_eps: r.layer_norm_eps,
            eos_token_id: r.eos_token_id,
        })
    }
}

/// One UNet level's motion modules (the up path mirrors the down path).
#[derive(Debug, Clone, PartialEq)]
pub struct MotionLevel {
    pub channels: usize,
    /// Motion modules in the level's down block (one after each resnet/attention pair); the
    /// up block has one more.
    pub modules: usize,
    /// Transformer blocks inside each motion module.
    pub transformer_layers: usize,
    pub heads: usize,
}

/// `MotionAdapter` configuration (diffusers `models/unets/unet_motion_model.py`, the
/// adapter's `config.json`): where the motion modules sit and how big they are.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionAdapterConfig {
    pub levels: Vec<MotionLevel>,
    /// The mid block's motion modules and their transformer depth (v1-5-2 and later), or
    /// none (v1-5: the mid block stays a plain 2D block).
    pub mid: Option<(usize, usize)>,
    pub norm_num_groups: usize,
    /// Frames the position encoding covers: the longest window.
    pub max_seq_length: usize,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawMotionAdapter {
    block_out_channels: Vec<usize>,
    motion_layers_per_block: PerBlock<usize>,
    motion_transformer_layers_per_block: PerBlock<usize>,
    motion_mid_block_layers_per_block: usize,
    motion_transformer_layers_per_mid_block: PerBlock<usize>,
    motion_num_attention_heads: PerBlock<usize>,
    motion_norm_num_groups: usize,
    motion_max_seq_length: usize,
    use_motion_mid_block: bool,
    conv_in_channels: Option<usize>,
}

impl Default for RawMotionAdapter {
    // The defaults of diffusers' `MotionAdapter.__init__`.
    fn default() -> Self {
        Self {
            block_out_channels: vec![320, 640, 1280, 1280],
            motion_layers_per_block: PerBlock::One(2),
            motion_transformer_layers_per_block: PerBlock::One(1),
            motion_mid_block_layers_per_block: 1,
            motion_transformer_layers_per_mid_block: PerBlock::One(1),
            motion_num_attention_heads: PerBlock::One(8),
            motion_norm_num_groups: 32,
            motion_max_seq_length: 32,
            use_motion_mid_block: true,
            conv_in_channels: None,
        }
    }
}

impl MotionAdapterConfig {
    pub fn from_json(json: &Value) -> Result<Self> {
        let what = "motion adapter";
        let r: RawMotionAdapter = parse(json, what)?;
        if let Some(c) = r.conv_in_channels {
            // PIA / SparseCtrl-style adapters replace the UNet's input convolution.
            return Err(unsupported(what, "conv_in_channels", c));
        }
        let n = r.block_out_channels.len();
        let modules = r
            .motion_layers_per_block
            .expand_in(what, n, "motion_layers_per_block")?;
        let depth = r.motion_transformer_layers_per_block.expand_in(
            what,
            n,
            "motion_transformer_layers_per_block",
        )?;
        let heads =
            r.motion_num_attention_heads
                .expand_in(what, n, "motion_num_attention_heads")?;
        let mid_layers = r.motion_mid_block_layers_per_block;
        let mid_depth = r.motion_transformer_layers_per_mid_block.expand_in(
            what,
            mid_layers,
            "motion_transformer_layers_per_mid_block",
        )?;
        if mid_depth.iter().any(|d| *d != mid_depth[0]) {
            return Err(unsupported(
                what,
                "motion_transformer_layers_per_mid_block",
                format!("{mid_depth:?}"),
            ));
        }
        let levels = (0..n)
            .map(|i| MotionLevel {
                channels: r.block_out_channels[i],
                modules: modules[i],
                transformer_layers: depth[i],
                heads: heads[i],
            })
            .collect::<Vec<_>>();
        if let Some(l) = levels
            .iter()
            .find(|l| l.heads == 0 || l.channels % l.heads != 0)
        {
            return Err(Error::Config(format!(
                "{what} config: {} channels do not split into {} heads",
                l.channels, l.heads
            )));
        }
        Ok(Self {
            levels,
            mid: (r.use_motion_mid_block && mid_layers > 0)
                .then(|| (mid_layers, mid_depth.first().copied().unwrap_or(1))),
            norm_num_groups: r.motion_norm_num_groups,
            max_seq_length: r.motion_max_seq_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attention_head_dim_as_int_or_list_and_block_kinds() {
        let c = UNetConfig::from_json(&json!({
            "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": 8, "cross_attention_dim": 32
        }))
        .unwrap();
        assert_eq!(c.blocks.len(), 2);
        assert!(!c.blocks[0].down_cross_attn && !c.blocks[0].up_cross_attn);
        assert!(c.blocks[1].down_cross_attn && c.blocks[1].up_cross_attn);
        assert_eq!(c.blocks[1].heads, 8);
        assert_eq!(c.cross_attention_dim(), 32);

        // SD 2.x: a list of head counts, linear projections.
        let c = UNetConfig::from_json(&json!({
            "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true,
            "cross_attention_dim": 1024
        }))
        .unwrap();
        let heads: Vec<_> = c.blocks.iter().map(|b| b.heads).collect();
        assert_eq!(heads, [5, 10, 20, 20]);
        assert!(c.use_linear_projection);
        assert_eq!(c.blocks[3].out_channels, 1280);
        assert!(!c.blocks[3].down_cross_attn && !c.blocks[3].up_cross_attn);
    }

    #[test]
    fn unsupported_features_are_named() {
        let e = UNetConfig::from_json(&json!({"class_embed_type": "timestep"})).unwrap_err();
        assert!(e.to_string().contains("class_embed_type"), "{e}");
        let e = UNetConfig::from_json(&json!({"attention_head_dim": [8, 8]})).unwrap_err();
        assert!(
            e.to_string().contains("attention_head_dim has 2 entries"),
            "{e}"
        );
        let e = ClipTextConfig::from_json(&json!({"hidden_act": "relu"})).unwrap_err();
        assert!(e.to_string().contains("hidden_act = relu"), "{e}");
    }

    #[test]
    fn vae_scale_factor_follows_the_number_of_blocks() {
        let blocks = |n: usize| {
            json!({"block_out_channels": vec![64; n],
                "down_block_types": vec!["DownEncoderBlock2D"; n],
                "up_block_types": vec!["UpDecoderBlock2D"; n]})
        };
        let four = blocks(4);
        assert_eq!(VaeConfig::from_json(&four).unwrap().scale_factor(), 8);
        assert_eq!(VaeConfig::from_json(&blocks(2)).unwrap().scale_factor(), 2);
    }
}
