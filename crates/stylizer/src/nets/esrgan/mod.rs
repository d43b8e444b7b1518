//! Networks candle does not have.
pub mod rrdbnet;
pub mod srvgg;

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use rrdbnet::{RrdbNet, RrdbNetConfig};
pub use srvgg::{SrvggNet, SrvggNetConfig};

use crate::{Error, Result};

/// Which Real-ESRGAN generator a set of weights is, with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrConfig {
    Rrdb(RrdbNetConfig),
    Srvgg(SrvggNetConfig),
}

impl SrConfig {
    /// Tells the architecture from the tensor names and reads its hyper-parameters.
    pub fn detect(ts: &HashMap<String, Tensor>) -> Result<Self> {
        if ts.contains_key("conv_first.weight") {
            Ok(Self::Rrdb(RrdbNetConfig::from_weights(ts)?))
        } else if ts.contains_key("body.0.weight") {
            Ok(Self::Srvgg(SrvggNetConfig::from_weights(ts)?))
        } else {
            let mut some: Vec<_> = ts.keys().take(3).cloned().collect();
            some.sort();
            Err(Error::Weights(format!(
                "not a Real-ESRGAN model (RRDBNet or SRVGGNetCompact); it has tensors like {some:?}"
            )))
        }
    }

    pub fn scale(&self) -> usize {
        match self {
            Self::Rrdb(c) => c.scale,
            Self::Srvgg(c) => c.upscale,
        }
    }

    /// Input sizes must be multiples of this (RRDBNet ×2/×1 pixel-unshuffle their input).
    pub fn size_multiple(&self) -> usize {
        match self {
            Self::Rrdb(c) => 4 / c.scale,
            Self::Srvgg(_) => 1,
        }
    }
}

/// A super-resolution network: RGB `[1, 3, H, W]` in [0, 1] → `[1, 3, H·s, W·s]`, unclamped.
pub enum SrNet {
    Rrdb(Box<RrdbNet>),
    Srvgg(SrvggNet),
}

impl SrNet {
    pub fn new(vb: VarBuilder, cfg: &SrConfig) -> Result<Self> {
        Ok(match cfg {
            SrConfig::Rrdb(c) => Self::Rrdb(Box::new(RrdbNet::new(vb, c)?)),
            SrConfig::Srvgg(c) => Self::Srvgg(SrvggNet::new(vb, c)?),
        })
    }

    pub fn config(&self) -> SrConfig {
        match self {
            Self::Rrdb(n) => SrConfig::Rrdb(n.config().clone()),
            Self::Srvgg(n) => SrConfig::Srvgg(n.config().clone()),
        }
    }

    pub fn scale(&self) -> usize {
        self.config().scale()
    }

    /// Fast NHWC path for f32 on the CPU, candle ops otherwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Rrdb(n) => n.forward(x),
            Self::Srvgg(n) => n.forward(x),
        }
    }

    /// candle ops only.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Rrdb(n) => n.forward_candle(x)?,
            Self::Srvgg(n) => n.forward_candle(x)?,
        })
    }

    /// Frees the activation buffers the CPU path keeps between calls.
    pub fn release_buffers(&self) {
        match self {
            Self::Rrdb(n) => n.release_buffers(),
            Self::Srvgg(n) => n.release_buffers(),
        }
    }

    /// Bytes of activations the CPU path needs for an `h`×`w` input.
    pub fn workspace_bytes(&self, h: usize, w: usize) -> usize {
        match self {
            Self::Rrdb(n) => n.workspace_bytes(h, w),
            Self::Srvgg(n) => n.workspace_bytes(h, w),
        }
    }
}
