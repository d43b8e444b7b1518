//! Where a frame's random draws come from: the same noise for every frame (less flicker), or a
//! stream of its own per frame (`--noise-per-frame`).

use crate::sampling::noise::{NoiseSource, SeededNoise};

/// Where the noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// The same draws for every frame.
    Fixed,
    /// A stream of its own for every frame.
    PerFrame,
}

impl Noise {
    /// Frame `index`'s random draws under `seed`.
    pub fn source(self, seed: u64, index: u64) -> Box<dyn NoiseSource> {
        match self {
            Noise::PerFrame => Box::new(SeededNoise::with_stream(seed, index)),
            Noise::Fixed => Box::new(SeededNoise::new(seed)),
        }
    }
}

impl std::fmt::Display for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Noise::Fixed => "fixed",
            Noise::PerFrame => "per-frame",
        })
    }
}
