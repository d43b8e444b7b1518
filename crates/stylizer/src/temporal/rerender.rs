//! The pixel-space arithmetic of Rerender-A-Video (Yang et al. 2023, "Rerender A Video:
//! Zero-Shot Text-Guided Video-to-Video Translation", SIGGRAPH Asia), as diffusers'
//! `examples/community/rerender_a_video.py` computes it with torch: warping by `grid_sample`
//! (zeros outside), the forward–backward occlusion check, the blend masks' max-pooling and
//! Gaussian blur, and the latent-grid downscales. Images and masks are planar (C×H×W) f32.

use rayon::prelude::*;

use super::flow::{dis_flow, DisParams, Flow, Gray};
use super::fusion::FUSION_FLOW;

/// The flows between two original frames, `earlier` → `later` and back, as the reference's
/// GMFlow gives them (`pred_bidir_flow`); ours are DIS's.
pub fn flow_pair(earlier: &Gray, later: &Gray) -> (Flow, Flow) {
    let params = DisParams::preset(FUSION_FLOW);
    rayon::join(
        || dis_flow(earlier, later, &params),
        || dis_flow(later, earlier, &params),
    )
}

/// How [`flow_warp`] reads between pixels: `F.grid_sample`'s `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// `mode="bilinear"`: four taps, each one outside the image reading 0.
    Bilinear,
    /// `mode="nearest"`: the tap nearest the position (ties to even), 0 outside.
    Nearest,
}

/// The reference's `flow_warp(image, flow, mode=…)`: output pixel (x, y) reads `image` at
/// (x + dx, y + dy) through `F.grid_sample(align_corners=True, padding_mode="zeros")`.
/// `image` is planar with `channels` planes of the flow's size. Both sides must be at least 2,
/// since torch's normalisation divides by width − 1 and height − 1.
pub fn flow_warp(image: &[f32], channels: usize, flow: &Flow, mode: Sampling) -> Vec<f32> {
    let (w, h) = (flow.width, flow.height);
    assert!(w >= 2 && h >= 2, "flow_warp: {w}×{h} is too small");
    assert_eq!(flow.data.len(), w * h, "flow_warp: flow size");
    assert_eq!(image.len(), channels * w * h, "flow_warp: image size");
    let mut out = vec![0.0; image.len()];
    out.par_chunks_mut(w)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (c, y) = (row / h, row % h);
            let plane = &image[c * w * h..(c + 1) * w * h];
            for (x, o) in out_row.iter_mut().enumerate() {
                let [dx, dy] = flow.data[y * w + x];
                let (sx, sy) = (grid_position(x, dx, w), grid_position(y, dy, h));
                *o = match mode {
                    Sampling::Bilinear => bilinear_zeros(plane, w, h, sx, sy),
                    Sampling::Nearest => tap_or_zero(plane, w, h, rounded(sx), rounded(sy)),
                };
            }
        });
    out
}

/// The pixel coordinate `grid_sample` reads for `coord + d` along an axis of `n` pixels. The
/// reference normalises it to [-1, 1] (`2·p/(n−1) − 1`) and ATen maps it back
/// (`(g + 1)·((n−1)/2)`, equal to the reference's `((g+1)/2)·(n−1)` since halving is exact),
/// both in f32: positions that don't survive the round trip must land where torch's do, which
/// decides nearest's ties.
fn grid_position(coord: usize, d: f32, n: usize) -> f32 {
    let n1 = (n - 1) as f32;
    let g = 2.0 * (coord as f32 + d) / n1 - 1.0;
    (g + 1.0) * (n1 / 2.0)
}

/// `nearbyint` under the default rounding mode, as ATen's nearest grid sampling rounds.
fn rounded(p: f32) -> i64 {
    p.round_ties_even() as i64
}

/// Pixel (x, y) of a `w`×`h` plane, or 0 outside it (`padding_mode="zeros"`).
fn tap_or_zero(plane: &[f32], w: usize, h: usize, x: i64, y: i64) -> f32 {
    if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
        plane[y as usize * w + x as usize]
    } else {
        0.0
    }
}

/// ATen's vectorised bilinear grid sample (GridSamplerKernel.cpp): its weights, and its sum
/// `nw + ne + sw + se` as the compiler fuses it (see [`fma`]). Each tap outside the plane reads
/// 0, so the border fades to black rather than replicating like [`super::warp`].
fn bilinear_zeros(plane: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (ex, sy) = (1.0 - fx, 1.0 - fy);
    // Saturating, so that an infinite flow reads zeros (and NaN weights) instead of panicking.
    let (ix, iy) = (x0 as i64, y0 as i64);
    let (ix1, iy1) = (ix.saturating_add(1), iy.saturating_add(1));
    let nw = tap_or_zero(plane, w, h, ix, iy) * (sy * ex);
    let acc = fma(tap_or_zero(plane, w, h, ix1, iy), sy * fx, nw);
    let acc = fma(tap_or_zero(plane, w, h, ix, iy1), fy * ex, acc);
    fma(tap_or_zero(plane, w, h, ix1, iy1), fy * fx, acc)
}

/// `a·b + c` rounded once, as torch's CPU kernels compute their `a*b + c` as built (the
/// compiler contracts them into FMA instructions): the ports match its bits only with them.
/// The f64 product of two f32 is exact, so only the sum rounds (twice, which differs from a
/// single f32 rounding with negligible odds), avoiding the slow software `f32::mul_add` of a
/// target without FMA.
#[inline]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// UnFlow's constants, the reference's defaults for `forward_backward_consistency_check`.
const OCC_ALPHA: f32 = 0.01;
const OCC_BETA: f32 = 0.5;

/// The reference's `forward_backward_consistency_check(fwd, bwd)`: a pixel is occluded (1.0)
/// where following a flow and then the opposite one, read bilinearly at the arrival point,
/// misses the start by more than `0.01·(|fwd| + |bwd|) + 0.5` px. Returns (fwd_occ, bwd_occ),
/// each H×W.
pub fn consistency_check(fwd: &Flow, bwd: &Flow) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        (fwd.width, fwd.height),
        (bwd.width, bwd.height),
        "consistency_check: flow sizes"
    );
    rayon::join(|| occlusion(fwd, bwd), || occlusion(bwd, fwd))
}

/// One direction of [`consistency_check`]: where `flow` followed by `back` doesn't return.
fn occlusion(flow: &Flow, back: &Flow) -> Vec<f32> {
    let back_planar: Vec<f32> = (0..2)
        .flat_map(|c| back.data.iter().map(move |v| v[c]))
        .collect();
    let warped = flow_warp(&back_planar, 2, flow, Sampling::Bilinear);
    let (wx, wy) = warped.split_at(flow.data.len());
    // Unfused, unlike the kernels that use [`fma`]: torch.norm's bits.
    let norm = |x: f32, y: f32| (x * x + y * y).sqrt();
    flow.data
        .iter()
        .zip(&back.data)
        .zip(wx.iter().zip(wy))
        .map(|((&[fx, fy], &[bx, by]), (&wx, &wy))| {
            let mag = norm(fx, fy) + norm(bx, by);
            let diff = norm(fx + wx, fy + wy);
            if diff > OCC_ALPHA * mag + OCC_BETA {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// `F.max_pool2d(plane, kernel_size=kernel, stride=stride, padding=padding)` on one channel:
/// the padding never wins (torch pads with −∞) and a NaN in a window wins, as ATen's
/// `val > max || isnan(val)` has it. Returns (values, out_width, out_height), each side
/// `(n + 2·padding − kernel)/stride + 1`, rounded down.
pub fn max_pool(
    plane: &[f32],
    width: usize,
    height: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Vec<f32>, usize, usize) {
    assert!(
        kernel >= 1 && stride >= 1 && width >= 1 && height >= 1,
        "max_pool: empty kernel, stride or plane"
    );
    // torch's own limit; it also guarantees every window holds at least one pixel.
    assert!(padding <= kernel / 2, "max_pool: padding > kernel/2");
    assert!(
        width + 2 * padding >= kernel && height + 2 * padding >= kernel,
        "max_pool: {width}×{height} is smaller than the kernel"
    );
    assert_eq!(plane.len(), width * height, "max_pool: plane size");
    let out_w = (width + 2 * padding - kernel) / stride + 1;
    let out_h = (height + 2 * padding - kernel) / stride + 1;
    // The maximum is separable and exact, so rows first, then columns.
    let window = |o: usize, n: usize| {
        let start = (o * stride).saturating_sub(padding);
        let end = (o * stride + kernel - padding).min(n);
        start..end
    };
    let mut rows = vec![0.0; height * out_w];
    rows.par_chunks_mut(out_w)
        .zip(plane.par_chunks(width))
        .for_each(|(out_row, row)| {
            for (ox, o) in out_row.iter_mut().enumerate() {
                *o = window_max(row[window(ox, width)].iter().copied());
            }
        });
    let mut out = vec![0.0; out_h * out_w];
    out.par_chunks_mut(out_w)
        .enumerate()
        .for_each(|(oy, out_row)| {
            let ys = window(oy, height);
            for (ox, o) in out_row.iter_mut().enumerate() {
                *o = window_max(ys.clone().map(|y| rows[y * out_w + ox]));
            }
        });
    (out, out_w, out_h)
}

/// ATen's max-pool reduction: the largest value, or a NaN if the window holds one.
fn window_max(values: impl Iterator<Item = f32>) -> f32 {
    values.fold(
        f32::NEG_INFINITY,
        |m, v| if v > m || v.is_nan() { v } else { m },
    )
}

/// The reference blur's side and σ: `T.GaussianBlur(kernel_size=(9, 9), sigma=(18, 18))`.
/// (The σ pair is a (min, max) range that torchvision draws from, here a single value.)
const BLUR_SIZE: usize = 9;
const BLUR_SIGMA: f32 = 18.0;

/// torchvision's `_get_gaussian_kernel1d(9, 18.0)` in f32: `exp(−½(x/σ)²)` at
/// `linspace(−4, 4, 9)`, divided by its sum. With σ = 18 it is nearly a box filter.
fn blur_kernel() -> [f32; BLUR_SIZE] {
    let half = (BLUR_SIZE / 2) as f32;
    let pdf: [f32; BLUR_SIZE] = std::array::from_fn(|i| {
        let t = (i as f32 - half) / BLUR_SIGMA;
        // torch's exp is correctly rounded on these arguments; f64 then f32 gives the same
        // bits wherever the platform's expf is off by an ulp.
        (f64::from(-0.5 * (t * t)).exp()) as f32
    });
    let sum: f32 = pdf.iter().sum();
    pdf.map(|p| p / sum)
}

/// The reference's `blur` (torchvision `GaussianBlur(kernel_size=9, sigma=18)`) on one
/// channel: torchvision pads by 4 with torch's "reflect" (mirrored about the edge pixel, which
/// is not repeated) and convolves with the 2-D kernel `k[i]·k[j]` of [`blur_kernel`]. Both
/// sides must exceed 4, as torch's reflect padding requires.
///
/// The 81 taps are accumulated in row-major order with fused multiply-adds ([`fma`]), as
/// torch's CPU convolution does, which reproduces its bits: the masks built on this reach
/// `find_flat_region`'s exact zero test, where an ulp can flip a latent pixel.
pub fn gaussian_blur(plane: &[f32], width: usize, height: usize) -> Vec<f32> {
    let pad = BLUR_SIZE / 2;
    assert!(
        width > pad && height > pad,
        "gaussian_blur: {width}×{height} is too small for reflect padding"
    );
    assert_eq!(plane.len(), width * height, "gaussian_blur: plane size");
    let k = blur_kernel();
    let kernel: [[f32; BLUR_SIZE]; BLUR_SIZE] = std::array::from_fn(|i| k.map(|kj| k[i] * kj));
    // Index i − pad of a line of n, mirrored back into 0..n at both ends.
    let reflect = |i: usize, n: usize| {
        let p = i.abs_diff(pad);
        if p >= n {
            2 * (n - 1) - p
        } else {
            p
        }
    };
    let padded_w = width + 2 * pad;
    let padded: Vec<f32> = (0..height + 2 * pad)
        .flat_map(|y| {
            let row = &plane[reflect(y, height) * width..][..width];
            (0..padded_w).map(move |x| row[reflect(x, width)])
        })
        .collect();
    let mut out = vec![0.0; plane.len()];
    out.par_chunks_mut(width)
        .enumerate()
        .for_each(|(y, out_row)| {
            for (x, o) in out_row.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (i, kernel_row) in kernel.iter().enumerate() {
                    let row = &padded[(y + i) * padded_w + x..][..BLUR_SIZE];
                    for (&kv, &v) in kernel_row.iter().zip(row) {
                        acc = fma(kv, v, acc);
                    }
                }
                *o = acc;
            }
        });
    out
}

/// `F.interpolate(x, scale_factor=1/factor, mode="bilinear")` (align_corners=False, no
/// antialias) on a planar image. Returns (values, out_width, out_height), each side
/// `⌊n/factor⌋`; the caller scales flow vectors itself, as the reference divides by 8 first.
pub fn downscale_bilinear(
    planar: &[f32],
    channels: usize,
    width: usize,
    height: usize,
    factor: usize,
) -> (Vec<f32>, usize, usize) {
    assert!(factor >= 1, "downscale_bilinear: factor ≥ 1");
    assert_eq!(
        planar.len(),
        channels * width * height,
        "downscale_bilinear: image size"
    );
    // torch sizes the output as ⌊n · scale_factor⌋ in f64.
    let out_size = |n: usize| (n as f64 * (1.0 / factor as f64)).floor() as usize;
    let (out_w, out_h) = (out_size(width), out_size(height));
    assert!(
        out_w >= 1 && out_h >= 1,
        "downscale_bilinear: {width}×{height} is smaller than the factor"
    );
    let xs: Vec<_> = (0..out_w).map(|i| linear_taps(i, width, factor)).collect();
    let ys: Vec<_> = (0..out_h).map(|i| linear_taps(i, height, factor)).collect();
    let mut out = vec![0.0; channels * out_w * out_h];
    if out.is_empty() {
        return (out, out_w, out_h);
    }
    out.par_chunks_mut(out_w)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (c, oy) = (row / out_h, row % out_h);
            let plane = &planar[c * width * height..(c + 1) * width * height];
            let (y0, y1, wy0, wy1) = ys[oy];
            let (r0, r1) = (&plane[y0 * width..], &plane[y1 * width..]);
            for (o, &(x0, x1, wx0, wx1)) in out_row.iter_mut().zip(&xs) {
                // The four taps weighted by wy·wx and summed in this order, as torch's CPU
                // kernel rounds (interpolating x then y rounds differently). With an integer
                // factor every weight is 0, ¼, ½ or 1, so the products are exact.
                *o = r0[x0] * (wy0 * wx0)
                    + r0[x1] * (wy0 * wx1)
                    + r1[x0] * (wy1 * wx0)
                    + r1[x1] * (wy1 * wx1);
            }
        });
    (out, out_w, out_h)
}

/// ATen's linear taps for output index `i` of an axis of `n` (HelperInterpLinear): the source
/// coordinate `scale·(i + ½) − ½`, clamped below at 0, with the upper tap clamped to n − 1.
/// The scale is 1/scale_factor = `factor` (exact in f32 for any integer factor), not n/out:
/// with `recompute_scale_factor=None` torch keeps the caller's scale, so a side not divisible
/// by the factor is not stretched to fill the output.
fn linear_taps(i: usize, n: usize, factor: usize) -> (usize, usize, f32, f32) {
    let src = (factor as f32 * (i as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(n - 1);
    let lambda = (src - i0 as f32).clamp(0.0, 1.0);
    let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
    (i0, i1, 1.0 - lambda, lambda)
}

/// `find_flat_region`'s `conv2d` kernels: horizontal and vertical Prewitt.
const PREWITT_X: [[f32; 3]; 3] = [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]];
const PREWITT_Y: [[f32; 3]; 3] = [[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]];

/// The reference's `find_flat_region(mask)`: 1.0 where both 3×3 Prewitt gradients (replicate
/// padding, then `conv2d`) are exactly 0, else 0.0.
///
/// The taps are summed in f32 in the kernel's row-major order, as torch's CPU convolution
/// does: the exact test then sees its rounding, so that a plateau of a value v whose 3v is
/// inexact (0.47, 0.7) counts as not flat, as it does in torch, while 0, 0.5 or 1 are flat.
pub fn flat_region(plane: &[f32], width: usize, height: usize) -> Vec<f32> {
    assert_eq!(plane.len(), width * height, "flat_region: plane size");
    let mut out = vec![0.0; plane.len()];
    if out.is_empty() {
        return out;
    }
    // Replicate padding: the neighbour at offset d − 1, clamped into the plane.
    let near = |i: usize, d: usize, n: usize| (i + d).saturating_sub(1).min(n - 1);
    out.par_chunks_mut(width)
        .enumerate()
        .for_each(|(y, out_row)| {
            for (x, o) in out_row.iter_mut().enumerate() {
                let (mut gx, mut gy) = (0.0f32, 0.0f32);
                for i in 0..3 {
                    for j in 0..3 {
                        let v = plane[near(y, i, height) * width + near(x, j, width)];
                        gx += PREWITT_X[i][j] * v;
                        gy += PREWITT_Y[i][j] * v;
                    }
                }
                *o = if gx.abs() + gy.abs() == 0.0 { 1.0 } else { 0.0 };
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(width: usize, height: usize, f: impl Fn(usize, usize) -> [f32; 2]) -> Flow {
        let data = (0..width * height)
            .map(|i| f(i % width, i / width))
            .collect();
        Flow {
            width,
            height,
            data,
        }
    }

    fn ramp(width: usize, height: usize, channels: usize) -> Vec<f32> {
        (0..channels * width * height)
            .map(|i| i as f32 * 0.25)
            .collect()
    }

    #[test]
    fn zero_flow_warps_to_the_identity() {
        let image = ramp(5, 4, 3);
        let still = flow(5, 4, |_, _| [0.0, 0.0]);
        for mode in [Sampling::Bilinear, Sampling::Nearest] {
            assert_eq!(flow_warp(&image, 3, &still, mode), image, "{mode:?}");
        }
    }

    #[test]
    fn zero_flow_keeps_torchs_round_trip_error() {
        // At width 7, x = 1 comes back from the normalisation as 1 + 2⁻²³, so bilinear reads a
        // sliver of pixel 2: torch gives 2.0000002 there (one ulp), the rest exactly.
        let image: Vec<f32> = (0..7)
            .map(|k| (1u32 << k) as f32)
            .collect::<Vec<_>>()
            .repeat(2);
        let still = flow(7, 2, |_, _| [0.0, 0.0]);
        let mut want = image.clone();
        for i in [1, 8] {
            want[i] = f32::from_bits(2.0f32.to_bits() + 1);
        }
        assert_eq!(flow_warp(&image, 1, &still, Sampling::Bilinear), want);
    }

    #[test]
    fn flow_out_of_the_image_reads_zero() {
        let image = vec![1.0; 4 * 3];
        let away = flow(4, 3, |x, _| [4.0 - x as f32 + 0.5, 0.0]);
        for mode in [Sampling::Bilinear, Sampling::Nearest] {
            assert_eq!(flow_warp(&image, 1, &away, mode), vec![0.0; 12], "{mode:?}");
        }
    }

    #[test]
    fn bilinear_reads_zero_past_the_edge() {
        // Half a pixel right: the last column averages its pixel with the zero beyond it
        // (OpenCV's replicate border would give the pixel itself).
        let image: Vec<f32> = [1.0, 2.0, 4.0].repeat(2);
        let half = flow(3, 2, |_, _| [0.5, 0.0]);
        assert_eq!(
            flow_warp(&image, 1, &half, Sampling::Bilinear),
            [1.5, 3.0, 2.0].repeat(2)
        );
    }

    #[test]
    fn nearest_rounds_ties_to_even() {
        // x + 0.5 survives the normalisation round trip exactly at width 3: 0.5 → 0, 1.5 → 2,
        // 2.5 → 2.
        let image: Vec<f32> = [10.0, 20.0, 30.0].repeat(2);
        let half = flow(3, 2, |_, _| [0.5, 0.0]);
        assert_eq!(
            flow_warp(&image, 1, &half, Sampling::Nearest),
            [10.0, 30.0, 30.0].repeat(2)
        );
    }

    #[test]
    fn nearest_rounds_after_the_round_trip() {
        // At width 4 the round trip turns 0.5 into 0.50000006, which rounds up (torch gives
        // [20, 30, 30, 0]); 3.5 rounds to 4, outside.
        let image: Vec<f32> = [10.0, 20.0, 30.0, 40.0].repeat(2);
        let half = flow(4, 2, |_, _| [0.5, 0.0]);
        assert_eq!(
            flow_warp(&image, 1, &half, Sampling::Nearest),
            [20.0, 30.0, 30.0, 0.0].repeat(2)
        );
    }

    #[test]
    fn consistency_check_flags_only_unreturned_pixels() {
        let (w, h) = (6, 4);
        let still = flow(w, h, |_, _| [0.0, 0.0]);
        let (f, b) = consistency_check(&still, &still);
        assert!(f.iter().chain(&b).all(|&o| o == 0.0));

        // One pixel right and back: consistent except where the forward flow leaves the
        // image (last column) and the backward one does (first column).
        let right = flow(w, h, |_, _| [1.0, 0.0]);
        let left = flow(w, h, |_, _| [-1.0, 0.0]);
        let (f, b) = consistency_check(&right, &left);
        for i in 0..w * h {
            let x = i % w;
            assert_eq!(f[i], if x == w - 1 { 1.0 } else { 0.0 }, "fwd {i}");
            assert_eq!(b[i], if x == 0 { 1.0 } else { 0.0 }, "bwd {i}");
        }
    }

    #[test]
    fn max_pool_sizes_and_values() {
        let (w, h) = (37, 29);
        let (out, ow, oh) = max_pool(&vec![0.0; w * h], w, h, 8, 8, 0);
        assert_eq!((ow, oh, out.len()), (4, 3, 12));
        let (_, ow, oh) = max_pool(&vec![0.0; w * h], w, h, 5, 2, 2);
        assert_eq!((ow, oh), (19, 15));

        // A single hot pixel grows into a 9×9 square at stride 1, padding 4.
        let mut plane = vec![0.0; w * h];
        plane[10 * w + 3] = 1.0;
        let (out, ow, oh) = max_pool(&plane, w, h, 9, 1, 4);
        assert_eq!((ow, oh), (w, h));
        for (i, &v) in out.iter().enumerate() {
            let (x, y) = (i % w, i / w);
            let inside = x <= 7 && (6..=14).contains(&y);
            assert_eq!(v, if inside { 1.0 } else { 0.0 }, "({x}, {y})");
        }

        // Negative values: the padding is −∞, not 0.
        let (out, _, _) = max_pool(&[-3.0, -2.0, -1.0], 3, 1, 3, 1, 1);
        assert_eq!(out, [-2.0, -1.0, -1.0]);

        // A NaN wins its windows, as torch's `val > max || isnan(val)` has it.
        let (out, _, _) = max_pool(&[1.0, f32::NAN, 0.0, 2.0, 3.0], 5, 1, 3, 1, 1);
        assert!(
            out[..3].iter().all(|v| v.is_nan()) && out[3..] == [3.0, 3.0],
            "{out:?}"
        );
    }

    #[test]
    fn blur_kernel_is_normalised_and_nearly_flat() {
        let k = blur_kernel();
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(k[4] > k[0] && k[4] / k[0] < 1.03, "{k:?}");
        assert!(k.iter().zip(k.iter().rev()).all(|(a, b)| a == b));
    }

    #[test]
    fn blur_keeps_a_constant_plane() {
        let out = gaussian_blur(&vec![0.7; 11 * 6], 11, 6);
        assert!(out.iter().all(|v| (v - 0.7).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn blur_pads_by_reflection() {
        // A corner impulse: under reflection (edge pixel not repeated) it appears once in
        // every window, so out = k[4 − dx]·k[4 − dy] within reach (dx, dy its distances from
        // the impulse), 0 beyond. Both corners, for both ends of each axis.
        let (w, h) = (12, 10);
        let k = blur_kernel();
        for corner in [0, w * h - 1] {
            let mut plane = vec![0.0; w * h];
            plane[corner] = 1.0;
            let out = gaussian_blur(&plane, w, h);
            for (i, &v) in out.iter().enumerate() {
                let (dx, dy) = ((i % w).abs_diff(corner % w), (i / w).abs_diff(corner / w));
                let want = if dx <= 4 && dy <= 4 {
                    k[4 - dx] * k[4 - dy]
                } else {
                    0.0
                };
                assert!((v - want).abs() < 1e-7, "{corner}, {i}: {v} vs {want}");
            }
        }
    }

    #[test]
    fn downscale_uses_the_given_scale() {
        // x ↦ x: the source of output i is 2i + 0.5 at factor 2, for 5 → 2 columns.
        let plane: Vec<f32> = (0..5).map(|x| x as f32).collect::<Vec<_>>().repeat(4);
        let (out, ow, oh) = downscale_bilinear(&plane, 1, 5, 4, 2);
        assert_eq!((ow, oh), (2, 2));
        assert_eq!(out, [0.5, 2.5, 0.5, 2.5]);

        // 37 → 4 at factor 8: sources 3.5, 11.5, 19.5, 27.5 (not 37/4-spaced).
        let plane: Vec<f32> = (0..37).map(|x| x as f32).collect::<Vec<_>>().repeat(16);
        let (out, ow, oh) = downscale_bilinear(&plane, 1, 37, 16, 8);
        assert_eq!((ow, oh), (4, 2));
        assert_eq!(out[..4], [3.5, 11.5, 19.5, 27.5]);

        // Channels stay apart.
        let two: Vec<f32> = [vec![1.0; 16 * 8], vec![-2.0; 16 * 8]].concat();
        let (out, ow, oh) = downscale_bilinear(&two, 2, 16, 8, 8);
        assert_eq!((ow, oh), (2, 1));
        assert_eq!(out, [1.0, 1.0, -2.0, -2.0]);
    }

    #[test]
    fn flat_region_marks_a_step_edge() {
        // 0 | 1 between columns 2 and 3: only columns 2 and 3 see both sides.
        let (w, h) = (6, 3);
        let plane: Vec<f32> = (0..w * h)
            .map(|i| if i % w >= 3 { 1.0 } else { 0.0 })
            .collect();
        let flat = flat_region(&plane, w, h);
        for (i, &v) in flat.iter().enumerate() {
            let x = i % w;
            assert_eq!(v, if x == 2 || x == 3 { 0.0 } else { 1.0 }, "{i}");
        }
        // Same along y.
        let plane: Vec<f32> = (0..w * h).map(|i| (i / w == 2) as u8 as f32).collect();
        let flat = flat_region(&plane, w, h);
        assert!(flat[..w].iter().all(|&v| v == 1.0));
        assert!(flat[w..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn flat_region_rounds_like_torch() {
        // torch.conv2d's f32 sum −v−v−v+v+v+v is not 0 for v = 0.47 (3v rounds), so torch
        // calls that constant plane not flat; 0.5 and 1 sum exactly.
        for (v, flat) in [(0.47f32, 0.0), (0.7, 0.0), (0.5, 1.0), (1.0, 1.0)] {
            let out = flat_region(&[v; 5 * 6], 5, 6);
            assert!(out.iter().all(|&o| o == flat), "{v}: {out:?}");
        }
    }
}
