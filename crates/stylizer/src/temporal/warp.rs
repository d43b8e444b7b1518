//! Backward warping by a dense flow (bilinear, edge-replicate), as OpenCV's `cv::remap` with
//! `INTER_LINEAR` + `BORDER_REPLICATE` does it (modules/imgproc/src/imgwarp.cpp; since 4.11 it
//! interpolates in float, without the old 1/32-pixel fixed-point grid). The flows come from
//! [`super::flow`], a port of DIS (Kroeger et al. 2016, "Fast Optical Flow using Dense Inverse
//! Search", ECCV) as OpenCV's dis_flow.cpp implements it.

use rayon::prelude::*;

use super::bilinear::Taps;
use super::flow::Flow;

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
