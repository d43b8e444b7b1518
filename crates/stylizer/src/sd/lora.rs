//! LoRA ("LoRA: Low-Rank Adaptation of Large Language Models", Hu et al. 2021, arXiv:2106.09685):
//! a weight `W` of the UNet or the text encoder becomes `W + s · up · down`, fused once when the
//! model loads, so a LoRA costs nothing per step. Several LoRAs add up.
//!
//! Reads the two common file layouts as diffusers does (`loaders/lora_pipeline.py`,
//! `loaders/lora_conversion_utils.py`): kohya / A1111 (`lora_unet_<module>.lora_down.weight`,
//! `.lora_up.weight`, `.alpha`; `lora_te_…` for the text encoder; module names with `_` for
//! `.`) and diffusers / PEFT (`unet.<module>.lora_A.weight` / `lora_B.weight`, optional
//! `.alpha`). Scale = alpha / rank × the user's scale (no alpha: alpha = rank). A 3×3 conv
//! LoRA (LCM-LoRA has them) is `ΔW[o,i,kh,kw] = Σ_r up[o,r] · down[r,i,kh,kw]`. kohya module
//! names are matched against the model's own weight names (each with `.` → `_`), not rewritten
//! by rules, so every module the model has is found and no other.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::weights::{HubOptions, ModelSource, RepoFiles, TensorStore, Transform};
use crate::{Error, Result};

/// The file diffusers' `save_lora_weights` writes, and LoRA repositories (LCM-LoRA) hold.
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";

/// The weight file of a LoRA: the file itself, or [`LORA_FILE`] in a folder or hub repository
/// (downloaded unless offline).
pub fn locate(source: &ModelSource, hub: &HubOptions) -> Result<PathBuf> {
    match source {
        ModelSource::File(path) => Ok(path.clone()),
        ModelSource::Folder(dir) => RepoFiles::folder(dir).get(LORA_FILE),
        ModelSource::Hub(id) => RepoFiles::hub(id, hub)?.get(LORA_FILE),
    }
}

/// One resolved `--lora …[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub path: PathBuf,
    pub scale: f64,
}

impl LoraFile {
    /// The LoRA file of `source` (see [`locate`]) at `scale`.
    pub fn locate(source: &ModelSource, scale: f64, hub: &HubOptions) -> Result<Self> {
        Ok(Self {
            path: locate(source, hub)?,
            scale,
        })
    }
}

/// One low-rank update of one weight: `scale · up · down`.
#[derive(Debug, Clone)]
pub struct LowRank {
    up: Tensor,
    down: Tensor,
    scale: f64,
    /// Where it came from, for errors.
    origin: String,
}

impl LowRank {
    /// The update in the shape of the weight it applies to (f32).
    pub fn delta(&self, shape: &Shape) -> Result<Tensor> {
        let rank = self.down.dim(0)?;
        let up = self.up.to_dtype(DType::F32)?.flatten_from(1)?;
        let down = self.down.to_dtype(DType::F32)?.flatten_from(1)?;
        let dims = shape.dims();
        if up.dim(1)? != rank
            || up.dim(0)? != dims[0]
            || down.elem_count() * dims[0] != shape.elem_count() * rank
        {
            return Err(Error::Weights(format!(
                "{}: up {:?} × down {:?} does not fit the model's weight {dims:?}",
                self.origin,
                self.up.dims(),
                self.down.dims()
            )));
        }
        Ok((up.matmul(&down)? * self.scale)?.reshape(shape)?)
    }
}

/// The model component a LoRA key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Unet,
    TextEncoder,
}

/// The component, the module name as stored, and whether it is a kohya name (`_` for `.`),
/// for the down-projection key `key`; `None` for keys that are not down-projections.
fn parse_key(key: &str) -> Option<(Option<Component>, &str, bool)> {
    if let Some(m) = key.strip_suffix(".lora_down.weight") {
        let (component, body) = if let Some(b) = m.strip_prefix("lora_unet_") {
            (Some(Component::Unet), b)
        } else if let Some(b) = m.strip_prefix("lora_te_").or(m.strip_prefix("lora_te1_")) {
            (Some(Component::TextEncoder), b)
        } else {
            (None, m)
        };
        return Some((component, body, true));
    }
    let m = key.strip_suffix(".lora_A.weight")?;
    let (component, body) = if let Some(b) = m.strip_prefix("unet.") {
        (Some(Component::Unet), b)
    } else if let Some(b) = m.strip_prefix("text_encoder.") {
        (Some(Component::TextEncoder), b)
    } else {
        (None, m)
    };
    Some((component, body, false))
}

/// A weight name as a lookup key: without `.weight` and the text encoder's optional
/// `text_model.` level (transformers ≥ 5.6 saves without it, checkpoints have it), with `_`
/// for `.` in kohya form.
fn module_key(name: &str, kohya: bool) -> String {
    let m = name.strip_suffix(".weight").unwrap_or(name);
    let m = m.strip_prefix("text_model.").unwrap_or(m);
    let m = m.strip_prefix("text_model_").unwrap_or(m);
    match kohya {
        true => m.replace('.', "_"),
        false => m.to_string(),
    }
}

/// The updates every LoRA of `loras` makes to `component`, by the component's weight names
/// (`names`, as its tensor store has them). A LoRA naming modules the model lacks is refused.
pub fn updates(
    loras: &[LoraFile],
    component: Component,
    names: &[String],
) -> Result<HashMap<String, Vec<LowRank>>> {
    let weights: Vec<&String> = names.iter().filter(|n| n.ends_with(".weight")).collect();
    let lookup = |kohya: bool| -> HashMap<String, &String> {
        weights.iter().map(|n| (module_key(n, kohya), *n)).collect()
    };
    let (by_kohya, by_peft) = (lookup(true), lookup(false));
    let mut out: HashMap<String, Vec<LowRank>> = HashMap::new();
    for lora in loras {
        let file = lora.path.display().to_string();
        let store = TensorStore::open_plain(std::slice::from_ref(&lora.path), "LoRA")?;
        // Sorted: the names an error lists are the same from run to run.
        let mut stored = store.names();
        stored.sort_unstable();
        let mut found = 0;
        let mut missing = Vec::new();
        for key in &stored {
            let Some((owner, body, kohya)) = parse_key(key) else {
                continue;
            };
            found += 1;
            let Some(owner) = owner else {
                return Err(Error::Weights(format!(
                    "{file}: {key} belongs to no component this model has (SD 1.x/2.x LoRAs name lora_unet_, lora_te_, unet. or text_encoder.)"
                )));
            };
            if owner != component {
                continue;
            }
            let table = if kohya { &by_kohya } else { &by_peft };
            let Some(&name) = table.get(&module_key(body, kohya)) else {
                missing.push(body.to_string());
                continue;
            };
            let (up_key, alpha_key) = match kohya {
                true => (
                    key.replace(".lora_down.weight", ".lora_up.weight"),
                    key.replace(".lora_down.weight", ".alpha"),
                ),
                false => (
                    key.replace(".lora_A.weight", ".lora_B.weight"),
                    key.replace(".lora_A.weight", ".alpha"),
                ),
            };
            let down = store.tensor(key)?;
            let up = store
                .tensor(&up_key)
                .map_err(|_| Error::Weights(format!("{file}: {key} has no {up_key}")))?;
            let rank = down.dim(0)? as f64;
            let alpha = match store.contains_tensor(&alpha_key) {
                true => store
                    .tensor(&alpha_key)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .first()
                    .copied()
                    .map_or(rank, f64::from),
                false => rank,
            };
            out.entry(name.clone()).or_default().push(LowRank {
                up,
                down,
                scale: lora.scale * alpha / rank,
                origin: format!("{file}: {key}"),
            });
        }
        if found == 0 {
            return Err(Error::Weights(format!(
                "{file}: no LoRA tensors (lora_down/lora_up or lora_A/lora_B weights)"
            )));
        }
        if !missing.is_empty() {
            return Err(Error::Weights(format!(
                "{file}: names {} module(s) the model's {} lacks ({}{}): a LoRA for another model?",
                missing.len(),
                match component {
                    Component::Unet => "UNet",
                    Component::TextEncoder => "text encoder",
                },
                missing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 3 { ", …" } else { "" }
            )));
        }
    }
    Ok(out)
}

/// `--lora FILE|DIR|ID[:SCALE]`: a LoRA and its scale (1 when not given).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraArg {
    pub source: String,
    pub scale: f64,
}

impl std::str::FromStr for LoraArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let whole = || LoraArg {
            source: s.to_string(),
            scale: 1.0,
        };
        match s.rsplit_once(':') {
            Some((source, scale)) if !source.is_empty() => match scale.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(LoraArg {
                    source: source.to_string(),
                    scale: v,
                }),
                Ok(_) => Err(Error::Value(format!(
                    "LoRA scale `{scale}` is not a finite number"
                ))),
                // Not a number: part of the name (a Windows drive, say).
                Err(_) => Ok(whole()),
            },
            _ => Ok(whole()),
        }
    }
}

/// The weight store's transform that fuses `updates` into the weights they name as they are
/// read ([`TensorStore::with_transform`]).
pub fn fused(updates: HashMap<String, Vec<LowRank>>) -> Transform {
    Box::new(move |name, t| match updates.get(name) {
        Some(u) => apply(&t, u),
        None => Ok(t),
    })
}

/// `weight` (as stored, any dtype) with its updates added, in f32 on the CPU.
pub fn apply(weight: &Tensor, updates: &[LowRank]) -> Result<Tensor> {
    let mut w = weight.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    for u in updates {
        let delta = u.delta(w.shape())?;
        w = (w + delta)?;
    }
    Ok(w)
}
