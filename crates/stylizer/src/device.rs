//! `--device auto|cpu|cuda[:N]|metal` → a candle device; `--dtype` → its precision.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// `--dtype f32|f16|bf16`: the precision the models run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision(pub DType);

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision(DType::F32)),
            "f16" => Ok(Precision(DType::F16)),
            "bf16" => Ok(Precision(DType::BF16)),
            _ => Err(Error::Value(format!(
                "unknown dtype `{s}` (f32, f16 or bf16)"
            ))),
        }
    }
}

/// Parses and opens a device. `auto` takes the first GPU this build supports, else the CPU.
pub fn select(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let gpu = |e: candle_core::Error| Error::Config(format!("--device {spec}: {e}"));
    match spec.as_str() {
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(gpu)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0).map_err(gpu)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cpu" => Ok(Device::Cpu),
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(not_built(&spec, "metal"));
            }
            Device::new_metal(0).map_err(gpu)
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::Config(format!(
                        "--device {s}: expected cuda or cuda:N with N a GPU number"
                    ))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(not_built(&spec, "cuda"));
            }
            Device::new_cuda(ordinal).map_err(gpu)
        }
        _ => Err(Error::Config(format!(
            "unknown device `{spec}` (expected auto, cpu, cuda, cuda:N or metal)"
        ))),
    }
}

fn not_built(spec: &str, feature: &str) -> Error {
    Error::Config(format!(
        "--device {spec}: this build of video-stylizer has no {feature} support (rebuild with `cargo install --path crates/cli --features {feature}`)"
    ))
}

/// Hands memory that the allocator holds freed back to the OS (glibc keeps freed heap
/// blocks mapped; after the text encoder and between the UNet and the VAE that is ~150 MB of
/// resident set at 848×480, measured). Called between the pipeline's big stages.
pub fn release_free_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lets glibc serve allocations up to 160 MiB from its heap and keep that much free memory
/// there, once per process. Why: above its default limit (≤ 32 MiB) every allocation is a
/// fresh mmap whose pages the kernel faults in and zeroes, and the models make tensors of
/// 16–130 MB (attention scores, GEGLU halves, VAE feature maps) many times per frame: an
/// SD-2 UNet call at 848×480 went from 41 to 36 s and the VAE decode from 44 to 40 s, with
/// the whole pipeline's peak RSS 40 MB lower (measured, 2 threads). Larger buffers (the VAE's
/// full-resolution maps, 200–400 MB) stay mmapped, so they go back to the OS when freed.
pub fn keep_mid_size_buffers_in_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        const LIMIT: libc::c_int = 160 << 20;
        // SAFETY: mallopt only changes the allocator's thresholds; glibc ignores values
        // it does not accept.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT);
            libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_errors() {
        assert!(select("cpu").unwrap().is_cpu());
        assert!(select("auto").is_ok());
        let e = select("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device `tpu`"), "{e}");
        let e = select("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:N"), "{e}");
    }
}
