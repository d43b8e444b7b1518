//! Where img2img's random numbers come from.
//!
//! Real runs draw from [`SeededNoise`]: the same seed gives the same noise on every machine,
//! run and thread count, and by default the same noise for every frame (which already removes
//! much of the flicker between frames). Tests replay the draws a diffusers run recorded
//! ([`ReplayNoise`]), since torch's generator cannot be reproduced outside torch. The same
//! holds for the order StreamV2V's feature bank merges tokens in ([`SeededMerges`],
//! [`ReplayBank`]).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::nets::sd::feature_bank::{BankAt, BankDraws, Choice};
use crate::{Error, Result};

/// One random draw of an img2img run, in the order the run asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseDraw {
    /// Sampling the VAE posterior of the encoded frame.
    Posterior,
    /// The noise added to the encoded frame at the first timestep.
    Start,
    /// Fresh noise for step `i` (counted from 0 among the steps that run) of an ancestral sampler.
    Step(usize),
    /// Sampling the VAE posterior of Rerender-A-Video's pixel-fused image.
    Blend,
    /// Sampling the VAE posterior of that image decoded again (its fidelity compensation).
    BlendAgain,
    /// The fresh noise Rerender-A-Video's pixel-aware fusion noises the fused latents with at
    /// step `i`.
    Mask(usize),
}

impl NoiseDraw {
    /// The key diffusers goldens store this draw under (`tools/reference/golden_sd.py`).
    pub fn key(self) -> String {
        match self {
            NoiseDraw::Posterior => "noise_vae".into(),
            NoiseDraw::Start => "noise_add".into(),
            NoiseDraw::Step(i) => format!("step{i}.noise"),
            NoiseDraw::Blend => "noise_blend".into(),
            NoiseDraw::BlendAgain => "noise_blend_rec".into(),
            NoiseDraw::Mask(i) => format!("mask{i}.noise"),
        }
    }
}

/// Supplies standard normal noise to the sampling loop.
pub trait NoiseSource: Send {
    /// N(0, 1) noise of `shape`, f32, on `device`.
    fn noise(&mut self, draw: NoiseDraw, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// Seeded noise. Each draw has its own stream, derived from (seed, stream, draw), so a draw
/// does not depend on how many numbers other draws took, nor on threads.
///
/// The generator is SplitMix64 with a Box–Muller transform, written out here so that a seed
/// keeps producing the same video whatever version of a random-number crate is in use.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
    stream: u64,
}

impl SeededNoise {
    /// The same noise for every frame: the default for video.
    pub fn new(seed: u64) -> Self {
        Self { seed, stream: 0 }
    }

    /// Independent noise per `stream`, e.g. the frame index for noise that changes every frame.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        Self { seed, stream }
    }
}

/// SplitMix64's output function (Steele, Lea & Flood 2014).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// `n` standard normal values from the stream `key`.
pub(crate) fn normals(key: u64, n: usize) -> Vec<f32> {
    let mut state = key;
    let mut uniform = || {
        state = state.wrapping_add(GOLDEN_GAMMA);
        // 53 random bits → (0, 1]; never 0, so the logarithm below is finite.
        ((mix64(state) >> 11) + 1) as f64 / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        out.push((r * c) as f32);
        out.push((r * s) as f32);
    }
    out.truncate(n);
    out
}

impl SeededNoise {
    /// `n` N(0, 1) values of `draw`.
    pub fn draws(&self, draw: NoiseDraw, n: usize) -> Vec<f32> {
        let tag = match draw {
            NoiseDraw::Posterior => 0,
            NoiseDraw::Start => 1,
            NoiseDraw::Step(i) => 2 + i as u64,
            // Far above any step count, so that no two draws share a stream.
            NoiseDraw::Blend => 1 << 32,
            NoiseDraw::BlendAgain => (1 << 32) + 1,
            NoiseDraw::Mask(i) => (1 << 33) + i as u64,
        };
        normals(mix64(mix64(mix64(self.seed) ^ self.stream) ^ tag), n)
    }
}

impl NoiseSource for SeededNoise {
    fn noise(&mut self, draw: NoiseDraw, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.draws(draw, n), shape, device)?)
    }
}

/// StreamV2V's bank merges in a seeded random order: per (seed, frame, step, layer, row),
/// independent of every other draw.
#[derive(Debug, Clone)]
pub struct SeededMerges {
    seed: u64,
}

impl SeededMerges {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

impl BankDraws for SeededMerges {
    fn order(&mut self, at: BankAt, rows: usize, tokens: usize) -> Result<Vec<Vec<u32>>> {
        let base = mix64(mix64(mix64(self.seed ^ MERGE_STREAM) ^ at.frame) ^ at.step as u64);
        Ok((0..rows as u64)
            .map(|row| {
                let key = mix64(mix64(base ^ at.layer as u64) ^ row);
                // Sorting by a random key, as the reference sorts uniform draws.
                let mut order: Vec<(u64, u32)> = (0..tokens as u32)
                    .map(|i| {
                        (
                            mix64(key.wrapping_add(GOLDEN_GAMMA.wrapping_mul(i as u64 + 1))),
                            i,
                        )
                    })
                    .collect();
                order.sort_unstable();
                order.into_iter().map(|(_, i)| i).collect()
            })
            .collect())
    }
}

/// Keeps the merge draws apart from the noise's streams.
const MERGE_STREAM: u64 = 0x5354_5245_414d; // "STREAM"

/// The bank draws and choices a reference run recorded (`tools/reference/golden_stream.py`):
/// merge orders `merge.f{frame}.s{step}.l{layer}` `[rows, tokens]`, and the reference's
/// choices `into.…` and `nearest.…` ([`Choice`]).
pub struct ReplayBank {
    tensors: HashMap<String, Tensor>,
    used: BTreeSet<String>,
}

impl ReplayBank {
    /// The orders among `tensors` under `prefix` (other keys are ignored).
    pub fn new(tensors: &HashMap<String, Tensor>, prefix: &str) -> Self {
        let tensors = tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t.clone())))
            .collect();
        Self {
            tensors,
            used: BTreeSet::new(),
        }
    }

    /// `what` at `at`: `merge`, `into` or `nearest`.
    pub fn key(what: &str, at: BankAt) -> String {
        format!("{what}.f{}.s{}.l{}", at.frame, at.step, at.layer)
    }

    /// Recorded draws and choices no run asked for: a run that merged or injected elsewhere
    /// than the reference.
    pub fn unused(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| {
                ["merge.", "into.", "nearest."]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// The rows recorded under `key`, if any.
    fn rows(&mut self, key: String) -> Result<Option<Vec<Vec<i64>>>> {
        let Some(t) = self.tensors.get(&key) else {
            return Ok(None);
        };
        let rows = t.to_dtype(DType::I64)?.to_vec2()?;
        self.used.insert(key);
        Ok(Some(rows))
    }
}

impl BankDraws for ReplayBank {
    fn order(&mut self, at: BankAt, rows: usize, tokens: usize) -> Result<Vec<Vec<u32>>> {
        let key = Self::key("merge", at);
        let recorded = self
            .rows(key.clone())?
            .ok_or_else(|| Error::Model(format!("replayed merges have no '{key}'")))?;
        if recorded.len() != rows || recorded.iter().any(|r| r.len() != tokens) {
            return Err(Error::Model(format!(
                "replayed merge '{key}' does not have the [{rows}, {tokens}] the run asks for"
            )));
        }
        Ok(recorded
            .into_iter()
            .map(|r| r.into_iter().map(|i| i as u32).collect())
            .collect())
    }

    fn reference(&mut self, at: BankAt, choice: Choice) -> Result<Option<Vec<Vec<i64>>>> {
        let what = match choice {
            Choice::Into => "into",
            Choice::Nearest => "nearest",
        };
        self.rows(Self::key(what, at))
    }
}

/// Noise recorded by a reference run, looked up by the draw's key ([`NoiseDraw::key`]).
pub struct ReplayNoise {
    tensors: HashMap<String, Tensor>,
    used: BTreeSet<String>,
}

impl ReplayNoise {
    /// Uses the noise tensors among `tensors` (other keys are ignored).
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            used: BTreeSet::new(),
        }
    }

    /// Reads a golden `.safetensors` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::input(path, e.to_string()))?;
        Ok(Self::new(tensors))
    }

    /// Noise tensors in the file that no draw asked for: a run that skipped a draw the
    /// reference made did not follow the same path.
    pub fn unused(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with("noise_") || k.ends_with(".noise"))
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

impl NoiseSource for ReplayNoise {
    fn noise(&mut self, draw: NoiseDraw, shape: &[usize], device: &Device) -> Result<Tensor> {
        let key = draw.key();
        let t = self
            .tensors
            .get(&key)
            .ok_or_else(|| Error::Model(format!("replayed noise has no '{key}'")))?;
        if t.dims() != shape {
            return Err(Error::Model(format!(
                "replayed noise '{key}' has shape {:?}, the run asks for {shape:?}",
                t.dims()
            )));
        }
        self.used.insert(key);
        Ok(t.to_dtype(DType::F32)?.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(src: &mut dyn NoiseSource, d: NoiseDraw) -> Vec<f32> {
        src.noise(d, &[1, 4, 6, 5], &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_noise_and_draws_are_independent() {
        let a = draw(&mut SeededNoise::new(7), NoiseDraw::Start);
        let mut other = SeededNoise::new(7);
        // Taking other draws first must not change this one.
        draw(&mut other, NoiseDraw::Posterior);
        draw(&mut other, NoiseDraw::Step(3));
        assert_eq!(a, draw(&mut other, NoiseDraw::Start));
        assert_ne!(a, draw(&mut SeededNoise::new(8), NoiseDraw::Start));
        assert_ne!(a, draw(&mut SeededNoise::new(7), NoiseDraw::Posterior));
        assert_ne!(a, draw(&mut SeededNoise::new(7), NoiseDraw::Step(0)));
        assert_ne!(
            a,
            draw(&mut SeededNoise::with_stream(7, 1), NoiseDraw::Start)
        );
        assert_eq!(
            a,
            draw(&mut SeededNoise::with_stream(7, 0), NoiseDraw::Start)
        );
    }

    #[test]
    fn seeded_noise_is_standard_normal() {
        let v = normals(mix64(42), 200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let within_1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert!((within_1 - 0.6827).abs() < 0.005, "P(|x|<1) = {within_1}");
    }

    #[test]
    fn seeded_noise_is_stable_across_versions() {
        // Pinned values: a change here changes every video rendered with a given seed.
        let v = SeededNoise::new(0)
            .noise(NoiseDraw::Start, &[3], &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
        assert_eq!(got, ["-0.527812", "0.545390", "1.231428"]);
    }

    #[test]
    fn replay_hands_out_recorded_tensors_by_key_and_reports_unused_ones() {
        let dev = Device::Cpu;
        let t = |v: f32| Tensor::full(v, (1, 4, 2, 2), &dev).unwrap();
        let mut replay = ReplayNoise::new(HashMap::from([
            ("noise_vae".to_string(), t(1.0)),
            ("noise_add".to_string(), t(2.0)),
            ("step0.noise".to_string(), t(3.0)),
            ("step1.noise".to_string(), t(4.0)),
            ("final_latents".to_string(), t(5.0)),
        ]));
        let get = |r: &mut ReplayNoise, d| {
            r.noise(d, &[1, 4, 2, 2], &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert_eq!(get(&mut replay, NoiseDraw::Posterior), 1.0);
        assert_eq!(get(&mut replay, NoiseDraw::Start), 2.0);
        assert_eq!(get(&mut replay, NoiseDraw::Step(1)), 4.0);
        assert_eq!(replay.unused(), vec!["step0.noise".to_string()]);
        let err = replay
            .noise(NoiseDraw::Step(2), &[1, 4, 2, 2], &dev)
            .unwrap_err();
        assert!(err.to_string().contains("step2.noise"), "{err}");
        let err = replay
            .noise(NoiseDraw::Step(0), &[1, 4, 3, 2], &dev)
            .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
    }
}
