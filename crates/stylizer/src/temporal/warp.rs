//! Backward warping by a dense flow (bilinear, edge-replicate), as OpenCV's `cv::remap` with
//! `INTER_LINEAR` + `BORDER_REPLICATE` does it (modules/imgproc/src/imgwarp.cpp; since 4.11 it
//! interpolates in float, without the old 1/32-pixel fixed-point grid). The flows come from
//! [`super::flow`], a port of DIS (Kroeger et al. 2016, "Fast Optical Flow using Dense Inverse
//! Search", ECCV) as OpenCV's dis_flow.cpp implements it.

use rayon::prelude::*;

use super::flow::Flow;

/// The four taps and weights of a bilinear lookup at (x, y) in a `w`×`h` grid, the position
/// clamped to the grid first (which is what edge replication amounts to for bilinear taps).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taps {
    /// Row-major indices of the top-left, top-right, bottom-left, bottom-right taps.
    pub idx: [usize; 4],
    /// Weights in the same order; they sum to 1.
    pub wt: [f32; 4],
}

impl Taps {
    #[inline]
    pub(crate) fn new(x: f32, y: f32, w: usize, h: usize) -> Self {
        // NaN (a broken flow) clamps to the origin rather than indexing out of bounds.
        let x = if x.is_nan() {
            0.0
        } else {
            x.clamp(0.0, (w - 1) as f32)
        };
        let y = if y.is_nan() {
            0.0
        } else {
            y.clamp(0.0, (h - 1) as f32)
        };
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let x1 = (x0 + 1).min(w - 1);
        let y1 = (y0 + 1).min(h - 1);
        Taps {
            idx: [y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1],
            wt: [
                (1.0 - fx) * (1.0 - fy),
                fx * (1.0 - fy),
                (1.0 - fx) * fy,
                fx * fy,
            ],
        }
    }

    /// Interpolates channel `c` of an interleaved image with `channels` channels.
    #[inline]
    pub(crate) fn sample(&self, image: &[f32], channels: usize, c: usize) -> f32 {
        self.wt
            .iter()
            .zip(self.idx)
            .map(|(wt, i)| wt * image[i * channels + c])
            .sum()
    }
}

/// Backward warp: out(x, y) = image(x + flow.dx, y + flow.dy), bilinear, coordinates clamped to
/// the image (edge replicate). `image` is interleaved with `channels` channels, row-major, same
/// size as the flow.
pub fn warp(image: &[f32], channels: usize, flow: &Flow) -> Vec<f32> {
    let (w, h) = (flow.width, flow.height);
    assert!(channels > 0, "warp: no channels");
    assert_eq!(
        image.len(),
        w * h * channels,
        "warp: image and flow sizes differ"
    );
    let mut out = vec![0.0f32; image.len()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(w * channels)
        .enumerate()
        .for_each(|(y, row)| {
            for (x, px) in row.chunks_exact_mut(channels).enumerate() {
                let [dx, dy] = flow.data[y * w + x];
                let taps = Taps::new(x as f32 + dx, y as f32 + dy, w, h);
                for (c, v) in px.iter_mut().enumerate() {
                    *v = taps.sample(image, channels, c);
                }
            }
        });
    out
}

/// A flow warped by another: out(x, y) = f(x + by.dx, y + by.dy) (e.g. the backward flow seen
/// from the first frame, for the forward–backward occlusion check).
pub fn warp_flow(f: &Flow, by: &Flow) -> Flow {
    assert_eq!(
        (f.width, f.height),
        (by.width, by.height),
        "warp_flow: sizes differ"
    );
    let warped = warp(f.data.as_flattened(), 2, by);
    Flow {
        width: f.width,
        height: f.height,
        data: warped.chunks_exact(2).map(|v| [v[0], v[1]]).collect(),
    }
}
