//! Tensor names of single-file Stable Diffusion checkpoints (the original CompVis /
//! Stability "ldm" layout of `sd-v1-5.ckpt`, `v2-1_512-ema-pruned.safetensors`, ...) mapped
//! to diffusers names, as diffusers' single-file loader does
//! (`loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
//! `convert_open_clip_checkpoint`). Each function renames one stored name into zero or
//! more `(diffusers name, where to read it)` pairs; names of other components map to none.

use crate::weights::TensorRef;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CONTROL: &str = "control_model.";
const CLIP: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";

/// The text encoder family a checkpoint carries, told by its key prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// OpenAI CLIP (SD 1.x): `cond_stage_model.transformer.*`.
    Clip,
    /// OpenCLIP (SD 2.x): `cond_stage_model.model.*`, fused q/k/v.
    OpenClip,
}

pub fn text_encoder_kind(names: &[String]) -> Option<TextEncoderKind> {
    if names.iter().any(|n| n.starts_with(OPEN_CLIP)) {
        Some(TextEncoderKind::OpenClip)
    } else if names.iter().any(|n| n.starts_with(CLIP)) {
        Some(TextEncoderKind::Clip)
    } else {
        None
    }
}

fn one(name: String, key: &str) -> Vec<(String, TensorRef)> {
    vec![(name, TensorRef::key(key))]
}

/// `(index, rest)` from `"12.rest"`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

fn unet_resnet(rest: &str) -> String {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    for (from, to) in MAP {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

/// UNet: `model.diffusion_model.*` with `layers_per_block` resnets per level.
pub fn unet_name(key: &str, layers_per_block: usize) -> Vec<(String, TensorRef)> {
    match key
        .strip_prefix(UNET)
        .and_then(|k| unet_body_name(k, layers_per_block))
    {
        Some(name) => one(name, key),
        None => vec![],
    }
}

/// The diffusers name of a UNet tensor given without its prefix.
fn unet_body_name(k: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    let name = if let Some(r) = k.strip_prefix("time_embed.0.") {
        format!("time_embedding.linear_1.{r}")
    } else if let Some(r) = k.strip_prefix("time_embed.2.") {
        format!("time_embedding.linear_2.{r}")
    } else if let Some(r) = k.strip_prefix("input_blocks.0.0.") {
        format!("conv_in.{r}")
    } else if let Some(r) = k.strip_prefix("out.0.") {
        format!("conv_norm_out.{r}")
    } else if let Some(r) = k.strip_prefix("out.2.") {
        format!("conv_out.{r}")
    } else if let Some((i, rest)) = k.strip_prefix("input_blocks.").and_then(split_index) {
        let (block, layer) = ((i - 1) / per, (i - 1) % per);
        match split_index(rest) {
            Some((0, r)) if layer < layers_per_block => {
                format!("down_blocks.{block}.resnets.{layer}.{}", unet_resnet(r))
            }
            Some((1, r)) => format!("down_blocks.{block}.attentions.{layer}.{r}"),
            Some((0, r)) => match r.strip_prefix("op.") {
                Some(t) => format!("down_blocks.{block}.downsamplers.0.conv.{t}"),
                None => return None,
            },
            _ => return None,
        }
    } else if let Some((i, rest)) = k.strip_prefix("middle_block.").and_then(split_index) {
        match i {
            0 => format!("mid_block.resnets.0.{}", unet_resnet(rest)),
            1 => format!("mid_block.attentions.0.{rest}"),
            2 => format!("mid_block.resnets.1.{}", unet_resnet(rest)),
            _ => return None,
        }
    } else if let Some((i, rest)) = k.strip_prefix("output_blocks.").and_then(split_index) {
        let (block, layer) = (i / per, i % per);
        match split_index(rest) {
            Some((0, r)) => format!("up_blocks.{block}.resnets.{layer}.{}", unet_resnet(r)),
            // The up-sampler follows the resnet directly in blocks without attention.
            Some((1 | 2, r)) if r.starts_with("conv.") => {
                format!("up_blocks.{block}.upsamplers.0.{r}")
            }
            Some((1, r)) => format!("up_blocks.{block}.attentions.{layer}.{r}"),
            _ => return None,
        }
    } else {
        return None;
    };
    Some(name)
}

/// Where a single-file ControlNet keeps its tensors: `control_model.*` in the original
/// ControlNet 1.0 files (which may carry a whole SD model beside it), no prefix in the
/// standalone files (`control_v11p_sd15_canny.pth`, `control_v11p_sd21_*.safetensors`).
/// `None`: not a ControlNet.
pub fn controlnet_prefix(names: &[String]) -> Option<&'static str> {
    if names.iter().any(|n| n.starts_with(CONTROL)) {
        Some(CONTROL)
    } else if names.iter().any(|n| n.starts_with("input_hint_block.")) {
        Some("")
    } else {
        None
    }
}

/// Indices of the convolutions of the hint block (`input_hint_block.{i}.weight`; the odd
/// indices are SiLUs), in order.
pub fn controlnet_hint_convs(names: &[String], prefix: &str) -> Vec<usize> {
    let mut convs: Vec<usize> = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .strip_prefix("input_hint_block.")?
                .strip_suffix(".weight")?
                .parse()
                .ok()
        })
        .collect();
    convs.sort_unstable();
    convs
}

/// ControlNet (diffusers `convert_controlnet_checkpoint`): the UNet's way down under
/// `prefix`, `input_hint_block` → `controlnet_cond_embedding` (first conv `conv_in`, last
/// `conv_out`, the ones between `blocks`; `hint_convs` from [`controlnet_hint_convs`]),
/// `zero_convs.{i}.0` → `controlnet_down_blocks.{i}`, `middle_block_out.0` → `controlnet_mid_block`.
pub fn controlnet_name(
    key: &str,
    prefix: &str,
    layers_per_block: usize,
    hint_convs: &[usize],
) -> Vec<(String, TensorRef)> {
    let Some(k) = key.strip_prefix(prefix) else {
        return vec![];
    };
    let name = if let Some((i, r)) = k.strip_prefix("input_hint_block.").and_then(split_index) {
        match hint_convs.iter().position(|&h| h == i) {
            Some(0) => format!("controlnet_cond_embedding.conv_in.{r}"),
            Some(p) if p + 1 == hint_convs.len() => {
                format!("controlnet_cond_embedding.conv_out.{r}")
            }
            Some(p) => format!("controlnet_cond_embedding.blocks.{}.{r}", p - 1),
            None => return vec![],
        }
    } else if let Some((i, r)) = k.strip_prefix("zero_convs.").and_then(split_index) {
        match r.strip_prefix("0.") {
            Some(t) => format!("controlnet_down_blocks.{i}.{t}"),
            None => return vec![],
        }
    } else if let Some(r) = k.strip_prefix("middle_block_out.0.") {
        format!("controlnet_mid_block.{r}")
    } else {
        match unet_body_name(k, layers_per_block) {
            Some(name) => name,
            None => return vec![],
        }
    };
    one(name, key)
}

/// VAE: `first_stage_model.*` with `n_blocks` resolution levels.
pub fn vae_name(key: &str, n_blocks: usize) -> Vec<(String, TensorRef)> {
    let Some(k) = key.strip_prefix(VAE) else {
        return vec![];
    };
    let resnet = |r: &str| match r.strip_prefix("nin_shortcut.") {
        Some(t) => format!("conv_shortcut.{t}"),
        None => r.to_string(),
    };
    let (part, rest) = match k.split_once('.') {
        Some((p @ ("encoder" | "decoder"), r)) => (p, r),
        _ if k.starts_with("quant_conv.") || k.starts_with("post_quant_conv.") => {
            return one(k.to_string(), key)
        }
        _ => return vec![],
    };
    let mut squeeze = false;
    let name = if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(r) = rest.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        let (layer, tail) = r.split_once('.').unwrap_or((r, ""));
        let to = match layer {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return vec![],
        };
        // 1×1 convolutions in the original, linears in diffusers.
        squeeze = to != "group_norm";
        format!("mid_block.attentions.0.{to}.{tail}")
    } else if let Some((i, r)) = rest.strip_prefix("down.").and_then(split_index) {
        if let Some(r) = r.strip_prefix("block.") {
            let (j, t) = match split_index(r) {
                Some(x) => x,
                None => return vec![],
            };
            format!("down_blocks.{i}.resnets.{j}.{}", resnet(t))
        } else if let Some(t) = r.strip_prefix("downsample.conv.") {
            format!("down_blocks.{i}.downsamplers.0.conv.{t}")
        } else {
            return vec![];
        }
    } else if let Some((i, r)) = rest.strip_prefix("up.").and_then(split_index) {
        // The original numbers decoder levels from the highest resolution up.
        let Some(b) = n_blocks.checked_sub(1 + i) else {
            return vec![];
        };
        if let Some(r) = r.strip_prefix("block.") {
            let (j, t) = match split_index(r) {
                Some(x) => x,
                None => return vec![],
            };
            format!("up_blocks.{b}.resnets.{j}.{}", resnet(t))
        } else if let Some(t) = r.strip_prefix("upsample.conv.") {
            format!("up_blocks.{b}.upsamplers.0.conv.{t}")
        } else {
            return vec![];
        }
    } else {
        return vec![];
    };
    vec![(
        format!("{part}.{name}"),
        TensorRef {
            key: key.to_string(),
            rows: None,
            squeeze,
        },
    )]
}

/// Text encoder: OpenAI CLIP (`cond_stage_model.transformer.*`, already transformers'
/// names) or OpenCLIP (`cond_stage_model.model.*`, fused attention projections).
pub fn text_encoder_name(key: &str) -> Vec<(String, TensorRef)> {
    if let Some(k) = key.strip_prefix(CLIP) {
        if k.ends_with("position_ids") {
            return vec![];
        }
        let name = match k.starts_with("text_model.") {
            true => k.to_string(),
            false => format!("text_model.{k}"),
        };
        return one(name, key);
    }
    let Some(k) = key.strip_prefix(OPEN_CLIP) else {
        return vec![];
    };
    let name = match k {
        "token_embedding.weight" => "text_model.embeddings.token_embedding.weight".to_string(),
        "positional_embedding" => "text_model.embeddings.position_embedding.weight".to_string(),
        _ => {
            if let Some(r) = k.strip_prefix("ln_final.") {
                format!("text_model.final_layer_norm.{r}")
            } else if let Some((i, r)) = k
                .strip_prefix("transformer.resblocks.")
                .and_then(split_index)
            {
                let layer = format!("text_model.encoder.layers.{i}");
                if let Some(kind) = r.strip_prefix("attn.in_proj_") {
                    return ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .enumerate()
                        .map(|(part, proj)| {
                            let r = TensorRef {
                                key: key.to_string(),
                                rows: Some((part, 3)),
                                squeeze: false,
                            };
                            (format!("{layer}.self_attn.{proj}.{kind}"), r)
                        })
                        .collect();
                }
                const MAP: [(&str, &str); 5] = [
                    ("ln_1.", "layer_norm1."),
                    ("ln_2.", "layer_norm2."),
                    ("attn.out_proj.", "self_attn.out_proj."),
                    ("mlp.c_fc.", "mlp.fc1."),
                    ("mlp.c_proj.", "mlp.fc2."),
                ];
                match MAP
                    .iter()
                    .find_map(|(from, to)| Some(format!("{to}{}", r.strip_prefix(from)?)))
                {
                    Some(n) => format!("{layer}.{n}"),
                    None => return vec![],
                }
            } else {
                return vec![];
            }
        }
    };
    one(name, key)
}

/// An original AnimateDiff motion-module name (`mm_sd_v15_v2.ckpt`:
/// `down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight`)
/// as diffusers' `scripts/convert_animatediff_motion_module_to_diffusers.py` renames it; the
/// stored position encodings (`pos_encoder.pe`) map to none: they are recomputed.
pub fn motion_module_name(key: &str) -> Vec<(String, TensorRef)> {
    if key.contains(".pos_encoder.") {
        return vec![];
    }
    const MAP: [(&str, &str); 6] = [
        (".norms.0", ".norm1"),
        (".norms.1", ".norm2"),
        (".ff_norm", ".norm3"),
        (".attention_blocks.0", ".attn1"),
        (".attention_blocks.1", ".attn2"),
        (".temporal_transformer", ""),
    ];
    let name = MAP
        .iter()
        .fold(key.to_string(), |n, (from, to)| n.replace(from, to));
    one(name, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<(String, TensorRef)>) -> Vec<String> {
        v.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn unet_keys_follow_diffusers_conversion() {
        let m = |k: &str| names(unet_name(&format!("{UNET}{k}"), 2));
        assert_eq!(m("input_blocks.0.0.weight"), ["conv_in.weight"]);
        assert_eq!(
            m("input_blocks.1.0.in_layers.2.weight"),
            ["down_blocks.0.resnets.0.conv1.weight"]
        );
        assert_eq!(
            m("input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"),
            ["down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"]
        );
        assert_eq!(
            m("input_blocks.3.0.op.bias"),
            ["down_blocks.0.downsamplers.0.conv.bias"]
        );
        assert_eq!(
            m("middle_block.2.skip_connection.weight"),
            ["mid_block.resnets.1.conv_shortcut.weight"]
        );
        assert_eq!(
            m("output_blocks.2.1.conv.weight"),
            ["up_blocks.0.upsamplers.0.conv.weight"]
        );
        assert_eq!(
            m("output_blocks.5.2.conv.bias"),
            ["up_blocks.1.upsamplers.0.conv.bias"]
        );
        assert_eq!(
            m("output_blocks.4.1.proj_in.weight"),
            ["up_blocks.1.attentions.1.proj_in.weight"]
        );
        assert_eq!(m("time_embed.2.bias"), ["time_embedding.linear_2.bias"]);
        assert!(unet_name("model_ema.decay", 2).is_empty());
    }

    #[test]
    fn vae_levels_are_reversed_in_the_decoder() {
        let m = |k: &str| names(vae_name(&format!("{VAE}{k}"), 4));
        assert_eq!(
            m("decoder.up.3.block.0.nin_shortcut.weight"),
            ["decoder.up_blocks.0.resnets.0.conv_shortcut.weight"]
        );
        assert_eq!(
            m("decoder.up.1.upsample.conv.bias"),
            ["decoder.up_blocks.2.upsamplers.0.conv.bias"]
        );
        assert_eq!(
            m("encoder.down.0.downsample.conv.weight"),
            ["encoder.down_blocks.0.downsamplers.0.conv.weight"]
        );
        let attn = vae_name(&format!("{VAE}encoder.mid.attn_1.q.weight"), 4);
        assert_eq!(attn[0].0, "encoder.mid_block.attentions.0.to_q.weight");
        assert!(attn[0].1.squeeze);
    }

    #[test]
    fn open_clip_fused_projections_are_split() {
        let v = text_encoder_name(&format!(
            "{OPEN_CLIP}transformer.resblocks.3.attn.in_proj_weight"
        ));
        let got: Vec<_> = v.iter().map(|(n, r)| (n.as_str(), r.rows)).collect();
        assert_eq!(
            got,
            [
                (
                    "text_model.encoder.layers.3.self_attn.q_proj.weight",
                    Some((0, 3))
                ),
                (
                    "text_model.encoder.layers.3.self_attn.k_proj.weight",
                    Some((1, 3))
                ),
                (
                    "text_model.encoder.layers.3.self_attn.v_proj.weight",
                    Some((2, 3))
                ),
            ]
        );
        assert_eq!(
            names(text_encoder_name(&format!(
                "{OPEN_CLIP}positional_embedding"
            ))),
            ["text_model.embeddings.position_embedding.weight"]
        );
        assert!(text_encoder_name(&format!("{OPEN_CLIP}text_projection")).is_empty());
    }
}
