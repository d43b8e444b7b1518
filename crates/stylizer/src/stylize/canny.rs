//! Canny edges ("A Computational Approach to Edge Detection", Canny 1986) as the ControlNet
//! annotators compute them: `cv2.Canny(rgb, low, high)` on the 3-channel 8-bit frame, aperture
//! 3, L1 gradient, no blur. Written from OpenCV's `imgproc/src/canny.cpp` (Apache-2.0) so
//! that the edges are OpenCV's pixel for pixel (tests/fixtures/canny: real photos, every
//! pixel equal); imageproc's `canny` blurs first and uses the L2 norm, which differs.
//!
//! Per pixel: 3×3 Sobel derivatives of every channel (borders replicated), the channel with
//! the largest |dx| + |dy| wins (the first on ties); non-maximum suppression along the
//! gradient's direction quantised with OpenCV's fixed-point tan(22.5°) test; hysteresis:
//! pixels above `high` start edges, which grow through 8-connected pixels above `low`.

/// `--canny LOW,HIGH`: the thresholds on the L1 gradient magnitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub low: f64,
    pub high: f64,
}

impl std::str::FromStr for Thresholds {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad =
            || crate::Error::Value(format!("`{s}` is not LOW,HIGH (two numbers, e.g. 100,200)"));
        let (low, high) = s.split_once(',').ok_or_else(bad)?;
        let (low, high): (f64, f64) = (
            low.trim().parse().map_err(|_| bad())?,
            high.trim().parse().map_err(|_| bad())?,
        );
        if !(low >= 0.0 && high >= low && high.is_finite()) {
            return Err(crate::Error::Value(format!(
                "Canny thresholds need 0 <= LOW <= HIGH, got {s}"
            )));
        }
        Ok(Self { low, high })
    }
}

/// `tan(22.5°)` in OpenCV's 15-bit fixed point.
const TG22: i64 = 13573;
const SHIFT: u32 = 15;

/// Edge map (0 or 255 per pixel, `w × h`) of an interleaved 8-bit image of `channels`
/// channels; thresholds on the L1 gradient magnitude, as `cv2.Canny(img, low, high)`.
pub fn canny(pixels: &[u8], w: usize, h: usize, channels: usize, low: f64, high: f64) -> Vec<u8> {
    assert_eq!(pixels.len(), w * h * channels, "canny: buffer size");
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (low.floor() as i32, high.floor() as i32);
    if w == 0 || h == 0 {
        return Vec::new();
    }

    // Gradient of the strongest channel, and its L1 magnitude.
    let mut dx = vec![0i32; w * h];
    let mut dy = vec![0i32; w * h];
    let mut mag = vec![0i32; w * h];
    let at = |x: isize, y: isize, c: usize| -> i32 {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        pixels[(y * w + x) * channels + c] as i32
    };
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            for c in 0..channels {
                let gx = (at(x + 1, y - 1, c) - at(x - 1, y - 1, c))
                    + 2 * (at(x + 1, y, c) - at(x - 1, y, c))
                    + (at(x + 1, y + 1, c) - at(x - 1, y + 1, c));
                let gy = (at(x - 1, y + 1, c) - at(x - 1, y - 1, c))
                    + 2 * (at(x, y + 1, c) - at(x, y - 1, c))
                    + (at(x + 1, y + 1, c) - at(x + 1, y - 1, c));
                let m = gx.abs() + gy.abs();
                if c == 0 || m > mag[i] {
                    mag[i] = m;
                    dx[i] = gx;
                    dy[i] = gy;
                }
            }
        }
    }

    // Non-maximum suppression: 0 = may be an edge, 1 = not an edge, 2 = an edge.
    let m_at = |x: isize, y: isize| -> i32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    let mut map = vec![1u8; w * h];
    let mut stack = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (xs, ys) = (dx[i] as i64, dy[i] as i64);
            let ax = xs.abs();
            let ay = ys.abs() << SHIFT;
            let tg22x = ax * TG22;
            let is_max = if ay < tg22x {
                m > m_at(x - 1, y) && m >= m_at(x + 1, y)
            } else {
                let tg67x = tg22x + (ax << (SHIFT + 1));
                if ay > tg67x {
                    m > m_at(x, y - 1) && m >= m_at(x, y + 1)
                } else {
                    let s = if (xs ^ ys) < 0 { -1 } else { 1 };
                    m > m_at(x - s, y - 1) && m > m_at(x + s, y + 1)
                }
            };
            if is_max {
                if m > high {
                    map[i] = 2;
                    stack.push(i);
                } else {
                    map[i] = 0;
                }
            }
        }
    }

    // Hysteresis: grow the strong edges through the candidates around them.
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for (ox, oy) in [
            (-1, -1),
            (0, -1),
            (1, -1),
            (-1, 0),
            (1, 0),
            (-1, 1),
            (0, 1),
            (1, 1),
        ] {
            let (nx, ny) = (x + ox, y + oy);
            if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if map[j] == 0 {
                map[j] = 2;
                stack.push(j);
            }
        }
    }
    map.into_iter()
        .map(|v| if v == 2 { 255 } else { 0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_gives_one_line_and_flat_gives_none() {
        let (w, h) = (12, 8);
        let mut img = vec![0u8; w * h];
        for y in 0..h {
            for x in 6..w {
                img[y * w + x] = 200;
            }
        }
        let e = canny(&img, w, h, 1, 100.0, 200.0);
        for y in 0..h {
            let row: Vec<usize> = (0..w).filter(|&x| e[y * w + x] == 255).collect();
            assert_eq!(row.len(), 1, "row {y}: {row:?}");
            assert!(row[0] == 5 || row[0] == 6, "row {y}: {row:?}");
        }
        assert!(canny(&vec![77u8; w * h * 3], w, h, 3, 100.0, 200.0)
            .iter()
            .all(|&v| v == 0));
    }
}
