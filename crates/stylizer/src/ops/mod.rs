//! Compute kernels candle lacks or runs slowly, shared by the models.

/// `simd_dispatch!(fn name(args) -> R { body })` defines `name`, which runs `body` compiled for
/// AVX2 + FMA when the CPU has them (std caches the check) and as baseline code otherwise.
///
/// Why: the crate builds for the baseline target (SSE2 on x86-64) so that one binary runs on
/// every CPU, and there the element-wise loops vectorise only 4 wide; softmax alone was 12 %
/// of an SD-2 UNet call (perf), in SSE code.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

/// The f32 data of a contiguous CPU tensor, for the custom ops' `cpu_fwd`; `op` names the op
/// in the error.
pub(crate) fn f32_slice<'a>(
    op: &str,
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous tensors only")
    };
    Ok(&v[start..end])
}

/// Whether `t` is f32 on the CPU: where the custom ops here run (candle's ops elsewhere),
/// unless [`use_candle_ops_only`] is on.
pub fn is_cpu_f32(t: &candle_core::Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !candle_ops_only()
}

static CANDLE_OPS_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs every model on candle's own ops, as on a GPU, even for f32 on the CPU: the path CUDA
/// and Metal take, which the parity tests check this way on any machine. Takes effect for
/// models loaded afterwards (a convolution chooses its path when it loads).
/// `VIDEO_STYLIZER_CANDLE_OPS=1` turns it on for a whole process.
pub fn use_candle_ops_only(on: bool) {
    CANDLE_OPS_ONLY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`use_candle_ops_only`] (or its variable) is on.
pub fn candle_ops_only() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    CANDLE_OPS_ONLY.load(std::sync::atomic::Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| {
            std::env::var_os("VIDEO_STYLIZER_CANDLE_OPS").is_some_and(|v| !v.is_empty() && v != "0")
        })
}

/// A pointer into a buffer that parallel jobs share, each writing its own disjoint part
/// (which is what makes sharing it sound).
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr(pub(crate) *mut f32);
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// A method, so that closures capture the whole (Sync) wrapper, not its raw field.
    pub(crate) fn offset(self, n: usize) -> Self {
        Self(self.0.wrapping_add(n))
    }
}

pub mod attention;
pub mod conv;
pub mod geglu;
pub mod group_norm;
pub mod linear;
pub mod softmax;
