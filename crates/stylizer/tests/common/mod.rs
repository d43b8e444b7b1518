//! Helpers shared by the parity tests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

/// The device the models run on: `VIDEO_STYLIZER_TEST_DEVICE` (`cuda`, `cuda:N`, `metal`:
/// how tools/gpu_check.sh replays these tests on a GPU), else the CPU. One device for the
/// whole binary: candle cannot mix tensors of two handles on the same GPU.
pub fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let spec = std::env::var("VIDEO_STYLIZER_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
            stylizer::device::select(&spec).unwrap()
        })
        .clone()
}

/// The tensors of a golden file (tools/reference), on [`device`].
pub fn load_tensors(path: impl AsRef<Path>) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &device()).unwrap()
}

/// Largest absolute difference between two tensors of the same shape (compared in f32, on
/// the CPU).
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let host = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    (host(a) - host(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
