//! The GPU memory plan (`--max-vram`, `--offload`): what a run holds on the device at its
//! peak, checked against a budget before the first frame.
//!
//! Weights are counted as they load (exact: [`SdModel::weight_bytes`]); the text encoder is
//! freed after the prompt, so it never adds to the peak. Activations are estimated from the
//! shapes and from how candle runs them on CUDA: a 3×3 convolution is an im2col buffer of
//! nine times its input, a matmul and a transposed copy of the output
//! (`cuda_backend::conv2d` without cuDNN), and group norm works in f32. The UNet keeps every
//! skip connection of its way down until the way up takes it; its widest level's largest
//! step is the first convolution of the last up block (its input is the level's channels
//! plus the level above's) or attention (q/k/v and output in f32, scores in slices of at
//! most 16 MiB); a ControlNet adds its own residuals. The VAE decoder's peak is its last
//! up-sampling, where the second level's channels reach full resolution (in tiles of
//! `sample_size` pixels when it tiles). docs/gpu.md has the budget this gives
//! for SD 2 base, SD 1.5 + AnimateDiff and + ControlNet at 480p and 720p, and what is left
//! to check on a real GPU (CUDA's allocator and cuBLAS workspaces add a few hundred MB,
//! which [`HEADROOM`] keeps free).

use candle_core::DType;

use crate::nets::sd::attention::{AUTO_SLICE_BYTES, FF_BAND_BYTES};
use crate::nets::sd::config::UNetConfig;
use crate::nets::sd::vae::vae_activations;
use crate::sd::model::SdModel;
use crate::{Error, Result};

/// Share of the budget the estimate may use: the rest is for the CUDA context, cuBLAS
/// workspaces and allocator fragmentation, which the estimate does not see.
pub const HEADROOM: f64 = 0.85;

/// What one run holds on the device at its peak.
#[derive(Debug, Clone, PartialEq)]
pub struct VramEstimate {
    /// Weights per component on the device, in bytes.
    pub weights: Vec<(String, u64)>,
    /// Activations of one UNet call (with the ControlNets' residuals).
    pub unet: u64,
    /// Activations of decoding one frame; 0 when the VAE is on the CPU.
    pub vae: u64,
    /// What the run keeps between frames besides the weights: the banks frames attend to
    /// ([`self_attention_values`] per latent).
    pub held: u64,
}

impl VramEstimate {
    pub fn weights_total(&self) -> u64 {
        self.weights.iter().map(|(_, b)| b).sum()
    }

    /// Weights plus the larger of the two phases (the UNet's activations are freed before
    /// the VAE decodes).
    pub fn peak(&self) -> u64 {
        self.weights_total() + self.held + self.unet.max(self.vae)
    }

    /// One line: the peak and what makes it.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(n, b)| format!("{n} {}", gb(*b)))
            .collect();
        let held = match self.held {
            0 => String::new(),
            b => format!(", attention banks {} GB", gb(b)),
        };
        format!(
            "~{} GB at the peak: weights {} GB ({}){held}, UNet step {} GB, VAE decode {} GB",
            gb(self.peak()),
            gb(self.weights_total()),
            parts.join(", "),
            gb(self.unet),
            gb(self.vae)
        )
    }
}

fn gb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e9)
}

/// Activations of one UNet call on `batch` latents of `h`×`w` in `dtype`, plus `controlnets`
/// nets' residuals.
pub fn unet_activations(
    config: &UNetConfig,
    (h, w): (usize, usize),
    batch: usize,
    dtype: DType,
    controlnets: usize,
) -> u64 {
    let s = dtype.size_in_bytes() as u64;
    let b = batch as u64;
    let levels = config.blocks.len();
    let mut skips = 0u64;
    let (mut lh, mut lw) = (h as u64, w as u64);
    // conv_in's output, then per level its resnets' (and transformers') outputs and the
    // down-sampler's (none after the last level).
    skips += config.blocks[0].out_channels as u64 * lh * lw;
    for (i, block) in config.blocks.iter().enumerate() {
        let c = block.out_channels as u64;
        skips += config.layers_per_block as u64 * c * lh * lw;
        if i + 1 < levels {
            lh = lh.div_ceil(2);
            lw = lw.div_ceil(2);
            skips += c * lh * lw;
        }
    }
    let skips = skips * b * s;
    // The widest level: the residual stream (two tensors) and, at its largest, the last up
    // block's first convolution (input, im2col ×9, matmul output and its transposed copy,
    // after a group norm in f32), attention (q, k, v and output in f32 plus a score slice)
    // or a feed-forward band.
    let c0 = config.blocks[0].out_channels as u64;
    let c_in = c0 + config.blocks.get(1).map_or(c0, |b| b.out_channels as u64);
    let n0 = h as u64 * w as u64 * b;
    let stream = 2 * c0 * n0 * s;
    let conv = (10 * c_in + 2 * c0) * n0 * s + 2 * c_in * n0 * 4;
    let attention = 4 * c0 * n0 * 4 + AUTO_SLICE_BYTES as u64;
    let ff = (FF_BAND_BYTES as u64).min(8 * c0 * n0 * s) + 2 * c0 * n0 * s;
    skips * (1 + controlnets as u64) + stream + conv.max(attention).max(ff)
}

/// Values (tokens × channels) that enter the UNet's self-attention layers for one latent of
/// `h`×`w`: all of them, or the decoder's (up blocks) only.
pub fn self_attention_values(
    config: &UNetConfig,
    (h, w): (usize, usize),
    decoder_only: bool,
) -> u64 {
    let per_block = config.layers_per_block as u64;
    let (mut lh, mut lw) = (h as u64, w as u64);
    let mut values = 0u64;
    for (i, block) in config.blocks.iter().enumerate() {
        let layer = lh * lw * (block.out_channels * block.transformer_layers) as u64;
        let down = block.down_cross_attn && !decoder_only;
        values += layer * (down as u64 * per_block + block.up_cross_attn as u64 * (per_block + 1));
        if i + 1 < config.blocks.len() {
            lh = lh.div_ceil(2);
            lw = lw.div_ceil(2);
        }
    }
    // The mid block's transformer, at the last level.
    match config.blocks.last() {
        Some(last) if !decoder_only => {
            values + lh * lw * (last.out_channels * last.transformer_layers) as u64
        }
        _ => values,
    }
}

/// The estimate for `model` rendering `width`×`height` frames with `batch` latents per
/// UNet call (2 for a guidance pair, the window length under AnimateDiff).
pub fn estimate(model: &SdModel, (width, height): (usize, usize), batch: usize) -> VramEstimate {
    let f = model.vae_scale_factor();
    let latent = (height / f, width / f);
    let controlnets = model
        .weight_bytes()
        .iter()
        .filter(|(n, _)| n.starts_with("ControlNet"))
        .count();
    let unet = unet_activations(
        model.unet_config(),
        latent,
        batch,
        model.dtype(),
        controlnets,
    );
    // An offloaded VAE is not among the device's weights, and decodes on the CPU.
    let on_device = model.weight_bytes().iter().any(|(n, _)| n == "VAE");
    let vae = match on_device {
        true => vae_activations(
            model.vae_config(),
            (width, height),
            model.vae_tiled(width, height),
            model.vae_dtype(),
        ),
        false => 0,
    };
    VramEstimate {
        weights: model.weight_bytes().to_vec(),
        unet,
        vae,
        held: 0,
    }
}

/// Checks `estimate` against a budget of `max_vram_gb`; over it, one line that says what
/// the run needs and which flags bring it down (`offloaded`: whether `--offload` is on).
pub fn check(estimate: &VramEstimate, max_vram_gb: f64, offloaded: bool) -> Result<()> {
    let budget = (max_vram_gb * 1e9 * HEADROOM) as u64;
    if estimate.peak() <= budget {
        return Ok(());
    }
    let has = |p: &str| estimate.weights.iter().any(|(n, _)| n.starts_with(p));
    let tries = remedies(
        !offloaded && estimate.vae > estimate.unet,
        has("motion modules"),
        has("ControlNet"),
    );
    Err(Error::OutOfMemory(format!(
        "this run needs {} — more than {:.0} % of --max-vram {max_vram_gb} GB; try {}",
        estimate.describe(),
        HEADROOM * 100.0,
        tries.join(", ")
    )))
}

/// The flags that lower a run's memory, as they apply to it.
pub fn remedies(offload_helps: bool, motion: bool, controlnets: bool) -> Vec<&'static str> {
    let mut tries = Vec::new();
    if offload_helps {
        tries.push("--offload (the VAE on the CPU)");
    }
    tries.push("a lower --max-res");
    if motion {
        tries.push("a shorter --context-length");
    }
    if controlnets {
        tries.push("fewer ControlNets");
    }
    tries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::sd::config::VaeConfig;

    /// SD 2 base's UNet config (the parts that shape the estimate).
    fn sd_unet() -> UNetConfig {
        UNetConfig::from_json(&serde_json::json!({
            "block_out_channels": [320, 640, 1280, 1280],
            "attention_head_dim": [5, 10, 20, 20],
            "cross_attention_dim": 1024,
            "layers_per_block": 2,
        }))
        .unwrap()
    }

    #[test]
    fn activations_grow_with_the_frame_and_the_batch() {
        let c = sd_unet();
        let a480 = unet_activations(&c, (60, 106), 2, DType::F16, 0);
        let a720 = unet_activations(&c, (90, 160), 2, DType::F16, 0);
        assert!(a720 > 2 * a480 && a720 < 3 * a480, "{a480} {a720}");
        let window = unet_activations(&c, (60, 106), 16, DType::F16, 0);
        assert!(window > 6 * a480, "{window}");
        let with_net = unet_activations(&c, (60, 106), 2, DType::F16, 1);
        assert!(with_net > a480);
        // SD 2 base, 848×480, guidance pair in f16: ~34 MB of skips, ~16 MB of stream and
        // the last up block's first convolution (960 channels in): ~360 MB.
        assert!((300e6..600e6).contains(&(a480 as f64)), "{a480}");
    }

    #[test]
    fn tiling_bounds_the_decoder() {
        let v = VaeConfig::from_json(&serde_json::json!({
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "sample_size": 512,
        }))
        .unwrap();
        let whole = vae_activations(&v, (1280, 720), false, DType::F32);
        let tiled = vae_activations(&v, (1280, 720), true, DType::F32);
        assert!(tiled < whole / 2, "{tiled} {whole}");
        // 256 channels × 1280×720 × f32 is 0.94 GB a tensor; the convolution holds 12 of
        // them, its group norm 2.
        assert!((12e9..14e9).contains(&(whole as f64)), "{whole}");
    }

    #[test]
    fn self_attention_layers_are_counted_by_level() {
        // SD 2 base at 848×480 (latents 106×60): 16 self-attention layers (2 down and 3 up at
        // each of the three attention levels, 1 in the mid block).
        let tokens_channels: u64 = [
            (106 * 60 * 320, 5),
            (53 * 30 * 640, 5),
            (27 * 15 * 1280, 5),
            (14 * 8 * 1280, 1),
        ]
        .iter()
        .map(|(tc, layers)| tc * layers)
        .sum();
        assert_eq!(
            self_attention_values(&sd_unet(), (60, 106), false),
            tokens_channels
        );
        let decoder: u64 = [(106 * 60 * 320, 3), (53 * 30 * 640, 3), (27 * 15 * 1280, 3)]
            .iter()
            .map(|(tc, layers)| tc * layers)
            .sum();
        assert_eq!(self_attention_values(&sd_unet(), (60, 106), true), decoder);
    }

    #[test]
    fn over_budget_names_the_flags_that_help() {
        let e = VramEstimate {
            weights: vec![("UNet".into(), 1_730_000_000), ("VAE".into(), 335_000_000)],
            unet: 1_000_000_000,
            vae: 3_000_000_000,
            held: 0,
        };
        assert!(check(&e, 8.0, false).is_ok());
        let msg = check(&e, 4.0, false).unwrap_err().to_string();
        assert!(
            msg.contains("--offload") && msg.contains("--max-res"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        let msg = check(&e, 4.0, true).unwrap_err().to_string();
        assert!(!msg.contains("--offload"), "{msg}");
        // What a CPU run is told (the stylize stage): no GPU flag, the model's own levers.
        assert_eq!(
            remedies(false, true, true),
            [
                "a lower --max-res",
                "a shorter --context-length",
                "fewer ControlNets"
            ]
        );
    }
}
