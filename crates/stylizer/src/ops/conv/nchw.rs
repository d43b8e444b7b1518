//! Stride-1 convolution on the CPU without an im2col buffer: the k×k taps are k² GEMMs
//! accumulated into one output, each reading a shifted view of the zero-padded NCHW input.
//!
//! With the output computed on the padded width (`Wp` columns per row, the last `k - 1`
//! dropped afterwards), tap (kh, kw) of input channel ci is the contiguous run
//! `padded[ci][kh·Wp + kw ..][.. Ho·Wp]`, so each GEMM is `[Cout × Cin] · [Cin × Ho·Wp]` with
//! plain strides on both operands. candle's conv2d builds im2col tiles element by element,
//! which costs more than the multiplication itself on the UNet's and VAE's shapes.
//! Stride 2 (the down-samplers) runs the same way on the input split into its four phases
//! (even/odd rows × columns): tap (kh, kw) reads phase (kh mod 2, kw mod 2) shifted by
//! (kh/2, kw/2), so the nine GEMMs of a 3×3 kernel stay nine GEMMs of the same size.
//! Other cases (other strides, f16, GPU) use candle's conv2d.
//!
//! Why not [`crate::ops::conv::nhwc`], the upscaler's NHWC conv: the UNet and VAE run on candle
//! tensors whose other ops (group norm, attention, upsampling) are NCHW, and converting
//! NCHW↔NHWC around every conv costs 10–45 % (shared/DESIGN.md); the upscaler's nets are only
//! convs and activations, so they stay NHWC end to end and fuse bias/activation/residual.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::ops::{f32_slice, SharedPtr};

/// The GEMM convolution as a candle op on (input, taps `[k·k, out, in]`) and, as a three-input
/// op, a residual of the output's shape added in the same pass; bias fused. With `upsample`,
/// the input is first resized (nearest) to that size while the bands are filled, as
/// `upsample_nearest2d` would, without materialising the upsampled tensor.
struct ShiftedGemmConv<'a> {
    padding: usize,
    bias: Option<&'a [f32]>,
    upsample: Option<(usize, usize)>,
    /// The input is the phase split of a stride-2 convolution's ([`phases`]).
    stride2: bool,
}

/// One GEMM of a band: weight block `weight` of the taps (`[cout, cin]`) times the input
/// planes from `channel` on (`cin` of them), read `dy` rows and `dx` columns on.
#[derive(Clone, Copy)]
struct TapGemm {
    weight: usize,
    channel: usize,
    cin: usize,
    dy: usize,
    dx: usize,
}

/// Output pixels (on the padded width) per band. A band's nine GEMMs accumulate into a
/// `cout × pixels` block that stays in cache between taps; on the VAE's full-resolution
/// levels one unbanded output is 200–400 MB, streamed through memory once per tap.
/// 1024–2048 measured best on the UNet and VAE shapes (conv_bench), 4096 and up 10–30 % slower.
const BAND_PIXELS: usize = 2048;

thread_local! {
    /// A band's zero-padded input rows and its output on the padded width, kept per thread
    /// so that a band allocates nothing (fresh pages cost more than the copy).
    static BAND: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
}

/// Sizes of one convolution, batch item excluded; `h`, `w` are the (upsampled) input's.
/// A stride-2 convolution of padding p is a stride-1 one over the input's four phases
/// (`split: Some(p)`): `cin` planes = 4 × the source's channels, phase `2a + b` holding padded
/// rows `2u + a` and columns `2v + b`, `h`, `w` the phases' size, `pad` 0.
#[derive(Clone, Copy)]
struct Geometry {
    split: Option<usize>,
    cin: usize,
    h: usize,
    w: usize,
    src_h: usize,
    src_w: usize,
    cout: usize,
    k: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    /// Padded width: each output row is computed on `wp` columns, the last `k - 1` junk.
    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }
}

/// Where input row / column `i` of the convolution reads the source: `(i · src / size)`
/// rounded down, candle's (and PyTorch's) nearest rule; the identity without upsampling.
fn nearest_map(size: usize, src: usize) -> Vec<usize> {
    let scale = src as f64 / size as f64;
    (0..size)
        .map(|i| ((i as f64 * scale) as usize).min(src - 1))
        .collect()
}

/// The four phases' rows `u0..u0 + rows` of the zero-padded (`pad`) source `x`
/// (`[c, h, w]`) into planes of `plane` elements, `wp` per row (see [`Geometry`]).
fn fill_phases(
    sin: &mut [f32],
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    pad: usize,
    (u0, rows): (usize, usize),
    (wp, plane): (usize, usize),
) {
    for (pi, dst) in sin.chunks_exact_mut(plane).take(4 * c).enumerate() {
        let (phase, ci) = (pi / c, pi % c);
        let (a, b) = (phase / 2, phase % 2);
        for (r, row) in dst.chunks_exact_mut(wp).take(rows).enumerate() {
            match (2 * (u0 + r) + a).checked_sub(pad).filter(|y| *y < h) {
                Some(y) => {
                    let src = &x[(ci * h + y) * w..][..w];
                    for (v, d) in row.iter_mut().enumerate() {
                        *d = (2 * v + b)
                            .checked_sub(pad)
                            .and_then(|sx| src.get(sx))
                            .copied()
                            .unwrap_or(0.0);
                    }
                }
                None => row.fill(0.0),
            }
        }
        dst[rows * wp..].fill(0.0);
    }
}

/// Output rows `r0..r1` of batch item `x` (`[cin, src_h, src_w]`, read through the row and
/// column maps) into `out` (`[cout, ho, wo]`), plus the same rows of `residual`
/// (`[cout, ho, wo]`) when given.
///
/// # Safety
/// `out` points at a `cout × ho × wo` buffer whose rows `r0..r1` of every channel no other
/// thread touches during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_band(
    g: Geometry,
    x: &[f32],
    (row_map, col_map): (&[usize], Option<&[usize]>),
    taps: &[f32],
    gemms: &[TapGemm],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: SharedPtr,
    r0: usize,
    r1: usize,
    par: gemm::Parallelism,
) {
    let Geometry {
        split,
        cin,
        h,
        w,
        src_h,
        src_w,
        cout,
        k,
        pad,
        ho,
        wo,
    } = g;
    let wp = g.wp();
    let rows_in = r1 - r0 + k - 1;
    // The last tap's view runs k - 1 elements past a plane's rows.
    let plane = rows_in * wp + k - 1;
    let n = (r1 - r0) * wp;
    BAND.with(|cell| {
        let (sin, sout) = &mut *cell.borrow_mut();
        if sin.len() < cin * plane {
            sin.resize(cin * plane, 0.0);
        }
        if sout.len() < cout * n {
            sout.resize(cout * n, 0.0);
        }
        // Every element of the planes is written: no clearing between calls.
        if let Some(p) = split {
            fill_phases(
                sin,
                x,
                (cin / 4, src_h, src_w),
                p,
                (r0, rows_in),
                (wp, plane),
            );
        }
        for (ci, dst) in sin
            .chunks_exact_mut(plane)
            .take(if split.is_some() { 0 } else { cin })
            .enumerate()
        {
            for (pr, row) in dst.chunks_exact_mut(wp).take(rows_in).enumerate() {
                match (r0 + pr).checked_sub(pad).filter(|y| *y < h) {
                    Some(y) => {
                        let src = &x[(ci * src_h + row_map[y]) * src_w..][..src_w];
                        row[..pad].fill(0.0);
                        match col_map {
                            None => row[pad..pad + w].copy_from_slice(src),
                            Some(map) => {
                                for (d, &sx) in row[pad..pad + w].iter_mut().zip(map) {
                                    *d = src[sx];
                                }
                            }
                        }
                        row[pad + w..].fill(0.0);
                    }
                    None => row.fill(0.0),
                }
            }
            dst[rows_in * wp..].fill(0.0);
        }
        for (i, t) in gemms.iter().enumerate() {
            // SAFETY: dst is sout's first cout × n elements (row stride n); lhs is the tap's
            // cout × t.cin block; rhs row ci starts at (t.channel + ci)·plane + dy·wp + dx
            // (dy, dx < k) and spans n elements, ending at most at
            // (t.channel + ci)·plane + rows_in·wp + k - 1 = (t.channel + ci + 1)·plane.
            gemm::gemm(
                cout,
                n,
                t.cin,
                sout.as_mut_ptr(),
                1,
                n as isize,
                i > 0,
                taps.as_ptr().add(t.weight * cout * t.cin),
                1,
                t.cin as isize,
                sin.as_ptr().add(t.channel * plane + t.dy * wp + t.dx),
                1,
                plane as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        for co in 0..cout {
            let b = bias.map_or(0.0, |b| b[co]);
            for r in r0..r1 {
                let src = &sout[co * n + (r - r0) * wp..][..wo];
                let at = (co * ho + r) * wo;
                let dst = std::slice::from_raw_parts_mut(out.0.add(at), wo);
                match residual {
                    Some(res) => {
                        for ((d, s), r) in dst.iter_mut().zip(src).zip(&res[at..at + wo]) {
                            *d = *s + b + *r;
                        }
                    }
                    None => {
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = *s + b;
                        }
                    }
                }
            }
        }
    });
}

impl CustomOp2 for ShiftedGemmConv<'_> {
    fn name(&self) -> &'static str {
        "shifted-gemm-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = CustomOp2::name(self);
        self.run(f32_slice(op, s1, l1)?, l1, f32_slice(op, s2, l2)?, l2, None)
    }
}

impl CustomOp3 for ShiftedGemmConv<'_> {
    fn name(&self) -> &'static str {
        "shifted-gemm-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = CustomOp3::name(self);
        let residual = (f32_slice(op, s3, l3)?, l3.shape());
        self.run(
            f32_slice(op, s1, l1)?,
            l1,
            f32_slice(op, s2, l2)?,
            l2,
            Some(residual),
        )
    }
}

impl ShiftedGemmConv<'_> {
    /// What the op reads: `xs` in f32, contiguous.
    fn input(&self, xs: &Tensor) -> Result<Tensor> {
        xs.to_dtype(DType::F32)?.contiguous()
    }

    fn run(
        &self,
        x: &[f32],
        l1: &Layout,
        taps: &[f32],
        l2: &Layout,
        residual: Option<(&[f32], &Shape)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, cin, src_h, src_w) = l1.shape().dims4()?;
        let (h, wd) = self.upsample.unwrap_or((src_h, src_w));
        let (kk, cout, cin_w) = l2.shape().dims3()?;
        let kernel = (kk as f64).sqrt() as usize;
        // Stride 2 runs as a stride-1 sweep over the four phases ([`Geometry`]).
        let k = match self.stride2 {
            true => kernel.div_ceil(2),
            false => kernel,
        };
        if cin_w != cin || kernel * kernel != kk || self.bias.is_some_and(|b| b.len() != cout) {
            candle_core::bail!(
                "shifted-gemm-conv2d: taps {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        let gemms: Vec<TapGemm> = (0..kk)
            .map(|t| {
                let (kh, kw) = (t / kernel, t % kernel);
                match self.stride2 {
                    true => TapGemm {
                        weight: t,
                        channel: ((kh % 2) * 2 + kw % 2) * cin_w,
                        cin: cin_w,
                        dy: kh / 2,
                        dx: kw / 2,
                    },
                    false => TapGemm {
                        weight: t,
                        channel: 0,
                        cin,
                        dy: kh,
                        dx: kw,
                    },
                }
            })
            .collect();
        let (hp, wp) = (h + 2 * self.padding, wd + 2 * self.padding);
        if hp < kernel || wp < kernel {
            candle_core::bail!("shifted-gemm-conv2d: input smaller than the kernel")
        }
        // The phases carry the padding.
        let (split, planes, h, wd, pad) = match self.stride2 {
            true => (
                Some(self.padding),
                4 * cin,
                hp.div_ceil(2),
                wp.div_ceil(2),
                0,
            ),
            false => (None, cin, h, wd, self.padding),
        };
        let (hp, wp) = (h + 2 * pad, wd + 2 * pad);
        let g = Geometry {
            split,
            cin: planes,
            h,
            w: wd,
            src_h,
            src_w,
            cout,
            k,
            pad,
            ho: hp - k + 1,
            wo: wp - k + 1,
        };
        // Bands of whole rows, as many per item as fill BAND_PIXELS, a multiple of the thread
        // count so that no thread idles at the end.
        let threads = candle_core::utils::get_num_threads();
        let mut bands = (g.ho * wp).div_ceil(BAND_PIXELS);
        if bands > 1 {
            bands = bands.div_ceil(threads) * threads;
        }
        let rows = g.ho.div_ceil(bands.min(g.ho));
        let bands = g.ho.div_ceil(rows);
        let shape = Shape::from((b, cout, g.ho, g.wo));
        if let Some((_, rs)) = residual {
            if rs != &shape {
                candle_core::bail!("shifted-gemm-conv2d: residual {rs:?} for output {shape:?}")
            }
        }
        let (item_in, item_out) = (cin * src_h * src_w, cout * g.ho * g.wo);
        let row_map = nearest_map(h, src_h);
        let col_map = (wd != src_w).then(|| nearest_map(wd, src_w));
        let mut out = vec![0f32; b * item_out];
        let base = SharedPtr(out.as_mut_ptr());
        let job = |j: usize, par: gemm::Parallelism| {
            let (bi, band) = (j / bands, j % bands);
            let r0 = band * rows;
            let dst = base.offset(bi * item_out);
            // SAFETY: job j alone writes rows r0..r0+rows of item bi.
            unsafe {
                conv_band(
                    g,
                    &x[bi * item_in..][..item_in],
                    (&row_map, col_map.as_deref()),
                    taps,
                    &gemms,
                    self.bias,
                    residual.map(|(r, _)| &r[bi * item_out..][..item_out]),
                    dst,
                    r0,
                    (r0 + rows).min(g.ho),
                    par,
                )
            }
        };
        if b * bands >= threads {
            (0..b * bands)
                .into_par_iter()
                .for_each(|j| job(j, gemm::Parallelism::None));
        } else {
            // Too few bands to share out (small images): the GEMMs split the work instead.
            for j in 0..b * bands {
                job(j, gemm::Parallelism::Rayon(threads))
            }
        }
        Ok((CpuStorage::F32(out), shape))
    }
}

/// A 2-D convolution layer (weights `weight` [out, in, k, k] and `bias`, as in PyTorch).
#[derive(Debug, Clone)]
pub enum Conv2d {
    /// f32 on the CPU, stride 1 (or 2 with an odd kernel): the weight kept only as taps
    /// `[k·k, out, in]`.
    Gemm {
        taps: Tensor,
        bias: Option<Vec<f32>>,
        padding: usize,
        stride2: bool,
    },
    /// Everything else: candle's convolution.
    Candle(candle_nn::Conv2d),
}

impl Conv2d {
    /// Takes over a candle convolution (same weights and settings).
    pub fn new(inner: candle_nn::Conv2d, config: Conv2dConfig) -> Result<Self> {
        let w = inner.weight();
        let (cout, cin, kh, kw) = w.dims4()?;
        let gemm = crate::ops::is_cpu_f32(w)
            && (config.stride == 1 || (config.stride == 2 && kh % 2 == 1))
            && config.dilation == 1
            && config.groups == 1
            && kh == kw;
        if !gemm {
            return Ok(Self::Candle(inner));
        }
        Ok(Self::Gemm {
            taps: w
                .permute((2, 3, 0, 1))?
                .reshape((kh * kw, cout, cin))?
                .contiguous()?,
            bias: inner.bias().map(|b| b.to_vec1()).transpose()?,
            padding: config.padding,
            stride2: config.stride == 2,
        })
    }

    /// Whether it runs on the CPU kernel here (else on candle's convolution).
    pub fn is_cpu_kernel(&self) -> bool {
        matches!(self, Self::Gemm { .. })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::Gemm { taps, .. } => taps.dtype(),
            Self::Candle(c) => c.weight().dtype(),
        }
    }
}

impl Conv2d {
    /// The CPU op for this layer and its taps, or candle's layer that runs it instead.
    fn op(
        &self,
        upsample: Option<(usize, usize)>,
    ) -> std::result::Result<(&Tensor, ShiftedGemmConv<'_>), &candle_nn::Conv2d> {
        match self {
            Self::Candle(c) => Err(c),
            Self::Gemm {
                taps,
                bias,
                padding,
                stride2,
            } => Ok((
                taps,
                ShiftedGemmConv {
                    padding: *padding,
                    bias: bias.as_deref(),
                    upsample,
                    stride2: *stride2,
                },
            )),
        }
    }

    /// `residual + conv(xs)`, the addition fused into the convolution's output pass on the
    /// CPU path.
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match self.op(None) {
            Ok((taps, op)) => op.input(xs)?.apply_op3_no_bwd(
                taps,
                &residual.to_dtype(DType::F32)?.contiguous()?,
                &op,
            ),
            Err(c) => residual + c.forward(xs)?,
        }
    }

    /// `conv(upsample_nearest2d(xs, h, w))`; on the CPU path the upsampled input is never
    /// materialised (on the VAE's last level it would be 400 MB).
    pub fn forward_upsampled(&self, xs: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        self.forward_maybe_upsampled(xs, Some(size))
    }

    fn forward_maybe_upsampled(
        &self,
        xs: &Tensor,
        upsample: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        match (self.op(upsample), upsample) {
            (Ok((_, op)), Some(_)) if op.stride2 => {
                candle_core::bail!("conv2d: stride 2 with up-sampling")
            }
            (Ok((taps, op)), _) => op.input(xs)?.apply_op2_no_bwd(taps, &op),
            (Err(c), Some((h, w))) => c.forward(&xs.upsample_nearest2d(h, w)?),
            (Err(c), None) => c.forward(xs),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_maybe_upsampled(xs, None)
    }
}

/// `candle_nn::conv2d` with the faster CPU path.
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::new(candle_nn::conv2d(cin, cout, k, config, vb)?, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (cin, cout, k, pad, h, w) in
            // The last shape spans several bands (BAND_PIXELS) with a short last band.
            [
                (5, 7, 3, 1, 9, 13),
                (3, 4, 3, 0, 6, 5),
                (2, 3, 5, 2, 7, 8),
                (6, 4, 1, 0, 5, 7),
                (4, 6, 3, 1, 10, 12),
                (3, 4, 3, 1, 131, 81),
            ]
        {
            let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, cout, &dev)?;
            let config = Conv2dConfig {
                padding: pad,
                ..Default::default()
            };
            let inner = candle_nn::Conv2d::new(wt, Some(bias), config);
            let ours = Conv2d::new(inner.clone(), config)?;
            assert!(matches!(ours, Conv2d::Gemm { .. }));
            let ours = ours.forward(&x)?;
            let theirs = inner.forward(&x)?;
            assert_eq!(ours.dims(), theirs.dims());
            let d: f32 = (ours - &theirs)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar()?;
            assert!(d < 1e-4, "k{k} pad{pad}: max abs {d}");
            let res = Tensor::randn(0f32, 1.0, theirs.shape(), &dev)?;
            let fused = Conv2d::new(inner.clone(), config)?.forward_residual(&x, &res)?;
            let d: f32 = (fused - (theirs + res)?)?.abs()?.max_all()?.to_scalar()?;
            assert!(d < 1e-4, "k{k} pad{pad} residual: max abs {d}");
            // Stride 2 (odd kernels): the phase split.
            if k % 2 == 1 {
                let config = Conv2dConfig {
                    stride: 2,
                    ..config
                };
                let wt = inner.weight().clone();
                let s2 = candle_nn::Conv2d::new(wt, inner.bias().cloned(), config);
                let ours = Conv2d::new(s2.clone(), config)?;
                assert!(matches!(ours, Conv2d::Gemm { stride2: true, .. }));
                let (ours, theirs) = (ours.forward(&x)?, s2.forward(&x)?);
                assert_eq!(ours.dims(), theirs.dims(), "k{k} pad{pad} stride 2");
                let d: f32 = (ours - theirs)?.abs()?.max_all()?.to_scalar()?;
                assert!(d < 1e-4, "k{k} pad{pad} stride 2: max abs {d}");
            }
            // Nearest upsampling to twice the size and to an odd size (the UNet's
            // `upsample_size`), fused into the band fill.
            for (uh, uw) in [(2 * h, 2 * w), (2 * h - 1, 2 * w + 1)] {
                let fused = Conv2d::new(inner.clone(), config)?.forward_upsampled(&x, (uh, uw))?;
                let want = inner.forward(&x.upsample_nearest2d(uh, uw)?)?;
                let d: f32 = (fused - want)?.abs()?.max_all()?.to_scalar()?;
                assert!(
                    d < 1e-4,
                    "k{k} pad{pad} upsampled to {uh}x{uw}: max abs {d}"
                );
            }
        }
        Ok(())
    }
}
