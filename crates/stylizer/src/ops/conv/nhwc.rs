//! Fast CPU 3×3 convolution ("same" padding, stride 1) on NHWC activations, built on the
//! `gemm` crate directly, with no im2col.
//!
//! Why: candle's conv2d spends most of its time in im2col (scattered single-element stores)
//! and runs at a quarter of PyTorch's speed on the 64-channel, full-resolution shapes of the
//! super-resolution nets and the SD VAE (shared/DESIGN.md has the table). Here an activation is
//! an [`Nhwc`] buffer with a one-pixel zero border, so a padded row is `(W+2)` pixels of
//! `stride` floats. Number the output pixels `m = y·(W+2) + x` (the two `x ≥ W` per row are
//! junk). For a fixed kernel row `kh` the "im2col row" of pixel `m` is the 3 pixels that start
//! at padded pixel `m + kh·(W+2)`: when the buffer holds exactly `cin` channels per pixel these
//! are `3·cin` contiguous floats, so the whole kernel row is one gemm with a strided lhs
//! (row step = one pixel, rows overlap): M = pixels, K = 3·cin, N = cout. Three gemms (one per
//! `kh`) accumulate into the output. When the input is a channel prefix of a wider buffer (the
//! dense blocks of RRDBNet keep their concatenation in one buffer) the taps are not
//! contiguous and each of the 9 taps is its own gemm with K = cin.
//!
//! The output is written straight into the interior of the destination's padded layout
//! (`dst` starts at padded pixel `W+3`), so the junk columns land on border pixels; the
//! epilogue (bias, activation, residual) zeroes them again. Work is split into bands of rows,
//! one gemm sequence + epilogue per band on one rayon thread, so the epilogue runs on data
//! that is still in cache.
//! Convolutions with at least 16 input and output channels (all but the RGB layers) run as
//! Winograd F(2×2, 3×3) instead (`winograd`): 2.25× fewer multiplications, same layouts.
//! The SD UNet and VAE use `stylize::conv` (NCHW, on candle tensors) for the reason given there.

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::ops::SharedPtr;
use crate::{Error, Result};

mod winograd;

/// An `h`×`w` image with `stride` floats per pixel, stored with a one-pixel zero border.
///
/// Invariant: border pixels are always zero (every writer in this module restores them), so
/// buffers can be reused without clearing.
pub struct Nhwc {
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    data: Vec<f32>,
}

impl Nhwc {
    /// A zeroed buffer. Fails with [`Error::OutOfMemory`] instead of aborting the process.
    pub fn zeros(h: usize, w: usize, stride: usize) -> Result<Self> {
        let n = (h + 2) * (w + 2) * stride;
        let mut data = Vec::new();
        data.try_reserve_exact(n).map_err(|_| {
            Error::OutOfMemory(format!(
                "{} MB for a {w}x{h}x{stride} activation",
                (n * 4) >> 20
            ))
        })?;
        data.resize(n, 0.0);
        Ok(Self { h, w, stride, data })
    }

    /// Bytes a buffer of this size needs.
    pub fn bytes(h: usize, w: usize, stride: usize) -> usize {
        (h + 2) * (w + 2) * stride * 4
    }

    /// Index of channel 0 of interior pixel (`y`, `x`).
    #[inline]
    pub fn at(&self, y: usize, x: usize) -> usize {
        ((y + 1) * (self.w + 2) + x + 1) * self.stride
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Writes a planar `[c][h][w]` image into channels `0..c` (rows in parallel).
    pub fn set_from_planar(&mut self, planar: &[f32], c: usize) {
        let (h, w, s) = (self.h, self.w, self.stride);
        assert!(c <= s && planar.len() == c * h * w);
        let row = s * (w + 2);
        self.data[row..row * (h + 1)]
            .par_chunks_mut(row)
            .enumerate()
            .for_each(|(y, d)| {
                for ch in 0..c {
                    for (x, v) in planar[(ch * h + y) * w..][..w].iter().enumerate() {
                        d[(x + 1) * s + ch] = *v;
                    }
                }
            });
    }

    /// Copies channels `0..c` of `src` into channels `0..c` of `self` (same size).
    pub fn copy_channels_from(&mut self, src: &Nhwc, c: usize) {
        assert!(src.h == self.h && src.w == self.w && c <= src.stride && c <= self.stride);
        let (ds, ss) = (self.stride, src.stride);
        self.data
            .par_chunks_mut(ds * (self.w + 2))
            .zip(src.data.par_chunks(ss * (src.w + 2)))
            .for_each(|(d, s)| {
                for (dp, sp) in d.chunks_mut(ds).zip(s.chunks(ss)) {
                    dp[..c].copy_from_slice(&sp[..c]);
                }
            });
    }

    /// `self[0..c] = self[0..c] * scale + other[0..c]` on every pixel (borders stay zero).
    pub fn scale_add(&mut self, scale: f32, other: &Nhwc, c: usize) {
        assert!(other.h == self.h && other.w == self.w);
        let (ds, ss) = (self.stride, other.stride);
        self.data
            .par_chunks_mut(ds * (self.w + 2))
            .zip(other.data.par_chunks(ss * (other.w + 2)))
            .for_each(|(d, s)| {
                for (dp, sp) in d.chunks_mut(ds).zip(s.chunks(ss)) {
                    for (a, b) in dp[..c].iter_mut().zip(&sp[..c]) {
                        *a = *a * scale + *b;
                    }
                }
            });
    }

    /// Nearest-neighbour ×2 upsampling of channels `0..c` of `src` into `self`
    /// (`self` must be `2h`×`2w`).
    pub fn upsample2_from(&mut self, src: &Nhwc, c: usize) {
        assert!(self.h == 2 * src.h && self.w == 2 * src.w);
        let (ds, dw) = (self.stride, self.w);
        let row = ds * (dw + 2);
        // Padded row 0 and h+1 are border; interior row y of self reads row y/2 of src.
        self.data[row..row * (self.h + 1)]
            .par_chunks_mut(row)
            .enumerate()
            .for_each(|(y, d)| {
                let sy = y / 2;
                for x in 0..dw {
                    let s = src.at(sy, x / 2);
                    let o = (x + 1) * ds;
                    d[o..o + c].copy_from_slice(&src.data[s..s + c]);
                }
            });
    }

    /// Channels `0..c` as a planar `[c][h][w]` vector, in blocks of 16 channels (one cache
    /// line of each pixel read per block) in parallel.
    pub fn to_planar(&self, c: usize) -> Vec<f32> {
        const BLOCK: usize = 16;
        let plane = self.h * self.w;
        assert!(c <= self.stride);
        let mut out = vec![0f32; c * plane];
        out.par_chunks_mut(BLOCK * plane)
            .enumerate()
            .for_each(|(blk, out)| {
                let ch0 = blk * BLOCK;
                for y in 0..self.h {
                    for x in 0..self.w {
                        let px = &self.data[self.at(y, x) + ch0..];
                        for (ch, o) in out.chunks_exact_mut(plane).enumerate() {
                            o[y * self.w + x] = px[ch];
                        }
                    }
                }
            });
        out
    }
}

/// Activation buffers kept between calls: a network run on same-sized tiles allocates nothing
/// after the first tile (fresh pages cost ~100 ms of page faults per call on a full frame).
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<f32>>>,
}

impl BufferPool {
    /// A zeroed buffer, reusing the smallest free one that is large enough.
    pub fn take(&self, h: usize, w: usize, stride: usize) -> Result<Nhwc> {
        let n = (h + 2) * (w + 2) * stride;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..free.len())
            .filter(|&i| free[i].capacity() >= n)
            .min_by_key(|&i| free[i].capacity());
        match best {
            Some(i) => {
                let mut data = free.swap_remove(i);
                data.clear();
                data.resize(n, 0.0);
                Ok(Nhwc { h, w, stride, data })
            }
            None => Nhwc::zeros(h, w, stride),
        }
    }

    pub fn put(&self, buf: Nhwc) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf.data);
    }

    /// Frees every pooled buffer (after an out-of-memory error, before retrying smaller).
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// What the epilogue applies after bias.
#[derive(Clone, Copy)]
pub enum Act<'a> {
    None,
    LeakyRelu(f32),
    /// One slope per output channel.
    PRelu(&'a [f32]),
}

/// `out = base[0..cout] + scale · act(conv + bias)`; `base` has the output's size.
#[derive(Clone, Copy)]
pub struct Residual<'a> {
    pub base: &'a Nhwc,
    pub scale: f32,
}

/// A 3×3 convolution with its weights in the form its algorithm reads.
pub struct Conv3x3 {
    pub cin: usize,
    pub cout: usize,
    w: Weights,
    b: Vec<f32>,
}

enum Weights {
    /// `[kh][kw][cin][cout]` (gemm's rhs, one tap at a time).
    Taps(Vec<f32>),
    /// In the Winograd domain, `[16][cin][cout]`, where [`winograd`] applies.
    Winograd(Vec<f32>),
}

/// Output pixels per band: large enough that gemm's packing is amortised, small enough that a
/// band's output stays in L2 between the gemms and the epilogue.
const BAND_PIXELS: usize = 1024;

impl Conv3x3 {
    /// From PyTorch's `[cout, cin, 3, 3]` weight and `[cout]` bias.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (cout, cin, kh, kw) = weight.dims4()?;
        if (kh, kw) != (3, 3) {
            return Err(Error::Weights(format!(
                "expected a 3x3 convolution, got {kh}x{kw}"
            )));
        }
        // [cout][cin][kh][kw] -> [kh][kw][cin][cout]
        let w = weight
            .to_dtype(DType::F32)?
            .permute((2, 3, 1, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if b.len() != cout {
            return Err(Error::Weights(format!(
                "bias has {} values for {cout} output channels",
                b.len()
            )));
        }
        let w = match winograd::applies(cin, cout) {
            true => Weights::Winograd(winograd::weights(&w, cin, cout)),
            false => Weights::Taps(w),
        };
        Ok(Self { cin, cout, w, b })
    }

    /// `dst[off..off+cout] = epilogue(conv(src[0..cin]))`, `src` and `dst` distinct.
    pub fn run(
        &self,
        src: &Nhwc,
        dst: &mut Nhwc,
        off: usize,
        act: Act<'_>,
        res: Option<Residual<'_>>,
    ) {
        assert!(src.h == dst.h && src.w == dst.w && off + self.cout <= dst.stride);
        let d = SharedPtr(dst.data.as_mut_ptr());
        // SAFETY: src and dst are distinct buffers of the same size (checked above).
        unsafe { self.run_raw(src, src.data.as_ptr(), d, dst.stride, off, act, res) }
    }

    /// Dense-block form: reads channels `0..cin` of `buf` and writes `off..off+cout`, `off ≥ cin`.
    pub fn run_inplace(&self, buf: &mut Nhwc, off: usize, act: Act<'_>) {
        assert!(off >= self.cin && off + self.cout <= buf.stride);
        let d = SharedPtr(buf.data.as_mut_ptr());
        // SAFETY: reads touch channels [0, cin), writes [off, off + cout): disjoint elements.
        unsafe { self.run_raw(buf, d.0, d, buf.stride, off, act, None) }
    }

    /// # Safety
    /// `src_ptr` points at `src`'s data (geometry taken from `src`); `dst` at a buffer with the
    /// same h, w and `dst_stride`; the channels read (`0..cin` of src) and written
    /// (`off..off+cout` of dst) must not overlap if the buffers are the same.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_raw(
        &self,
        src: &Nhwc,
        src_ptr: *const f32,
        dst: SharedPtr,
        dst_stride: usize,
        off: usize,
        act: Act<'_>,
        res: Option<Residual<'_>>,
    ) {
        let (h, w, ss) = (src.h, src.w, src.stride);
        assert!(
            self.cin <= ss,
            "input has fewer channels than the conv expects"
        );
        let taps_w = match &self.w {
            Weights::Taps(w) => w,
            Weights::Winograd(u) => {
                let geo = winograd::Geometry {
                    h,
                    w,
                    ss,
                    ds: dst_stride,
                    cin: self.cin,
                    cout: self.cout,
                };
                let src_p = SharedPtr(src_ptr as *mut f32);
                return winograd::conv(geo, src_p, u, dst, off, (&self.b, act, res));
            }
        };
        let pw = w + 2;
        let rows_per_band = (BAND_PIXELS / pw).max(1);
        let bands = h.div_ceil(rows_per_band);
        let src_p = SharedPtr(src_ptr as *mut f32);
        let (cin, cout) = (self.cin, self.cout);
        let contiguous = ss == cin;
        (0..bands).into_par_iter().for_each(|band| {
            // Capture the Send wrappers whole, not their raw-pointer fields.
            let (dst, src_p) = (dst, src_p);
            let y0 = band * rows_per_band;
            let y1 = (y0 + rows_per_band).min(h);
            let m0 = y0 * pw;
            // The last row's two junk pixels would read past the buffer: leave them out.
            let m = (y1 - y0) * pw - if y1 == h { 2 } else { 0 };
            let dst_band = dst.0.add((pw + 1 + m0) * dst_stride + off);
            let taps: &[(usize, usize)] = if contiguous {
                &[(0, 0), (1, 0), (2, 0)]
            } else {
                &[
                    (0, 0),
                    (0, 1),
                    (0, 2),
                    (1, 0),
                    (1, 1),
                    (1, 2),
                    (2, 0),
                    (2, 1),
                    (2, 2),
                ]
            };
            let k = if contiguous { 3 * cin } else { cin };
            for (i, &(kh, kw)) in taps.iter().enumerate() {
                let lhs = src_p.0.add((m0 + kh * pw + kw) * ss) as *const f32;
                let rhs = taps_w.as_ptr().add((kh * 3 + kw) * cin * cout);
                gemm::gemm(
                    m,
                    cout,
                    k,
                    dst_band,
                    1,
                    dst_stride as isize,
                    i > 0,
                    lhs,
                    1,
                    ss as isize,
                    rhs,
                    1,
                    cout as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for y in y0..y1 {
                let row = dst.0.add(((y + 1) * pw + 1) * dst_stride + off);
                // The row's w pixels plus its two junk pixels, which sit on the border.
                let len = (w + 1) * dst_stride + cout;
                let row = std::slice::from_raw_parts_mut(row, len);
                let res_row = res.map(|r| {
                    let at = ((y + 1) * pw + 1) * r.base.stride;
                    (
                        &r.base.data[at..at + w * r.base.stride],
                        r.base.stride,
                        r.scale,
                    )
                });
                epilogue_row(row, (w, dst_stride, cout), &self.b, act, res_row);
            }
        });
    }
}

/// Bias, activation and residual (`(base channels, scale)`) on one output pixel's channels.
#[inline(always)]
fn epilogue_pixel(o: &mut [f32], bias: &[f32], act: Act<'_>, res: Option<(&[f32], f32)>) {
    for (v, b) in o.iter_mut().zip(bias) {
        *v += *b;
    }
    match act {
        Act::None => {}
        Act::LeakyRelu(s) => o.iter_mut().for_each(|v| {
            if *v < 0.0 {
                *v *= s
            }
        }),
        Act::PRelu(s) => o.iter_mut().zip(s).for_each(|(v, s)| {
            if *v < 0.0 {
                *v *= *s
            }
        }),
    }
    if let Some((r, scale)) = res {
        o.iter_mut().zip(r).for_each(|(v, r)| *v = *r + scale * *v);
    }
}

simd_dispatch! {
    /// [`epilogue_pixel`] on the `w` pixels of one output row (`stride` floats apart, `cout`
    /// channels each), then zeros on the two junk pixels after them.
    fn epilogue_row(
        row: &mut [f32],
        geometry: (usize, usize, usize),
        bias: &[f32],
        act: Act<'_>,
        res: Option<(&[f32], usize, f32)>,
    ) {
        let (w, stride, cout) = geometry;
        for x in 0..w {
            let o = &mut row[x * stride..x * stride + cout];
            let r = res.map(|(r, rs, scale)| (&r[x * rs..x * rs + cout], scale));
            epilogue_pixel(o, bias, act, r);
        }
        row[w * stride..w * stride + cout].fill(0.0);
        row[(w + 1) * stride..(w + 1) * stride + cout].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// Our conv (contiguous and prefix-of-wider-buffer forms, with and without residual)
    /// against candle's conv2d on odd-sized images that span several bands: narrow channels
    /// (direct GEMMs) and wide ones (Winograd), odd and even sizes.
    #[test]
    fn matches_candle_conv2d() {
        assert!(!winograd::applies(5, 7) && winograd::applies(24, 16));
        for (cin, cout, h, w) in [(5, 7, 37, 150), (24, 16, 37, 151), (16, 32, 6, 140)] {
            check_against_candle(cin, cout, h, w);
        }
    }

    fn check_against_candle(cin: usize, cout: usize, h: usize, w: usize) {
        let dev = Device::Cpu;
        let x = rand(cin * h * w, 1);
        let wt = Tensor::from_vec(rand(cout * cin * 9, 2), (cout, cin, 3, 3), &dev).unwrap();
        let bias = Tensor::from_vec(rand(cout, 3), cout, &dev).unwrap();
        let xt = Tensor::from_vec(x.clone(), (1, cin, h, w), &dev).unwrap();
        let expect = xt
            .conv2d(&wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        let lrelu = candle_nn::ops::leaky_relu(&expect, 0.2).unwrap();
        let expect: Vec<f32> = expect.flatten_all().unwrap().to_vec1().unwrap();
        let lrelu: Vec<f32> = lrelu.flatten_all().unwrap().to_vec1().unwrap();
        let conv = Conv3x3::new(&wt, &bias).unwrap();
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };

        let mut src = Nhwc::zeros(h, w, cin).unwrap();
        src.set_from_planar(&x, cin);
        let mut dst = Nhwc::zeros(h, w, cout + 2).unwrap();
        conv.run(&src, &mut dst, 2, Act::None, None);
        let mut shifted = Nhwc::zeros(h, w, cout).unwrap();
        for y in 0..h {
            for xx in 0..w {
                let (a, b) = (shifted.at(y, xx), dst.at(y, xx));
                shifted.data[a..a + cout].copy_from_slice(&dst.data[b + 2..b + 2 + cout]);
            }
        }
        let d = max_diff(&shifted.to_planar(cout), &expect);
        assert!(d < 1e-5, "{cin}->{cout} {h}x{w}: {d}");
        // Borders stay zero.
        assert!(dst.data[..(w + 2) * dst.stride].iter().all(|v| *v == 0.0));
        assert!((0..h + 2).all(|r| {
            let p = r * (w + 2) * dst.stride;
            let q = (r * (w + 2) + w + 1) * dst.stride;
            dst.data[p..p + dst.stride].iter().all(|v| *v == 0.0)
                && dst.data[q..q + dst.stride].iter().all(|v| *v == 0.0)
        }));

        // Input as a prefix of a wider buffer, output into the same buffer, leaky ReLU.
        let mut wide = Nhwc::zeros(h, w, cin + cout).unwrap();
        wide.set_from_planar(&x, cin);
        conv.run_inplace(&mut wide, cin, Act::LeakyRelu(0.2));
        let planar = wide.to_planar(cin + cout);
        let d = max_diff(&planar[cin * h * w..], &lrelu);
        assert!(d < 1e-5, "{cin}->{cout} {h}x{w} in place: {d}");
        assert!(max_diff(&planar[..cin * h * w], &x) == 0.0);

        // Residual: base + 0.5 * conv.
        let mut base = Nhwc::zeros(h, w, cout).unwrap();
        let bvals = rand(cout * h * w, 4);
        base.set_from_planar(&bvals, cout);
        let mut out = Nhwc::zeros(h, w, cout).unwrap();
        let res = Residual {
            base: &base,
            scale: 0.5,
        };
        conv.run(&src, &mut out, 0, Act::None, Some(res));
        let want: Vec<f32> = expect
            .iter()
            .zip(&bvals)
            .map(|(e, b)| b + 0.5 * e)
            .collect();
        let d = max_diff(&out.to_planar(cout), &want);
        assert!(d < 1e-5, "{cin}->{cout} {h}x{w} residual: {d}");
    }

    #[test]
    fn upsample_and_scale_add() {
        let mut a = Nhwc::zeros(3, 4, 2).unwrap();
        let vals: Vec<f32> = (0..24).map(|v| v as f32).collect();
        a.set_from_planar(&vals, 2);
        let mut up = Nhwc::zeros(6, 8, 3).unwrap();
        up.upsample2_from(&a, 2);
        let p = up.to_planar(2);
        for c in 0..2 {
            for y in 0..6 {
                for x in 0..8 {
                    assert_eq!(p[(c * 6 + y) * 8 + x], vals[(c * 3 + y / 2) * 4 + x / 2]);
                }
            }
        }
        let mut b = Nhwc::zeros(3, 4, 2).unwrap();
        b.set_from_planar(&vals, 2);
        b.scale_add(0.5, &a, 2);
        let q = b.to_planar(2);
        assert!(q.iter().zip(&vals).all(|(q, v)| *q == 1.5 * v));
        assert!(up.data[..10 * 3].iter().all(|v| *v == 0.0));
    }
}
