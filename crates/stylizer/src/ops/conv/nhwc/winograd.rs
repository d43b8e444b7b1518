//! The 3×3 convolution by Winograd's minimal filtering F(2×2, 3×3): "Fast Algorithms for
//! Convolutional Neural Networks", Lavin & Gray 2016 (arXiv:1509.09308), section 4.
//!
//! Why: the super-resolution nets spent 90 % of their time in gemm's microkernel already
//! (perf), so only fewer multiplications make them faster. F(2×2, 3×3) makes each 2×2 output
//! tile from a 4×4 input tile with 16 products per channel pair instead of 36: 16 GEMMs, one
//! per position ξ of the transformed tile, `tiles × cin` by `cin × cout`, between an input and
//! an output transform that only add and subtract. The transforms' coefficients are 0, ±1 and
//! ±½, so the result stays at f32 rounding level (checked against candle's conv in the tests).
//!
//! Layouts are chosen so that gemm reads every operand in place: V `[ξ][tile][cin]`,
//! U `[ξ][cin][cout]`, M `[ξ][tile][cout]` (after gemm's own transpose to a column-major
//! destination the weights are its column-major lhs and V a unit-stride rhs).

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{epilogue_pixel, Act, Residual};
use crate::ops::SharedPtr;

/// Tiles along a row per task (the scratch is 16 × TILES × (cin + cout) floats).
const TILES: usize = 64;

thread_local! {
    /// Per thread: input patch, V and M.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = RefCell::default();
}

/// Whether the Winograd form is used: wide enough convolutions (the RGB input and output
/// layers keep the direct GEMMs, whose cost is small there).
pub(super) fn applies(cin: usize, cout: usize) -> bool {
    cin >= 16 && cout >= 16
}

/// U = G·g·Gᵀ per channel pair, `[16][cin][cout]`, from weights `[kh][kw][cin][cout]`.
pub(super) fn weights(w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0f32; 16 * cin * cout];
    for ci in 0..cin {
        for co in 0..cout {
            let g = |kh: usize, kw: usize| w[((kh * 3 + kw) * cin + ci) * cout + co] as f64;
            for (i, gi) in G.iter().enumerate() {
                for (j, gj) in G.iter().enumerate() {
                    let mut acc = 0f64;
                    for (kh, a) in gi.iter().enumerate() {
                        for (kw, b) in gj.iter().enumerate() {
                            acc += a * g(kh, kw) * b;
                        }
                    }
                    u[((i * 4 + j) * cin + ci) * cout + co] = acc as f32;
                }
            }
        }
    }
    u
}

/// Sizes of one call: image `h`×`w`, source and destination pixel strides, channels.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub h: usize,
    pub w: usize,
    pub ss: usize,
    pub ds: usize,
    pub cin: usize,
    pub cout: usize,
}

/// `o = Bᵀ-row(i)`: o0 = i0 − i2, o1 = i1 + i2, o2 = i2 − i1, o3 = i1 − i3, element-wise
/// over `n` values (Bᵀ of F(2×2, 3×3), applied to rows and then to columns).
///
/// # Safety
/// Every pointer covers `n` values; outputs do not overlap inputs.
#[inline(always)]
unsafe fn input_transform(o: [*mut f32; 4], i: [*const f32; 4], n: usize) {
    for c in 0..n {
        let (a, b, d, e) = (*i[0].add(c), *i[1].add(c), *i[2].add(c), *i[3].add(c));
        *o[0].add(c) = a - d;
        *o[1].add(c) = b + d;
        *o[2].add(c) = d - b;
        *o[3].add(c) = b - e;
    }
}

/// `o = Aᵀ-row(i)`: o0 = i0 + i1 + i2, o1 = i1 − i2 − i3.
///
/// # Safety
/// As [`input_transform`].
#[inline(always)]
unsafe fn output_transform(o: [*mut f32; 2], i: [*const f32; 4], n: usize) {
    for c in 0..n {
        let (a, b, d, e) = (*i[0].add(c), *i[1].add(c), *i[2].add(c), *i[3].add(c));
        *o[0].add(c) = a + b + d;
        *o[1].add(c) = b - d - e;
    }
}

simd_dispatch! {
    /// Tiles `t0..t0+n` of tile row `row`: input transform into `v`.
    fn transform_inputs(
        g: Geometry,
        src: SharedPtr,
        tiles: (usize, usize, usize),
        patch: &mut [f32],
        v: &mut [f32],
    ) {
        let (row, t0, n) = tiles;
        let (cin, pw) = (g.cin, g.w + 2);
        let (patch, tmp) = patch.split_at_mut(16 * cin);
        for t in 0..n {
            // The 4×4 padded pixels from (2·row, 2·(t0 + t)); rows or columns past the padded
            // image (odd sizes) read as zeros.
            for i in 0..4 {
                let py = 2 * row + i;
                for j in 0..4 {
                    let px = 2 * (t0 + t) + j;
                    let dst = &mut patch[(i * 4 + j) * cin..][..cin];
                    if py <= g.h + 1 && px <= g.w + 1 {
                        // SAFETY: an in-bounds pixel of the source (channels 0..cin ≤ ss).
                        let p = unsafe { std::slice::from_raw_parts(src.0.add((py * pw + px) * g.ss), cin) };
                        dst.copy_from_slice(p);
                    } else {
                        dst.fill(0.0);
                    }
                }
            }
            let pp = patch.as_ptr();
            let tp = tmp.as_mut_ptr();
            let vp = v.as_mut_ptr();
            let at = |i: usize, j: usize| (i * 4 + j) * cin;
            // SAFETY: patch and tmp hold 16·cin values, v 16·n·cin; the four outputs and
            // inputs of each call are distinct cin-long rows of different buffers.
            unsafe {
                for j in 0..4 {
                    input_transform(
                        [tp.add(at(0, j)), tp.add(at(1, j)), tp.add(at(2, j)), tp.add(at(3, j))],
                        [pp.add(at(0, j)), pp.add(at(1, j)), pp.add(at(2, j)), pp.add(at(3, j))],
                        cin,
                    );
                }
                let out = |xi: usize| vp.add((xi * n + t) * cin);
                for i in 0..4 {
                    input_transform(
                        [out(i * 4), out(i * 4 + 1), out(i * 4 + 2), out(i * 4 + 3)],
                        [tp.add(at(i, 0)), tp.add(at(i, 1)), tp.add(at(i, 2)), tp.add(at(i, 3))],
                        cin,
                    );
                }
            }
        }
    }
}

simd_dispatch! {
    /// Output transform of `m` for the same tiles, then the epilogue, into `dst`'s channels
    /// `off..off + cout` of the pixels inside the image.
    fn write_outputs(
        g: Geometry,
        m: &[f32],
        tiles: (usize, usize, usize),
        tmp: &mut [f32],
        out: (SharedPtr, usize),
        epilogue: (&[f32], Act<'_>, Option<Residual<'_>>),
    ) {
        let ((row, t0, n), (dst, off)) = (tiles, out);
        let (bias, act, res) = epilogue;
        let (cout, pw) = (g.cout, g.w + 2);
        let (half, y) = tmp.split_at_mut(8 * cout);
        let mp = m.as_ptr();
        for t in 0..n {
            let at = |xi: usize| mp.wrapping_add((xi * n + t) * cout);
            let hp = half.as_mut_ptr();
            let yp = y.as_mut_ptr();
            // SAFETY: m holds 16·n·cout values; half 8·cout, y 4·cout (checked by the
            // split); outputs and inputs are distinct rows.
            unsafe {
                for j in 0..4 {
                    output_transform(
                        [hp.add(j * cout), hp.add((4 + j) * cout)],
                        [at(j), at(4 + j), at(8 + j), at(12 + j)],
                        cout,
                    );
                }
                for i in 0..2 {
                    let r = |j: usize| hp.add((i * 4 + j) * cout) as *const f32;
                    output_transform(
                        [yp.add(i * 2 * cout), yp.add((i * 2 + 1) * cout)],
                        [r(0), r(1), r(2), r(3)],
                        cout,
                    );
                }
            }
            for i in 0..2 {
                let oy = 2 * row + i;
                for j in 0..2 {
                    let ox = 2 * (t0 + t) + j;
                    if oy >= g.h || ox >= g.w {
                        continue;
                    }
                    let pix = (oy + 1) * pw + ox + 1;
                    // SAFETY: an interior pixel of dst; this task alone writes it, and
                    // only channels off..off+cout, which no task reads.
                    let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(pix * g.ds + off), cout) };
                    o.copy_from_slice(&y[(i * 2 + j) * cout..][..cout]);
                    let r = res.map(|r| (&r.base.data[pix * r.base.stride..][..cout], r.scale));
                    epilogue_pixel(o, bias, act, r);
                }
            }
        }
    }
}

/// `dst[off..off+cout] = epilogue(conv(src[0..cin]))` on every interior pixel.
///
/// # Safety
/// As `Conv3x3::run_raw`: `src` and `dst` are padded images of `g`'s size and strides; the
/// channels read and written do not overlap if they are the same buffer.
pub(super) unsafe fn conv(
    g: Geometry,
    src: SharedPtr,
    u: &[f32],
    dst: SharedPtr,
    off: usize,
    epilogue: (&[f32], Act<'_>, Option<Residual<'_>>),
) {
    let (cin, cout) = (g.cin, g.cout);
    let (tile_rows, tiles) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let chunks = tiles.div_ceil(TILES);
    (0..tile_rows * chunks).into_par_iter().for_each(|job| {
        let (src, dst) = (src, dst);
        let (row, t0) = (job / chunks, job % chunks * TILES);
        let n = TILES.min(tiles - t0);
        SCRATCH.with(|cell| {
            let [patch, v, m] = &mut *cell.borrow_mut();
            patch.resize(32 * cin.max(cout), 0.0);
            v.resize(16 * TILES * cin, 0.0);
            m.resize(16 * TILES * cout, 0.0);
            transform_inputs(g, src, (row, t0, n), patch, v);
            for xi in 0..16 {
                // SAFETY: V_ξ is n × cin, U_ξ cin × cout, M_ξ n × cout, all row-major.
                unsafe {
                    gemm::gemm(
                        n,
                        cout,
                        cin,
                        m.as_mut_ptr().add(xi * n * cout),
                        1,
                        cout as isize,
                        false,
                        v.as_ptr().add(xi * n * cin),
                        1,
                        cin as isize,
                        u.as_ptr().add(xi * cin * cout),
                        1,
                        cout as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            write_outputs(g, m, (row, t0, n), patch, (dst, off), epilogue);
        });
    });
}
