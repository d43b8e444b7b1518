//! The bilinear lookup that warping and DIS's refinement share: four taps and weights at a
//! sub-pixel position, edges replicated, as OpenCV's `INTER_LINEAR` + `BORDER_REPLICATE`.

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
