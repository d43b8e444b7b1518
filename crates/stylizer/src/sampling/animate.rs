//! AnimateDiff video-to-video: a stack of frames denoised together through the motion UNet
//! ([`crate::nets::sd::motion`]), as diffusers' `AnimateDiffVideoToVideoPipeline`
//! (`pipelines/animatediff/pipeline_animatediff_video2video.py`) does for one window, with
//! stacks longer than a window covered by sliding context windows as
//! ComfyUI-AnimateDiff-Evolved's context options do (`animatediff/context.py`,
//! `create_windows_static_standard`; `animatediff/sampling.py`, `sliding_calc_cond_batch`):
//! at every step the whole UNet runs once per window on that window's frames, and each
//! frame's predictions from the windows that hold it are averaged with per-position weights
//! (flat or pyramid) before the scheduler step on all frames.

use std::ops::Range;

use candle_core::Tensor;

use crate::sampling::img2img::{conditioning, decode, encode, Img2ImgParams, Schedule};
use crate::sampling::noise::{NoiseDraw, NoiseSource};
use crate::sampling::schedulers::SchedulerConfig;
use crate::sd::model::SdModel;
use crate::{Error, Progress, Result};

/// How the predictions of overlapping windows are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    /// Every position of a window counts the same.
    Flat,
    /// A window's middle counts most: 1, 2, …, 2, 1 (ComfyUI's `create_weights_pyramid`).
    Pyramid,
}

impl std::str::FromStr for Fuse {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flat" => Ok(Fuse::Flat),
            "pyramid" => Ok(Fuse::Pyramid),
            _ => Err(Error::Config(format!(
                "unknown context fuse `{s}` (flat or pyramid)"
            ))),
        }
    }
}

impl std::fmt::Display for Fuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fuse::Flat => "flat",
            Fuse::Pyramid => "pyramid",
        })
    }
}

/// The sliding context windows (`--context-length`, `--context-overlap`, `--context-fuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Frames the motion modules see at once (16, what the adapters were trained on).
    pub length: usize,
    /// Frames two neighbouring windows share.
    pub overlap: usize,
    pub fuse: Fuse,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            length: 16,
            overlap: 4,
            fuse: Fuse::Pyramid,
        }
    }
}

impl ContextOptions {
    /// Rejects windows that cannot slide (no overlap-free step) or that the adapter's
    /// position encoding cannot cover.
    pub fn check(&self, max_seq_length: usize) -> Result<()> {
        if self.length < 2 || self.overlap >= self.length {
            return Err(Error::Config(format!(
                "--context-length {} with --context-overlap {}: the length must be at least 2 and the overlap smaller",
                self.length, self.overlap
            )));
        }
        if self.length > max_seq_length {
            return Err(Error::Config(format!(
                "--context-length {}: the motion adapter encodes positions for {max_seq_length} frames at most",
                self.length
            )));
        }
        Ok(())
    }

    /// The windows over `frames` frames: one of all of them when they fit, else windows
    /// starting every `length − overlap` frames, the first that reaches the end moved back
    /// to end there (and the last).
    pub fn windows(&self, frames: usize) -> Vec<Range<usize>> {
        if frames <= self.length {
            return std::iter::once(0..frames).collect();
        }
        let stride = self.length - self.overlap;
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            if start + self.length >= frames {
                windows.push(frames - self.length..frames);
                return windows;
            }
            windows.push(start..start + self.length);
            start += stride;
        }
    }

    /// The weight of each position in a window of `n` frames.
    pub fn weights(&self, n: usize) -> Vec<f32> {
        match self.fuse {
            Fuse::Flat => vec![1.0; n],
            // min(i + 1, n − i) is ComfyUI's 1..n/2, n/2..1 (odd n: a single peak).
            Fuse::Pyramid => (0..n).map(|i| (i + 1).min(n - i) as f32).collect(),
        }
    }
}

/// Denoises `frames` `[F, 3, H, W]` in [−1, 1] together; returns the final latents
/// `[F, 4, h, w]` (scaled, as the UNet sees them).
///
/// * `text`: `[negative, prompt]` embeddings `[2, 77, D]` (the prompt alone when guidance is
///   off), repeated for every frame of a window.
/// * `noise(i)`: the random draws of frame `i` of the stack (`[1, 4, h, w]` each), so that a
///   frame's noise does not depend on which stack it is part of.
#[allow(clippy::too_many_arguments)]
pub fn denoise_video(
    model: &SdModel,
    scheduler_config: &SchedulerConfig,
    params: &Img2ImgParams,
    text: &Tensor,
    frames: &Tensor,
    context: &ContextOptions,
    noise: &mut dyn FnMut(usize) -> Result<Box<dyn NoiseSource>>,
    progress: &mut dyn Progress,
) -> Result<Tensor> {
    let Schedule {
        mut scheduler,
        timesteps,
        first,
        total,
    } = Schedule::new(params, scheduler_config)?;
    let n = frames.dim(0)?;
    let device = frames.device().clone();
    let mut sources = (0..n).map(noise).collect::<Result<Vec<_>>>()?;

    // Text: [negative, prompt] for guidance, the prompt alone otherwise.
    let (negative, prompt) = conditioning(model, params, text)?;

    // Encode every frame (one at a time: memory), sample the posterior, scale, noise.
    let x0 = frames_latents(model, frames, &mut sources)?;
    let shape = x0.dims()[1..].to_vec();
    let per_frame = |sources: &mut [Box<dyn NoiseSource>], draw: NoiseDraw| -> Result<Tensor> {
        let one: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
        let rows = sources
            .iter_mut()
            .map(|s| s.noise(draw, &one, &device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    };
    let eps = per_frame(&mut sources, NoiseDraw::Start)?;
    let mut latents = scheduler.add_noise(&x0, &eps, first)?;

    // Denoise: per window the UNet on its frames (twice with guidance), the windows'
    // predictions averaged per frame, one scheduler step for all frames.
    let windows = context.windows(n);
    let weights = context.weights(windows[0].len());
    let mut totals = vec![0f32; n];
    for w in &windows {
        for (j, f) in w.clone().enumerate() {
            totals[f] += weights[j];
        }
    }
    // Each window's share of its frames' predictions: weight / the frame's total weight.
    let shares = windows
        .iter()
        .map(|w| {
            let share: Vec<f32> = w
                .clone()
                .enumerate()
                .map(|(j, f)| weights[j] / totals[f])
                .collect();
            Ok(Tensor::from_vec(share, (w.len(), 1, 1, 1), &device)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let repeat = |t: &Tensor, k: usize| -> Result<Tensor> {
        let (_, tokens, dim) = t.dims3()?;
        Ok(t.broadcast_as((k, tokens, dim))?.contiguous()?)
    };
    for (i, index) in (first..timesteps.len()).enumerate() {
        let t = timesteps[index];
        let input = scheduler.scale_model_input(latents.clone(), index)?;
        let mut fused: Option<Tensor> = None;
        for (w, share) in windows.iter().zip(&shares) {
            let k = w.len();
            let x = input.narrow(0, w.start, k)?;
            // The guidance pair as two calls, not one batch of 2k frames: the same values,
            // half the activations.
            let cond = model.unet_window(&x, &[t], &repeat(&prompt, k)?, k, None)?;
            let out = match &negative {
                Some(neg) => {
                    let uncond = model.unet_window(&x, &[t], &repeat(neg, k)?, k, None)?;
                    (&uncond + ((cond - &uncond)? * params.guidance)?)?
                }
                None => cond,
            };
            let out = out
                .broadcast_mul(share)?
                .pad_with_zeros(0, w.start, n - w.end)?;
            fused = Some(match fused {
                Some(f) => (f + out)?,
                None => out,
            });
        }
        let out = fused.expect("at least one window");
        let step_noise = match scheduler.needs_noise(index) {
            true => Some(per_frame(&mut sources, NoiseDraw::Step(i))?),
            false => None,
        };
        latents = scheduler.step(&out, index, &latents, step_noise.as_ref())?;
        progress.step(i + 1, total);
    }
    Ok(latents)
}

/// Every frame of `frames` encoded on its own with its own noise ([`encode`]), stacked.
fn frames_latents(
    model: &SdModel,
    frames: &Tensor,
    sources: &mut [Box<dyn NoiseSource>],
) -> Result<Tensor> {
    let x0 = sources
        .iter_mut()
        .enumerate()
        .map(|(i, source)| {
            encode(
                model,
                &frames.narrow(0, i, 1)?,
                source.as_mut(),
                NoiseDraw::Posterior,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&x0, 0)?)
}

/// Decodes final latents `[F, 4, h, w]` one frame at a time to images `[F, 3, H, W]` in [0, 1].
pub fn decode_video(model: &SdModel, latents: &Tensor) -> Result<Tensor> {
    let frames = (0..latents.dim(0)?)
        .map(|i| decode(model, &latents.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&frames, 0)?)
}

/// Context windows per chunk: a chunk spans this many windows.
const CHUNK_WINDOWS: usize = 4;

/// How a video longer than a chunk is cut for AnimateDiff: chunk `c` holds frames
/// `[c·stride, c·stride + len)` on a grid fixed from frame 0, so that a frame's result does
/// not depend on where a run, a resume or a `--segment` share started. A chunk's frames are
/// denoised together (in context windows); two neighbouring chunks share `overlap` frames,
/// cross-faded from one to the other in latent space. Memory is bounded by a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGrid {
    pub len: u64,
    pub overlap: u64,
}

impl ChunkGrid {
    /// [`CHUNK_WINDOWS`] windows' span, sharing one window overlap with each neighbour.
    pub fn new(context: &ContextOptions) -> Self {
        let stride = context.length - context.overlap;
        Self {
            len: (context.length + (CHUNK_WINDOWS - 1) * stride) as u64,
            overlap: context.overlap as u64,
        }
    }

    /// Frames between the starts of two neighbouring chunks.
    pub fn stride(&self) -> u64 {
        self.len - self.overlap
    }

    pub fn start(&self, chunk: u64) -> u64 {
        chunk * self.stride()
    }

    /// The chunks that hold frame `f` (one, or two in an overlap).
    pub fn covering(&self, f: u64) -> Range<u64> {
        let last = f / self.stride();
        let first = match f + 1 > self.len {
            true => (f + 1 - self.len).div_ceil(self.stride()),
            false => 0,
        };
        first..last + 1
    }

    /// Chunk `c`'s share of frame `f`: 1 outside overlaps; across an overlap it rises from the
    /// earlier chunk to the later one, (j + 1) / (overlap + 1) at the j-th shared frame.
    pub fn weight(&self, c: u64, f: u64) -> f32 {
        let covering = self.covering(f);
        if covering.end - covering.start < 2 {
            return 1.0;
        }
        let later = (f - self.start(covering.end - 1) + 1) as f32 / (self.overlap + 1) as f32;
        match c + 1 == covering.end {
            true => later,
            false => 1.0 - later,
        }
    }
}

/// The AnimateDiff stage's frames and results: input frames as they arrive (processed,
/// peeked ahead, or shown again at a segment start), and the final latents of the chunks
/// rendered, dropped once the video has moved past them.
pub struct Chunks {
    grid: ChunkGrid,
    /// Input frames `[1, 3, H, W]` in [−1, 1], by index.
    inputs: std::collections::BTreeMap<u64, Tensor>,
    /// Final latents `[n, 4, h, w]` by chunk.
    latents: std::collections::BTreeMap<u64, Tensor>,
}

impl Chunks {
    pub fn new(grid: ChunkGrid) -> Self {
        Self {
            grid,
            inputs: Default::default(),
            latents: Default::default(),
        }
    }

    pub fn grid(&self) -> ChunkGrid {
        self.grid
    }

    /// Forgets everything (a new video).
    pub fn clear(&mut self) {
        self.inputs.clear();
        self.latents.clear();
    }

    pub fn add_input(&mut self, index: u64, image: Tensor) {
        self.inputs.entry(index).or_insert(image);
    }

    /// The frames before `start` that must be shown again (in order) before frame `start`:
    /// those of the chunks holding `start` that are not rendered and not held.
    pub fn warm_up_frames(&self, start: u64) -> Vec<u64> {
        let from = self
            .grid
            .covering(start)
            .filter(|c| !self.latents.contains_key(c))
            .map(|c| self.grid.start(c))
            .min()
            .unwrap_or(start);
        (from..start)
            .filter(|f| !self.inputs.contains_key(f))
            .collect()
    }

    /// The final latents `[1, 4, h, w]` of frame `index`, rendering the chunks that hold it
    /// when they are not yet: `render(first, frames)` denoises the stack `frames` that starts
    /// at frame `first`. What the video has moved past is dropped.
    pub fn latents(
        &mut self,
        index: u64,
        render: &mut dyn FnMut(u64, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let covering = self.grid.covering(index);
        let mut out: Option<Tensor> = None;
        for c in covering.clone() {
            let first = self.grid.start(c);
            if !self.latents.contains_key(&c) {
                // Every frame of the chunk up to the end of the video has been seen.
                let frames: Vec<Tensor> = (first..first + self.grid.len)
                    .map_while(|f| self.inputs.get(&f).cloned())
                    .collect();
                if (frames.len() as u64) < index - first + 1 {
                    return Err(Error::Model(format!(
                        "animatediff: frame {} of the chunk from frame {first} was not seen before frame {index}",
                        first + frames.len() as u64
                    )));
                }
                let stack = Tensor::cat(&frames, 0)?;
                self.latents.insert(c, render(first, &stack)?);
            }
            let row = self.latents[&c].narrow(0, (index - first) as usize, 1)?;
            let row = (row * self.grid.weight(c, index) as f64)?;
            out = Some(match out {
                Some(o) => (o + row)?,
                None => row,
            });
        }
        // Chunks that end at this frame and the frames before the earliest chunk still needed.
        self.latents = self.latents.split_off(&covering.start);
        self.latents.retain(|&c, _| {
            self.grid.start(c) + self.grid.len > index + 1 || c + 1 == covering.end
        });
        self.inputs = self.inputs.split_off(&self.grid.start(covering.start));
        Ok(out.expect("every frame is in a chunk"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn windows_and_weights_follow_comfyui() {
        let c = ContextOptions {
            length: 4,
            overlap: 2,
            fuse: Fuse::Pyramid,
        };
        assert_eq!(c.windows(3), std::iter::once(0..3).collect::<Vec<_>>());
        assert_eq!(c.windows(10), [0..4, 2..6, 4..8, 6..10]);
        assert_eq!(c.windows(11), [0..4, 2..6, 4..8, 6..10, 7..11]);
        assert_eq!(c.weights(4), [1.0, 2.0, 2.0, 1.0]);
        assert_eq!(c.weights(5), [1.0, 2.0, 3.0, 2.0, 1.0]);
        assert!(c.check(32).is_ok());
        assert!(ContextOptions { length: 40, ..c }.check(32).is_err());
        assert!(ContextOptions { overlap: 4, ..c }.check(32).is_err());
    }

    #[test]
    fn chunks_cover_every_frame_and_cross_fade_in_overlaps() {
        let grid = ChunkGrid::new(&ContextOptions::default());
        assert_eq!((grid.len, grid.overlap), (52, 4));
        for f in 0..500 {
            let covering = grid.covering(f);
            assert!(!covering.is_empty(), "frame {f}");
            for c in covering.clone() {
                assert!(
                    grid.start(c) <= f && f < grid.start(c) + grid.len,
                    "{f} {c}"
                );
            }
            let total: f32 = covering.clone().map(|c| grid.weight(c, f)).sum();
            assert!((total - 1.0).abs() < 1e-6, "frame {f}: {total}");
        }
        assert_eq!(grid.covering(47), 0..1);
        assert_eq!(grid.covering(48), 0..2);
        assert_eq!(grid.covering(51), 0..2);
        assert_eq!(grid.covering(52), 1..2);
        assert_eq!(grid.weight(1, 48), 0.2);
    }

    /// A render that makes each frame's latents from its index and the chunk's first frame,
    /// so the test sees which chunk made what.
    fn fake(first: u64, frames: &Tensor) -> Result<Tensor> {
        let n = frames.dim(0)?;
        let rows: Vec<f32> = (0..n)
            .map(|i| (first + i as u64) as f32 + first as f32 * 1e-3)
            .collect();
        Ok(Tensor::from_vec(rows, (n, 1, 1, 1), &Device::Cpu)?)
    }

    /// Runs frames `start..end` as the pipeline does (warm-up, look-ahead, process) and
    /// returns each frame's latents.
    fn run(grid: ChunkGrid, video: u64, start: u64, end: u64) -> Vec<f32> {
        let mut chunks = Chunks::new(grid);
        let image = |_| Tensor::zeros((1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
        for f in chunks.warm_up_frames(start) {
            chunks.add_input(f, image(f));
        }
        let mut out = Vec::new();
        for i in start..end {
            for f in i..(i + grid.len).min(video) {
                chunks.add_input(f, image(f));
            }
            let l = chunks.latents(i, &mut fake).unwrap();
            out.push(l.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]);
        }
        out
    }

    #[test]
    fn a_frame_comes_out_the_same_whatever_frame_the_run_started_at() {
        let grid = ChunkGrid {
            len: 10,
            overlap: 3,
        };
        let whole = run(grid, 40, 0, 40);
        for start in [1, 6, 7, 8, 9, 13, 14, 33, 39] {
            assert_eq!(
                run(grid, 40, start, 40),
                whole[start as usize..],
                "from {start}"
            );
        }
        // In an overlap the later chunk's share rises: frame 8, the second of the three
        // frames chunks 0 and 1 share, is half of each.
        let expected = 8.0 + 0.5 * 7e-3;
        assert!((whole[8] - expected).abs() < 1e-5, "{}", whole[8]);
    }
}
