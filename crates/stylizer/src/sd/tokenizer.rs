//! The CLIP tokenizer as Stable Diffusion pipelines use it: byte-level BPE with a `</w>`
//! end-of-word suffix, `<|startoftext|>` … `<|endoftext|>` around the prompt, truncated and
//! padded to `model_max_length` (77) with the model's own pad token (`<|endoftext|>` for SD 1.x,
//! `!` for SD 2.x), as `tokenizer(prompt, padding="max_length", truncation=True)` does in
//! diffusers' `encode_prompt`.
//!
//! Reads `tokenizer/tokenizer.json` when the model has one; otherwise builds the same
//! tokenizer from `vocab.json` + `merges.txt` the way transformers' `CLIPConverter`
//! (`convert_slow_tokenizer.py`) does, since the SD repositories on the hub ship only those.

use std::path::Path;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::weights::read_json;
use crate::{Error, Result};

/// Tokenizer plus the special ids and length the pipeline pads to.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

/// A special token in `tokenizer_config.json` / `special_tokens_map.json`: either the string
/// or an `AddedToken` object with a `content` field.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer folder of a diffusers pipeline. `max_positions` is the text
    /// encoder's `max_position_embeddings`, the bound when the config's length is unset.
    pub fn from_dir(dir: &Path, max_positions: usize) -> Result<Self> {
        let mut special = Value::Object(Default::default());
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if path.exists() {
                if let (Value::Object(all), Value::Object(more)) = (&mut special, read_json(&path)?)
                {
                    all.extend(more);
                }
            }
        }
        let get = |key: &str, default: &str| {
            special
                .get(key)
                .and_then(token_text)
                .unwrap_or_else(|| default.to_string())
        };
        let (bos, eos) = (
            get("bos_token", "<|startoftext|>"),
            get("eos_token", "<|endoftext|>"),
        );
        let unk = get("unk_token", "<|endoftext|>");
        let pad = get("pad_token", &eos);
        let max_len = special
            .get("model_max_length")
            .and_then(Value::as_f64)
            .map_or(max_positions, |m| (m as usize).min(max_positions));

        let json_path = dir.join("tokenizer.json");
        let tokenizer = if json_path.exists() {
            Tokenizer::from_file(&json_path)
                .map_err(|e| Error::Weights(format!("{}: {e}", json_path.display())))?
        } else {
            let spec = Self::clip_tokenizer_json(dir, &[&bos, &eos, &unk, &pad], &bos, &eos, &unk)?;
            spec.parse::<Tokenizer>()
                .map_err(|e| Error::Weights(format!("{}: {e}", dir.display())))?
        };
        let id = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                Error::Weights(format!(
                    "{}: token {t:?} is not in the vocabulary",
                    dir.display()
                ))
            })
        };
        Ok(Self {
            bos: id(&bos)?,
            eos: id(&eos)?,
            pad: id(&pad)?,
            max_len,
            tokenizer,
        })
    }

    /// The `tokenizer.json` that transformers' `CLIPConverter` makes from the slow files.
    fn clip_tokenizer_json(
        dir: &Path,
        specials: &[&String],
        bos: &str,
        eos: &str,
        unk: &str,
    ) -> Result<String> {
        let vocab = read_json(&dir.join("vocab.json"))?;
        let merges_path = dir.join("merges.txt");
        let merges_text = std::fs::read_to_string(&merges_path)
            .map_err(|e| Error::io(format!("reading {}", merges_path.display()), e))?;
        let merges: Vec<&str> = merges_text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .collect();
        let id_of = |t: &str| vocab.get(t).and_then(Value::as_u64);
        let mut added = Vec::new();
        for t in specials {
            let Some(id) = id_of(t) else {
                return Err(Error::Weights(format!(
                    "{}: special token {t:?} is not in vocab.json",
                    dir.display()
                )));
            };
            if !added.iter().any(|a: &Value| a["content"] == t.as_str()) {
                added.push(
                    json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}),
                );
            }
        }
        let spec = json!({
            "version": "1.0",
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex":
                    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "post_processor": {"type": "RobertaProcessing", "sep": [eos, id_of(eos)], "cls": [bos, id_of(bos)],
                "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
                "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Ok(spec.to_string())
    }

    /// Token ids of `text`: start token, at most `max_len - 2` text tokens, end token, then
    /// pad tokens up to `max_len`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Model(format!("tokenizing {text:?}: {e}")))?;
        let body = enc.get_ids();
        let body = &body[..body.len().min(self.max_len - 2)];
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(body);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Tokens it can produce, added tokens included: the text encoder's embedding table must
    /// hold them all.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}
