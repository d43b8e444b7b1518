//! Dense optical flow: DIS, Kroeger et al. 2016, "Fast Optical Flow using Dense Inverse Search"
//! (ECCV), ported from OpenCV's `cv::DISOpticalFlow` (BSD: modules/video/src/dis_flow.cpp and
//! the variational refinement of modules/video/src/variational_refinement.cpp, OpenCV ≥ 4.10
//! where DIS passes ε = 0.01 to it). Not derived from the authors' GPL code.
//!
//! Per pyramid level, coarse to fine: patches on a sparse grid are matched by inverse-compositional
//! Gauss–Newton steps (structure tensors from running box sums), with spatial propagation of
//! better neighbours in a forward and a backward sweep; the sparse vectors are densified by
//! averaging the overlapping patches weighted by their photometric error; a few fixed-point
//! iterations of a variational energy (data + gradient constancy + smoothness, red–black SOR)
//! refine the dense field, which is upscaled bilinearly to seed the next level.
//!
//! Images are kept as u8 like OpenCV's, and every step follows OpenCV's arithmetic (area
//! pyramid, 3×3 Sobel, clamping, iteration counts), so the result matches `calc` up to float
//! summation order.

use rayon::prelude::*;

use super::bilinear::Taps;

/// A single-channel image, values in [0, 255] (8-bit luminance as f32), row-major.
#[derive(Clone, Debug)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Gray {
    /// Luminance of an rgb24 frame as OpenCV's COLOR_RGB2GRAY computes it (0.299 R + 0.587 G +
    /// 0.114 B, rounded to u8 as OpenCV does: 14-bit fixed point, round half up).
    pub fn from_rgb(width: usize, height: usize, rgb: &[u8]) -> Self {
        assert_eq!(rgb.len(), width * height * 3, "Gray::from_rgb: buffer size");
        // cv::RGB2Gray<uchar>: R2Y = 4899, G2Y = 9617, B2Y = 1868 (sum 2^14).
        let data = rgb
            .chunks_exact(3)
            .map(|p| {
                let y = (p[0] as u32 * 4899 + p[1] as u32 * 9617 + p[2] as u32 * 1868 + (1 << 13))
                    >> 14;
                y as f32
            })
            .collect();
        Gray {
            width,
            height,
            data,
        }
    }

    /// The image as OpenCV's DIS takes it (CV_8UC1): values rounded and clamped to u8.
    fn to_u8(&self) -> Vec<u8> {
        assert_eq!(
            self.data.len(),
            self.width * self.height,
            "Gray: buffer size"
        );
        self.data
            .iter()
            .map(|&v| v.round_ties_even().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// Dense flow: pixel (x, y) of frame A moves to (x + dx, y + dy) in frame B. `data[y*width+x] = [dx, dy]`.
#[derive(Clone, Debug)]
pub struct Flow {
    pub width: usize,
    pub height: usize,
    pub data: Vec<[f32; 2]>,
}

impl Flow {
    /// The flow at a fractional position, bilinear, clamped to the grid (edge replicate).
    pub fn sample(&self, x: f32, y: f32) -> [f32; 2] {
        let taps = Taps::new(x, y, self.width, self.height);
        let flat = self.data.as_flattened();
        [taps.sample(flat, 2, 0), taps.sample(flat, 2, 1)]
    }
}

/// OpenCV's `DISOpticalFlow::PRESET_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisPreset {
    UltraFast,
    Fast,
    Medium,
}

impl std::str::FromStr for DisPreset {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "ultrafast" => Ok(DisPreset::UltraFast),
            "fast" => Ok(DisPreset::Fast),
            "medium" => Ok(DisPreset::Medium),
            _ => Err(crate::Error::Value(format!(
                "unknown flow preset `{s}` (ultrafast, fast or medium)"
            ))),
        }
    }
}

/// The parameters of `cv::DISOpticalFlow` (same names, same meaning).
#[derive(Clone, Debug)]
pub struct DisParams {
    /// Finest pyramid level computed (0 = full resolution); the result is upscaled from it.
    pub finest_scale: usize,
    /// Side of the square patches (OpenCV's presets: 8).
    pub patch_size: usize,
    /// Distance between neighbouring patches on the sparse grid.
    pub patch_stride: usize,
    /// Gauss–Newton iterations per patch, split over the forward and backward sweeps.
    pub grad_descent_iters: usize,
    /// Fixed-point iterations of the variational refinement (0 disables it).
    pub variational_refinement_iters: usize,
    /// Smoothness weight of the refinement.
    pub alpha: f32,
    /// Gradient-constancy weight of the refinement.
    pub gamma: f32,
    /// Colour-constancy weight of the refinement.
    pub delta: f32,
    /// ε of the refinement's robust penaliser Ψ(s²) = √(s² + ε²) (OpenCV ≥ 4.10: 0.01).
    pub epsilon: f32,
    /// Compare patches after subtracting their means (robust to brightness changes).
    pub use_mean_normalization: bool,
    /// Try the neighbours' vectors as starting points (forward and backward sweep).
    pub use_spatial_propagation: bool,
}

impl DisParams {
    /// OpenCV's presets (`DISOpticalFlow::create(preset)`).
    pub fn preset(p: DisPreset) -> Self {
        let (finest_scale, patch_stride, grad_descent_iters, variational_refinement_iters) = match p
        {
            DisPreset::UltraFast => (2, 4, 12, 0),
            DisPreset::Fast => (2, 4, 16, 5),
            DisPreset::Medium => (1, 3, 25, 5),
        };
        DisParams {
            finest_scale,
            patch_size: 8,
            patch_stride,
            grad_descent_iters,
            variational_refinement_iters,
            alpha: 20.0,
            gamma: 10.0,
            delta: 5.0,
            epsilon: 0.01,
            use_mean_normalization: true,
            use_spatial_propagation: true,
        }
    }
}

impl Default for DisParams {
    /// OpenCV's default, the FAST preset.
    fn default() -> Self {
        DisParams::preset(DisPreset::Fast)
    }
}

/// Padding of the second frame so patches may leave the image (OpenCV: `border_size`).
const BORDER: usize = 16;
/// Spatial propagation runs in this many independent horizontal stripes, as OpenCV does to be
/// reproducible regardless of the thread count (vectors do not propagate across stripes).
const STRIPES: usize = 8;
/// Floor of the structure tensor determinant (OpenCV's EPS).
const EPS: f32 = 0.001;
const INF: f32 = 1e10;
/// Accumulator lanes of the patch kernels (OpenCV's presets use 8×8 patches).
const LANES: usize = 8;

/// Flow from `a` to `b` (same size).
pub fn dis_flow(a: &Gray, b: &Gray, params: &DisParams) -> Flow {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "dis_flow: frame sizes differ"
    );
    assert!(
        params.patch_size > 0 && params.patch_stride > 0,
        "dis_flow: patch size and stride must be positive"
    );
    let (w, h) = (a.width, a.height);
    let (coarsest, finest, psz) = scales(w, h, params);
    let i0 = a.to_u8();
    let i1 = b.to_u8();

    // Area pyramid as OpenCV builds it: the finest level straight from the frame, each coarser
    // one from the level below (sizes rounded down at every step).
    let mut levels: Vec<(Image, Image)> = Vec::with_capacity(coarsest - finest + 1);
    let (mut lw, mut lh) = (w >> finest, h >> finest);
    levels.push((
        area_resize(&i0, w, h, lw, lh),
        area_resize(&i1, w, h, lw, lh),
    ));
    for _ in finest..coarsest {
        let (pw, ph) = (lw, lh);
        (lw, lh) = (pw / 2, ph / 2);
        let prev = levels.last().expect("pyramid has a level");
        levels.push((
            area_resize(&prev.0.px, pw, ph, lw, lh),
            area_resize(&prev.1.px, pw, ph, lw, lh),
        ));
    }

    let search = SearchParams {
        psz,
        stride: params.patch_stride,
        grad_descent_iters: params.grad_descent_iters,
        mean_norm: params.use_mean_normalization,
        spatial: params.use_spatial_propagation,
    };
    let (cw, ch) = (levels[coarsest - finest].0.w, levels[coarsest - finest].0.h);
    let mut ux = vec![0.0f32; cw * ch];
    let mut uy = vec![0.0f32; cw * ch];
    for level in (0..levels.len()).rev() {
        let (l0, l1) = &levels[level];
        let lvl = Level::new(l0, l1, psz, params.patch_stride);
        let (sx, sy) = lvl.inverse_search(&ux, &uy, &search);
        lvl.densify(&sx, &sy, &mut ux, &mut uy);
        if params.variational_refinement_iters > 0 {
            refine(&l0.px, &l1.px, l0.w, l0.h, &mut ux, &mut uy, params);
        }
        if level > 0 {
            let next = &levels[level - 1].0;
            ux = resize_linear(&ux, l0.w, l0.h, next.w, next.h, 2.0);
            uy = resize_linear(&uy, l0.w, l0.h, next.w, next.h, 2.0);
        }
    }
    let fine = &levels[0].0;
    let scale = (1usize << finest) as f32;
    let fx = resize_linear(&ux, fine.w, fine.h, w, h, scale);
    let fy = resize_linear(&uy, fine.w, fine.h, w, h, scale);
    Flow {
        width: w,
        height: h,
        data: fx.into_iter().zip(fy).map(|(x, y)| [x, y]).collect(),
    }
}

/// (coarsest scale, finest scale, patch size) as `DISOpticalFlowImpl::calc` chooses them: deep
/// enough for motions up to a quarter of the frame while a level still holds a patch; frames
/// too small for the requested finest scale get OpenCV's `autoSelectPatchSizeAndScales`.
fn scales(w: usize, h: usize, p: &DisParams) -> (usize, usize, usize) {
    let log2 = |v: f64| v.ln() / std::f64::consts::LN_2;
    let by_motion = (log2(w.max(h) as f64 / (4.0 * p.patch_size as f64)) + 0.5) as i64;
    let by_patch = log2((w.min(h) / p.patch_size) as f64) as i64;
    let coarsest = by_motion.min(by_patch);
    assert!(
        coarsest >= 0,
        "dis_flow: {w}x{h} is smaller than a {}-pixel patch",
        p.patch_size
    );
    let coarsest = coarsest as usize;
    if coarsest >= p.finest_scale {
        return (coarsest, p.finest_scale, p.patch_size);
    }
    // autoSelectCoarsestScale: fratio 5, from the width only.
    let auto =
        |psz: usize| (log2(2.0 * w as f64 / (5.0 * psz as f64)).floor() as i64).max(0) as usize;
    let (psz, margin) = match p.finest_scale {
        3 => (12, 4),
        4 => (12, 5),
        _ => (8, 2),
    };
    // Capped so every level still holds a patch (OpenCV reads out of bounds there instead).
    let coarsest = auto(psz).min(by_patch.max(0) as usize);
    (coarsest, coarsest.saturating_sub(margin), psz)
}

/// A u8 image of the pyramid.
struct Image {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// `cv::resize(..., INTER_AREA)` of a u8 image to a smaller size: an exact 2× reduction in
/// both directions averages 2×2 blocks with round-half-up (OpenCV's SIMD fast path), any other
/// ratio weights the covered source pixels by their covered fraction (`computeResizeAreaTab`).
fn area_resize(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Image {
    assert!(
        dw > 0 && dh > 0 && dw <= sw && dh <= sh,
        "area_resize: {sw}x{sh} -> {dw}x{dh}"
    );
    let mut px = vec![0u8; dw * dh];
    if sw == 2 * dw && sh == 2 * dh {
        px.par_chunks_mut(dw).enumerate().for_each(|(y, row)| {
            let (r0, r1) = (&src[2 * y * sw..], &src[(2 * y + 1) * sw..]);
            for (x, d) in row.iter_mut().enumerate() {
                let s = r0[2 * x] as u32
                    + r0[2 * x + 1] as u32
                    + r1[2 * x] as u32
                    + r1[2 * x + 1] as u32;
                *d = ((s + 2) >> 2) as u8;
            }
        });
    } else if sw == dw && sh == dh {
        px.copy_from_slice(src);
    } else {
        let xtab = area_tab(sw, dw);
        let ytab = area_tab(sh, dh);
        px.par_chunks_mut(dw).enumerate().for_each(|(y, row)| {
            let mut acc = vec![0.0f32; dw];
            for &(sy, wy) in &ytab[y] {
                let srow = &src[sy * sw..(sy + 1) * sw];
                for (a, taps) in acc.iter_mut().zip(&xtab) {
                    let v: f32 = taps.iter().map(|&(sx, wx)| wx * srow[sx] as f32).sum();
                    *a += wy * v;
                }
            }
            for (d, a) in row.iter_mut().zip(acc) {
                *d = a.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        });
    }
    Image { w: dw, h: dh, px }
}

/// Source taps (index, weight) of every destination pixel along one axis, as OpenCV's
/// `computeResizeAreaTab`.
fn area_tab(ssize: usize, dsize: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = ssize as f64 / dsize as f64;
    (0..dsize)
        .map(|d| {
            let fs1 = d as f64 * scale;
            let fs2 = fs1 + scale;
            let cell = scale.min(ssize as f64 - fs1);
            let s2 = (fs2.floor() as usize).min(ssize - 1);
            let s1 = (fs1.ceil() as usize).min(s2);
            let mut taps = Vec::with_capacity(scale.ceil() as usize + 2);
            if s1 as f64 - fs1 > 1e-3 {
                taps.push((s1 - 1, ((s1 as f64 - fs1) / cell) as f32));
            }
            for s in s1..s2 {
                taps.push((s, (1.0 / cell) as f32));
            }
            if fs2 - s2 as f64 > 1e-3 {
                taps.push((s2, ((fs2 - s2 as f64).min(1.0).min(cell) / cell) as f32));
            }
            taps
        })
        .collect()
}

/// `cv::resize(..., INTER_LINEAR)` of a float plane (pixel centres aligned, edges clamped),
/// multiplied by `mul`.
fn resize_linear(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize, mul: f32) -> Vec<f32> {
    let tab = |ssize: usize, dsize: usize| -> Vec<(usize, usize, f32)> {
        let scale = ssize as f64 / dsize as f64;
        (0..dsize)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let s = f.floor();
                let (s, t) = if s < 0.0 {
                    (0, 0.0)
                } else if s as usize >= ssize - 1 {
                    (ssize - 1, 0.0)
                } else {
                    (s as usize, f - s)
                };
                (s, (s + 1).min(ssize - 1), t)
            })
            .collect()
    };
    let xt = tab(sw, dw);
    let yt = tab(sh, dh);
    let mut out = vec![0.0f32; dw * dh];
    out.par_chunks_mut(dw).enumerate().for_each(|(y, row)| {
        let (y0, y1, ty) = yt[y];
        let (r0, r1) = (&src[y0 * sw..(y0 + 1) * sw], &src[y1 * sw..(y1 + 1) * sw]);
        for (d, &(x0, x1, tx)) in row.iter_mut().zip(&xt) {
            let top = r0[x0] * (1.0 - tx) + r0[x1] * tx;
            let bot = r1[x0] * (1.0 - tx) + r1[x1] * tx;
            *d = (top * (1.0 - ty) + bot * ty) * mul;
        }
    });
    out
}

/// 3×3 Sobel derivatives of a u8 image with reflect-101 borders (`cv::spatialGradient`).
fn sobel(px: &[u8], w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let refl = |i: isize, n: usize| -> usize {
        if n == 1 {
            0
        } else if i < 0 {
            (-i) as usize
        } else if i as usize >= n {
            2 * n - 2 - i as usize
        } else {
            i as usize
        }
    };
    let mut gx = vec![0.0f32; w * h];
    let mut gy = vec![0.0f32; w * h];
    gx.par_chunks_mut(w)
        .zip(gy.par_chunks_mut(w))
        .enumerate()
        .for_each(|(y, (rx, ry))| {
            let rows = [refl(y as isize - 1, h), y, refl(y as isize + 1, h)]
                .map(|r| &px[r * w..(r + 1) * w]);
            for x in 0..w {
                let (l, r) = (refl(x as isize - 1, w), refl(x as isize + 1, w));
                let p = |row: usize, col: usize| rows[row][col] as i32;
                let dx = (p(0, r) - p(0, l)) + 2 * (p(1, r) - p(1, l)) + (p(2, r) - p(2, l));
                let dy = (p(2, l) - p(0, l)) + 2 * (p(2, x) - p(0, x)) + (p(2, r) - p(0, r));
                rx[x] = dx as f32;
                ry[x] = dy as f32;
            }
        });
    (gx, gy)
}

struct SearchParams {
    psz: usize,
    stride: usize,
    grad_descent_iters: usize,
    mean_norm: bool,
    spatial: bool,
}

/// One pyramid level prepared for the patch search (floats, so the inner loops vectorise).
struct Level<'a> {
    w: usize,
    h: usize,
    psz: usize,
    stride: usize,
    /// Sparse grid size.
    ws: usize,
    hs: usize,
    i0: Vec<f32>,
    /// I1 as u8, for densification (no border).
    i1: &'a [u8],
    /// I1 with a replicated border of [`BORDER`] pixels, row stride `w + 2·BORDER`.
    i1_ext: Vec<f32>,
    gx: Vec<f32>,
    gy: Vec<f32>,
    /// Per sparse patch: Σ Ix², Σ Iy², Σ IxIy, Σ Ix, Σ Iy (the structure tensor and, for mean
    /// normalisation, the gradient sums).
    tensor: Vec<[f32; 5]>,
}

impl<'a> Level<'a> {
    fn new(l0: &Image, l1: &'a Image, psz: usize, stride: usize) -> Self {
        let (w, h) = (l0.w, l0.h);
        assert!(
            w >= psz && h >= psz,
            "dis_flow: pyramid level {w}x{h} smaller than a patch"
        );
        let ws = 1 + (w - psz) / stride;
        let hs = 1 + (h - psz) / stride;
        let we = w + 2 * BORDER;
        let mut i1_ext = vec![0.0f32; we * (h + 2 * BORDER)];
        i1_ext.par_chunks_mut(we).enumerate().for_each(|(ye, row)| {
            let y = ye.saturating_sub(BORDER).min(h - 1);
            let src = &l1.px[y * w..(y + 1) * w];
            for (xe, v) in row.iter_mut().enumerate() {
                *v = src[xe.saturating_sub(BORDER).min(w - 1)] as f32;
            }
        });
        let (gx, gy) = sobel(&l0.px, w, h);
        let tensor = structure_tensor(&gx, &gy, w, h, ws, hs, psz, stride);
        Level {
            w,
            h,
            psz,
            stride,
            ws,
            hs,
            i0: l0.px.iter().map(|&v| v as f32).collect(),
            i1: &l1.px,
            i1_ext,
            gx,
            gy,
            tensor,
        }
    }

    /// Patch inverse search on the sparse grid, seeded by the dense flow (ux, uy) of this level:
    /// two sweeps (forward, backward) when spatial propagation is on, one otherwise.
    fn inverse_search(&self, ux: &[f32], uy: &[f32], p: &SearchParams) -> (Vec<f32>, Vec<f32>) {
        let (ws, hs) = (self.ws, self.hs);
        let mut sx = vec![0.0f32; ws * hs];
        let mut sy = vec![0.0f32; ws * hs];
        let stripe = hs.div_ceil(STRIPES);
        sx.par_chunks_mut(stripe * ws)
            .zip(sy.par_chunks_mut(stripe * ws))
            .enumerate()
            .for_each(|(k, (sx, sy))| self.search_stripe(k * stripe, sx, sy, ux, uy, p));
        (sx, sy)
    }

    fn search_stripe(
        &self,
        is0: usize,
        sx: &mut [f32],
        sy: &mut [f32],
        ux: &[f32],
        uy: &[f32],
        p: &SearchParams,
    ) {
        let (w, ws) = (self.w, self.ws);
        let rows = sx.len() / ws;
        let psz = p.psz;
        let half = psz / 2;
        let num_iter = if p.spatial { 2 } else { 1 };
        let inner = p.grad_descent_iters / num_iter;
        let bsz = BORDER as f32;
        let lim = Limits {
            i_lo: bsz - psz as f32 + 1.0,
            i_hi: bsz + self.h as f32 - 1.0,
            j_lo: bsz - psz as f32 + 1.0,
            j_hi: bsz + w as f32 - 1.0,
        };
        for iter in 0..num_iter {
            let fwd = iter % 2 == 0;
            for r in 0..rows {
                let r = if fwd { r } else { rows - 1 - r };
                let i = (is0 + r) * p.stride;
                for c in 0..ws {
                    let c = if fwd { c } else { ws - 1 - c };
                    let j = c * p.stride;
                    let idx = r * ws + c;
                    if iter == 0 {
                        // The previous level's dense flow at the patch centre is the first guess.
                        sx[idx] = ux[(i + half) * w + j + half];
                        sy[idx] = uy[(i + half) * w + j + half];
                    }
                    if p.spatial {
                        let mut best = self.ssd(i, j, sx[idx], sy[idx], &lim, p);
                        // Neighbours already visited in this sweep: left/up forward, right/down backward.
                        let prev_col = if fwd {
                            (c > 0).then(|| idx - 1)
                        } else {
                            (c + 1 < ws).then(|| idx + 1)
                        };
                        let prev_row = if fwd {
                            (r > 0).then(|| idx - ws)
                        } else {
                            (r + 1 < rows).then(|| idx + ws)
                        };
                        for n in [prev_col, prev_row].into_iter().flatten() {
                            let cur = self.ssd(i, j, sx[n], sy[n], &lim, p);
                            if cur < best {
                                best = cur;
                                sx[idx] = sx[n];
                                sy[idx] = sy[n];
                            }
                        }
                    }
                    let t = self.tensor[(is0 + r) * ws + c];
                    let (cx, cy) = self.descend(i, j, sx[idx], sy[idx], t, inner, &lim, p);
                    // A vector that wandered further than a patch from its start is not trusted.
                    if (cx - sx[idx]).hypot(cy - sy[idx]) <= psz as f32 {
                        sx[idx] = cx;
                        sy[idx] = cy;
                    }
                }
            }
        }
    }

    /// Inverse-compositional Gauss–Newton on one patch from (ux, uy); the Hessian is the
    /// precomputed structure tensor. Stops once the patch distance no longer decreases (the step
    /// computed at that point is still taken, as in OpenCV).
    #[allow(clippy::too_many_arguments)]
    fn descend(
        &self,
        i: usize,
        j: usize,
        mut ux: f32,
        mut uy: f32,
        t: [f32; 5],
        iters: usize,
        lim: &Limits,
        p: &SearchParams,
    ) -> (f32, f32) {
        let [xx, yy, xy, x_sum, y_sum] = t;
        let mut det = xx * yy - xy * xy;
        if det.abs() < EPS {
            det = EPS;
        }
        let (inv11, inv12, inv22) = (yy / det, -xy / det, xx / det);
        let mut prev = INF;
        for _ in 0..iters {
            let (ssd, dux, duy) = self.patch_grad(i, j, ux, uy, lim, p, x_sum, y_sum);
            ux -= inv11 * dux + inv12 * duy;
            uy -= inv12 * dux + inv22 * duy;
            if ssd >= prev {
                break;
            }
            prev = ssd;
        }
        (ux, uy)
    }

    /// Patch distance (sum of squared differences, mean-normalised if asked) between the patch of
    /// I0 at (i, j) and the bilinearly sampled patch of I1 displaced by (ux, uy).
    fn ssd(&self, i: usize, j: usize, ux: f32, uy: f32, lim: &Limits, p: &SearchParams) -> f32 {
        let [sum, sq, _, _] = self.patch_sums::<false>(i, j, ux, uy, lim, p.psz);
        if p.mean_norm {
            sq - sum * sum / (p.psz * p.psz) as f32
        } else {
            sq
        }
    }

    /// Like [`Self::ssd`], also returning Σ diff·∇I0 (the Gauss–Newton right-hand side).
    #[allow(clippy::too_many_arguments)]
    fn patch_grad(
        &self,
        i: usize,
        j: usize,
        ux: f32,
        uy: f32,
        lim: &Limits,
        p: &SearchParams,
        x_sum: f32,
        y_sum: f32,
    ) -> (f32, f32, f32) {
        let [sum, sq, gxs, gys] = self.patch_sums::<true>(i, j, ux, uy, lim, p.psz);
        if p.mean_norm {
            let n = (p.psz * p.psz) as f32;
            (
                sq - sum * sum / n,
                gxs - sum * x_sum / n,
                gys - sum * y_sum / n,
            )
        } else {
            (sq, gxs, gys)
        }
    }

    /// Σ d, Σ d², and (if `GRAD`) Σ d·Ix, Σ d·Iy over the patch, d = I1(x + u) − I0(x). Columns
    /// are accumulated in [`LANES`] independent lanes (as OpenCV's SIMD path does in 4) so the
    /// loop vectorises; the lanes are summed at the end.
    #[inline]
    fn patch_sums<const GRAD: bool>(
        &self,
        i: usize,
        j: usize,
        ux: f32,
        uy: f32,
        lim: &Limits,
        psz: usize,
    ) -> [f32; 4] {
        let (base, wt) = self.bilinear(i, j, ux, uy, lim);
        let we = self.w + 2 * BORDER;
        let full = psz / LANES * LANES;
        let mut acc = [[0.0f32; LANES]; 4];
        for r in 0..psz {
            let o = (i + r) * self.w + j;
            let a = &self.i0[o..][..psz];
            let gx = &self.gx[o..][..psz];
            let gy = &self.gy[o..][..psz];
            let t = &self.i1_ext[base + r * we..][..psz + 1];
            let b = &self.i1_ext[base + (r + 1) * we..][..psz + 1];
            let mut add = |lane: usize, c: usize| {
                let d = wt[0] * t[c] + wt[1] * t[c + 1] + wt[2] * b[c] + wt[3] * b[c + 1] - a[c];
                acc[0][lane] += d;
                acc[1][lane] += d * d;
                if GRAD {
                    acc[2][lane] += d * gx[c];
                    acc[3][lane] += d * gy[c];
                }
            };
            for k in (0..full).step_by(LANES) {
                for lane in 0..LANES {
                    add(lane, k + lane);
                }
            }
            for c in full..psz {
                add(c - full, c);
            }
        }
        acc.map(|lanes| lanes.iter().sum())
    }

    /// Top-left index in `i1_ext` and bilinear weights of the patch displaced by (ux, uy), the
    /// position clamped so the patch stays inside the padded frame.
    #[inline]
    fn bilinear(&self, i: usize, j: usize, ux: f32, uy: f32, lim: &Limits) -> (usize, [f32; 4]) {
        let bsz = BORDER as f32;
        let yi = (i as f32 + uy + bsz).max(lim.i_lo).min(lim.i_hi);
        let xj = (j as f32 + ux + bsz).max(lim.j_lo).min(lim.j_hi);
        let (fy, fx) = (yi - yi.floor(), xj - xj.floor());
        let base = yi as usize * (self.w + 2 * BORDER) + xj as usize;
        (
            base,
            [
                (1.0 - fy) * (1.0 - fx),
                (1.0 - fy) * fx,
                fy * (1.0 - fx),
                fy * fx,
            ],
        )
    }

    /// Dense flow from the sparse patch vectors: each pixel averages the vectors of the patches
    /// covering it, weighted by 1 / max(1, |I1(x + u) − I0(x)|).
    fn densify(&self, sx: &[f32], sy: &[f32], ux: &mut [f32], uy: &mut [f32]) {
        let (w, h, ws) = (self.w, self.h, self.ws);
        let (psz, stride) = (self.psz, self.stride);
        // Patches covering row/column i: those starting in (i − psz, i]; pixels past the last
        // patch (when the stride does not divide the size) take the last one.
        let range = |i: usize, last: usize| -> (usize, usize) {
            let end = (i / stride).min(last);
            let start = if i >= psz { (i - psz) / stride + 1 } else { 0 };
            (start.min(end), end)
        };
        ux.par_chunks_mut(w)
            .zip(uy.par_chunks_mut(w))
            .enumerate()
            .for_each(|(i, (rx, ry))| {
                let (is0, is1) = range(i, self.hs - 1);
                for j in 0..w {
                    let (js0, js1) = range(j, ws - 1);
                    let (mut su, mut sv, mut sc) = (0.0f32, 0.0f32, 0.0f32);
                    for is in is0..=is1 {
                        for js in js0..=js1 {
                            let (u, v) = (sx[is * ws + js], sy[is * ws + js]);
                            let xm = (j as f32 + u).max(0.0).min(w as f32 - 1.0 - EPS);
                            let ym = (i as f32 + v).max(0.0).min(h as f32 - 1.0 - EPS);
                            let (xl, yl) = (xm as usize, ym as usize);
                            let (fx, fy) = (xm - xl as f32, ym - yl as f32);
                            let px = |y: usize, x: usize| self.i1[y * w + x] as f32;
                            let diff = fx * fy * px(yl + 1, xl + 1)
                                + (1.0 - fx) * fy * px(yl + 1, xl)
                                + fx * (1.0 - fy) * px(yl, xl + 1)
                                + (1.0 - fx) * (1.0 - fy) * px(yl, xl)
                                - self.i0[i * w + j];
                            let coef = 1.0 / diff.abs().max(1.0);
                            su += coef * u;
                            sv += coef * v;
                            sc += coef;
                        }
                    }
                    rx[j] = su / sc;
                    ry[j] = sv / sc;
                }
            });
    }
}

struct Limits {
    i_lo: f32,
    i_hi: f32,
    j_lo: f32,
    j_hi: f32,
}

/// Σ Ix², Σ Iy², Σ IxIy, Σ Ix, Σ Iy over every patch of the sparse grid, by separable running
/// box sums (horizontal, then vertical) kept in the same order as OpenCV's
/// `precomputeStructureTensor`, so the float rounding matches.
#[allow(clippy::too_many_arguments)]
fn structure_tensor(
    gx: &[f32],
    gy: &[f32],
    w: usize,
    h: usize,
    ws: usize,
    hs: usize,
    psz: usize,
    stride: usize,
) -> Vec<[f32; 5]> {
    let terms = |x: f32, y: f32| [x * x, y * y, x * y, x, y];
    let mut aux = vec![[0.0f32; 5]; h * ws];
    aux.par_chunks_mut(ws).enumerate().for_each(|(i, out)| {
        let (xr, yr) = (&gx[i * w..(i + 1) * w], &gy[i * w..(i + 1) * w]);
        let mut sum = [0.0f32; 5];
        for j in 0..psz {
            for (s, t) in sum.iter_mut().zip(terms(xr[j], yr[j])) {
                *s += t;
            }
        }
        out[0] = sum;
        let mut js = 1;
        for j in psz..w {
            let (new, old) = (terms(xr[j], yr[j]), terms(xr[j - psz], yr[j - psz]));
            for k in 0..5 {
                sum[k] += new[k] - old[k];
            }
            if (j - psz + 1) % stride == 0 {
                out[js] = sum;
                js += 1;
            }
        }
    });
    let mut tensor = vec![[0.0f32; 5]; hs * ws];
    // The vertical pass touches h·ws values only: sequential is fast enough.
    for j in 0..ws {
        let mut sum = [0.0f32; 5];
        for i in 0..psz {
            for k in 0..5 {
                sum[k] += aux[i * ws + j][k];
            }
        }
        tensor[j] = sum;
        let mut is = 1;
        for i in psz..h {
            for k in 0..5 {
                sum[k] += aux[i * ws + j][k] - aux[(i - psz) * ws + j][k];
            }
            if (i - psz + 1) % stride == 0 {
                tensor[is * ws + j] = sum;
                is += 1;
            }
        }
    }
    tensor
}

/// Over-relaxation factor, gradient normaliser ζ and SOR sweeps per fixed-point iteration, as
/// OpenCV's VariationalRefinement defaults (DIS does not change them).
const VR_OMEGA: f32 = 1.6;
const VR_ZETA: f32 = 0.1;
const VR_SOR_ITERS: usize = 5;

/// Variational refinement of the dense flow (u, v) of one level, in place (Brox et al. 2004
/// energy as OpenCV's `VariationalRefinement::calcUV`): colour and gradient constancy, linearised
/// around the initial flow and normalised by the gradient magnitude, plus a robust smoothness
/// term; each fixed-point iteration re-weights the robust terms and runs red–black SOR on the
/// increment.
fn refine(i0: &[u8], i1: &[u8], w: usize, h: usize, u: &mut [f32], v: &mut [f32], p: &DisParams) {
    let n = w * h;
    let i1f: Vec<f32> = i1.iter().map(|&x| x as f32).collect();
    // Derivatives are taken on the average of I0 and the warped I1; Iz is their difference.
    let mut avg = vec![0.0f32; n];
    let mut iz = vec![0.0f32; n];
    avg.par_chunks_mut(w)
        .zip(iz.par_chunks_mut(w))
        .enumerate()
        .for_each(|(y, (ra, rz))| {
            for x in 0..w {
                let o = y * w + x;
                let warped = Taps::new(x as f32 + u[o], y as f32 + v[o], w, h).sample(&i1f, 1, 0);
                let a = i0[o] as f32;
                ra[x] = 0.5 * a + 0.5 * warped;
                rz[x] = warped - a;
            }
        });
    let ix = diff_x(&avg, w, h);
    let iy = diff_y(&avg, w, h);
    let d = Derivs {
        ixz: diff_x(&iz, w, h),
        iyz: diff_y(&iz, w, h),
        ixx: diff_x(&ix, w, h),
        ixy: diff_y(&ix, w, h),
        iyy: diff_y(&iy, w, h),
        ix,
        iy,
        iz,
    };

    let (alpha2, gamma2, delta2) = (p.alpha / 2.0, p.gamma / 2.0, p.delta / 2.0);
    let eps2 = p.epsilon * p.epsilon;
    let zeta2 = VR_ZETA * VR_ZETA;
    let mut du = RedBlack::zeros(w, h);
    let mut dv = RedBlack::zeros(w, h);
    let mut cur_u = u.to_vec();
    let mut cur_v = v.to_vec();
    let mut weight = vec![0.0f32; n];
    let mut coef = vec![[0.0f32; 5]; n];
    for _ in 0..p.variational_refinement_iters {
        // Smoothness weights Ψ'(|∇u|² + |∇v|²)·α/2 from the current estimate (forward
        // differences, zero across the far borders).
        weight.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
            for (x, wt) in row.iter_mut().enumerate() {
                let o = y * w + x;
                let (mut s, cu, cv) = (eps2, cur_u[o], cur_v[o]);
                if x + 1 < w {
                    s += (cur_u[o + 1] - cu).powi(2) + (cur_v[o + 1] - cv).powi(2);
                }
                if y + 1 < h {
                    s += (cur_u[o + w] - cu).powi(2) + (cur_v[o + w] - cv).powi(2);
                }
                *wt = alpha2 / s.sqrt();
            }
        });
        // The linear system A·(du, dv) = b per pixel: data terms, then the smoothness edges.
        coef.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
            for (x, out) in row.iter_mut().enumerate() {
                let o = y * w + x;
                let (pdu, pdv) = (du.get(y, x), dv.get(y, x));
                let (ix, iy, iz) = (d.ix[o], d.iy[o], d.iz[o]);
                let norm = ix * ix + iy * iy + zeta2;
                let ik1z = iz + ix * pdu + iy * pdv;
                let wd = (delta2 / (ik1z * ik1z / norm + eps2).sqrt()) / norm;
                let mut a11 = wd * (ix * ix) + zeta2;
                let mut a12 = wd * (ix * iy);
                let mut a22 = wd * (iy * iy) + zeta2;
                let mut b1 = -wd * (iz * ix);
                let mut b2 = -wd * (iz * iy);

                let (ixx, ixy, iyy, ixz, iyz) = (d.ixx[o], d.ixy[o], d.iyy[o], d.ixz[o], d.iyz[o]);
                let n1 = ixx * ixx + ixy * ixy + zeta2;
                let n2 = iyy * iyy + ixy * ixy + zeta2;
                let zx = ixz + ixx * pdu + ixy * pdv;
                let zy = iyz + ixy * pdu + iyy * pdv;
                let wg = gamma2 / (zx * zx / n1 + zy * zy / n2 + eps2).sqrt();
                a11 += wg * (ixx * ixx / n1 + ixy * ixy / n2);
                a12 += wg * (ixx * ixy / n1 + ixy * iyy / n2);
                a22 += wg * (ixy * ixy / n1 + iyy * iyy / n2);
                b1 -= wg * (ixx * ixz / n1 + ixy * iyz / n2);
                b2 -= wg * (ixy * ixz / n1 + iyy * iyz / n2);

                // Smoothness pulls towards the neighbours of the *initial* flow; the increment's
                // share enters through the SOR neighbour sums.
                let mut edge = |q: usize, wq: f32| {
                    a11 += wq;
                    a22 += wq;
                    b1 += wq * (u[q] - u[o]);
                    b2 += wq * (v[q] - v[o]);
                };
                if x + 1 < w {
                    edge(o + 1, weight[o]);
                }
                if x > 0 {
                    edge(o - 1, weight[o - 1]);
                }
                if y + 1 < h {
                    edge(o + w, weight[o]);
                }
                if y > 0 {
                    edge(o - w, weight[o - w]);
                }
                *out = [a11, a12, a22, b1, b2];
            }
        });
        for _ in 0..VR_SOR_ITERS {
            for colour in 0..2 {
                sor_pass(colour, &mut du, &mut dv, &coef, &weight, w, h);
            }
        }
        cur_u
            .par_chunks_mut(w)
            .zip(cur_v.par_chunks_mut(w))
            .enumerate()
            .for_each(|(y, (ru, rv))| {
                for x in 0..w {
                    ru[x] = u[y * w + x] + du.get(y, x);
                    rv[x] = v[y * w + x] + dv.get(y, x);
                }
            });
    }
    u.copy_from_slice(&cur_u);
    v.copy_from_slice(&cur_v);
}

/// Image derivatives of the refinement's data term.
struct Derivs {
    ix: Vec<f32>,
    iy: Vec<f32>,
    iz: Vec<f32>,
    ixx: Vec<f32>,
    ixy: Vec<f32>,
    iyy: Vec<f32>,
    ixz: Vec<f32>,
    iyz: Vec<f32>,
}

/// I(x+1) − I(x−1) with replicated borders (`cv::Sobel`, ksize 1, dx = 1, BORDER_REPLICATE).
fn diff_x(src: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w * h];
    out.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        let s = &src[y * w..(y + 1) * w];
        for (x, d) in row.iter_mut().enumerate() {
            *d = s[(x + 1).min(w - 1)] - s[x.saturating_sub(1)];
        }
    });
    out
}

/// I(y+1) − I(y−1) with replicated borders (`cv::Sobel`, ksize 1, dy = 1, BORDER_REPLICATE).
fn diff_y(src: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w * h];
    out.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        let (up, down) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for (x, d) in row.iter_mut().enumerate() {
            *d = src[down * w + x] - src[up * w + x];
        }
    });
    out
}

/// A plane split into its checkerboard colours (red: (x + y) even), so one colour can be
/// updated in parallel while the other is read (red–black SOR).
struct RedBlack {
    /// Cells per row and colour: ⌈w / 2⌉.
    hw: usize,
    cells: [Vec<f32>; 2],
}

impl RedBlack {
    fn zeros(w: usize, h: usize) -> Self {
        let hw = w.div_ceil(2);
        RedBlack {
            hw,
            cells: [vec![0.0; hw * h], vec![0.0; hw * h]],
        }
    }

    #[inline]
    fn get(&self, y: usize, x: usize) -> f32 {
        self.cells[(x + y) % 2][y * self.hw + x / 2]
    }
}

/// One red–black SOR half-sweep: updates the increments of every pixel of `colour` from its
/// four neighbours (all of the other colour).
fn sor_pass(
    colour: usize,
    du: &mut RedBlack,
    dv: &mut RedBlack,
    coef: &[[f32; 5]],
    weight: &[f32],
    w: usize,
    h: usize,
) {
    let hw = du.hw;
    let [du_r, du_b] = &mut du.cells;
    let [dv_r, dv_b] = &mut dv.cells;
    let (mu, ou, mv, ov) = if colour == 0 {
        (du_r, &*du_b, dv_r, &*dv_b)
    } else {
        (du_b, &*du_r, dv_b, &*dv_r)
    };
    mu.par_chunks_mut(hw)
        .zip(mv.par_chunks_mut(hw))
        .enumerate()
        .for_each(|(y, (ru, rv))| {
            let first = (y + colour) % 2;
            for k in 0..hw {
                let x = 2 * k + first;
                if x >= w {
                    break;
                }
                let o = y * w + x;
                let wp = weight[o];
                let (mut su, mut sv) = (0.0f32, 0.0f32);
                if x > 0 {
                    let (c, wl) = (y * hw + (x - 1) / 2, weight[o - 1]);
                    su += wl * ou[c];
                    sv += wl * ov[c];
                }
                if x + 1 < w {
                    let c = y * hw + x.div_ceil(2);
                    su += wp * ou[c];
                    sv += wp * ov[c];
                }
                if y > 0 {
                    let (c, wu) = ((y - 1) * hw + k, weight[o - w]);
                    su += wu * ou[c];
                    sv += wu * ov[c];
                }
                if y + 1 < h {
                    let c = (y + 1) * hw + k;
                    su += wp * ou[c];
                    sv += wp * ov[c];
                }
                let [a11, a12, a22, b1, b2] = coef[o];
                ru[k] += VR_OMEGA * ((su + b1 - rv[k] * a12) / a11 - ru[k]);
                rv[k] += VR_OMEGA * ((sv + b2 - ru[k] * a12) / a22 - rv[k]);
            }
        });
}
