//! Where a frame's random draws come from (`--noise`): the same noise for every frame (less
//! flicker, but it stays on the screen while the scene moves), a stream of its own per frame,
//! or noise carried along the source's optical flow from frame 0 on
//! ([`crate::temporal::noise_warp`]), so that its texture moves with the scene.
//!
//! The warped chain starts at frame 0, so a segment that starts later replays it: every frame
//! before the segment is decoded once more and the flow to it measured (no diffusion), which
//! keeps "same seed ⇒ same frames" whole, resumed or split.

use std::str::FromStr;

use candle_core::{Device, Tensor};

use crate::sampling::noise::{NoiseDraw, NoiseSource, SeededNoise};
use crate::temporal::flow::{dis_flow, DisParams, DisPreset, Gray};
use crate::temporal::noise_warp::NoiseWarper;
use crate::{Error, Frame, Result};

/// Where the noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// The same draws for every frame.
    Fixed,
    /// A stream of its own for every frame.
    PerFrame,
    /// Carried along the source's optical flow from frame 0.
    Warp,
}

impl FromStr for Noise {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fixed" => Ok(Noise::Fixed),
            "per-frame" => Ok(Noise::PerFrame),
            "warp" => Ok(Noise::Warp),
            _ => Err(Error::Value(format!(
                "unknown noise `{s}` (fixed, per-frame or warp)"
            ))),
        }
    }
}

impl std::fmt::Display for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Noise::Fixed => "fixed",
            Noise::PerFrame => "per-frame",
            Noise::Warp => "warp",
        })
    }
}

impl Noise {
    /// Frame `index`'s random draws under `seed`, for the choices that need no chain.
    pub fn source(self, seed: u64, index: u64) -> Box<dyn NoiseSource> {
        match self {
            Noise::PerFrame => Box::new(SeededNoise::with_stream(seed, index)),
            Noise::Fixed | Noise::Warp => Box::new(SeededNoise::new(seed)),
        }
    }
}

/// The DIS preset the noise chain follows the scene with: the chain is replayed from frame 0
/// at a segment's start, so it takes the faster preset (its flows only move noise cells).
const NOISE_FLOW: DisPreset = DisPreset::Fast;

/// Latent channels the warped noise covers: the noise added at the start and the VAE
/// posterior's draw, four each.
const LATENT_CHANNELS: usize = 4;

/// Streams of the warped chain's draws, apart from the frames' own (which count up from 0).
const WARP_STREAM: u64 = u64::MAX;

/// Where the warped noise stands: the frame it was carried to and that frame's luminance.
struct Chain {
    index: u64,
    gray: Gray,
    warper: NoiseWarper,
}

/// The noise axis at run time: for [`Noise::Warp`], the chain of warped noise.
pub(crate) struct NoiseState {
    choice: Noise,
    seed: u64,
    chain: Option<Chain>,
}

impl NoiseState {
    pub fn new(choice: Noise, seed: u64) -> Self {
        Self {
            choice,
            seed,
            chain: None,
        }
    }

    /// The frames before a segment's start that the chain is carried through: none when it
    /// is already at the frame before (an uninterrupted run keeps it across segments), else
    /// all from frame 0.
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        if self.choice != Noise::Warp || start == 0 {
            return;
        }
        match &self.chain {
            Some(c) if c.index + 1 == start => {}
            _ => frames.extend(0..start),
        }
    }

    /// The same picture again: the chain stays as it is.
    pub fn repeat(&mut self, index: u64) {
        if let Some(c) = self.chain.as_mut().filter(|c| c.index + 1 == index) {
            c.index = index;
        }
    }

    /// Carries the chain to frame `index` (the frame after the one it is at, or frame 0 to
    /// start it).
    pub fn follow(&mut self, frame: &Frame, index: u64) -> Result<()> {
        if self.choice != Noise::Warp {
            return Ok(());
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        let gray = Gray::from_rgb(w, h, &frame.data);
        match self.chain.as_mut() {
            Some(c) if c.index == index => {}
            Some(c) if c.index + 1 == index => {
                // A picture like the one before moves nothing (a repeat, whole or replayed).
                if c.gray.data != gray.data {
                    let flow = dis_flow(&c.gray, &gray, &DisParams::preset(NOISE_FLOW));
                    let n = c.warper.channels * h * 2 * w;
                    let fresh = draws(self.seed, 1 + index, n);
                    c.warper.step(&flow, &fresh);
                }
                c.index = index;
                c.gray = gray;
            }
            _ if index == 0 => {
                let channels = 2 * LATENT_CHANNELS;
                let start = draws(self.seed, 0, channels * w * h);
                self.chain = Some(Chain {
                    index,
                    gray,
                    warper: NoiseWarper::new(channels, w, h, start),
                });
            }
            _ => {
                return Err(Error::Model(format!(
                    "warped noise: frame {index} reached without the frames before it"
                )))
            }
        }
        Ok(())
    }

    /// Frame `index`'s random draws: [`Noise::source`], or for [`Noise::Warp`] the chain's
    /// noise (carried to `frame` first) on the latent grid, `factor` times coarser.
    pub fn source(
        &mut self,
        frame: &Frame,
        index: u64,
        factor: usize,
    ) -> Result<Box<dyn NoiseSource>> {
        let fixed = self.choice.source(self.seed, index);
        if self.choice != Noise::Warp {
            return Ok(fixed);
        }
        self.follow(frame, index)?;
        let warper = &self.chain.as_ref().expect("followed").warper;
        if warper.width % factor != 0 || warper.height % factor != 0 {
            return Err(Error::Config(format!(
                "--noise warp: frames of {}×{} are not on the {factor}-pixel latent grid",
                warper.width, warper.height
            )));
        }
        Ok(Box::new(WarpedNoise {
            latents: warper.downscaled(factor),
            size: (warper.height / factor, warper.width / factor),
            others: fixed,
        }))
    }
}

/// `n` N(0, 1) draws of the chain's stream `k` (0: its start, 1 + i: frame i's step).
fn draws(seed: u64, k: u64, n: usize) -> Vec<f32> {
    SeededNoise::with_stream(seed ^ WARP_STREAM, k).draws(NoiseDraw::Start, n)
}

/// A frame's draws from the warped chain: its first latent channels for the start, the next
/// for the posterior; the other draws (ancestral steps, Rerender-A-Video's) fixed.
struct WarpedNoise {
    /// The chain's noise on the latent grid, planar, 2 × 4 channels.
    latents: Vec<f32>,
    /// (height, width) of the latent grid.
    size: (usize, usize),
    others: Box<dyn NoiseSource>,
}

impl NoiseSource for WarpedNoise {
    fn noise(&mut self, draw: NoiseDraw, shape: &[usize], device: &Device) -> Result<Tensor> {
        let first = match draw {
            NoiseDraw::Start => 0,
            NoiseDraw::Posterior => LATENT_CHANNELS,
            _ => return self.others.noise(draw, shape, device),
        };
        let (h, w) = self.size;
        if shape != [1, LATENT_CHANNELS, h, w] {
            return Err(Error::Config(format!(
                "--noise warp: latents of shape {shape:?}, expected [1, {LATENT_CHANNELS}, {h}, {w}]"
            )));
        }
        let plane = h * w;
        let mine = self.latents[first * plane..(first + LATENT_CHANNELS) * plane].to_vec();
        Ok(Tensor::from_vec(mine, shape, device)?)
    }
}
