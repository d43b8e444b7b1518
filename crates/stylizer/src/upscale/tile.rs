//! Tile plans and stitching, as pure functions on planar `[c][h][w]` f32 images.
//!
//! The image is conceptually reflect-padded by `prepad` pixels on every side (what
//! realesrgan-ncnn-vulkan does per tile; it keeps the network's zero padding away from real
//! pixels). It is cut into `tile`×`tile` cores; each core is run with `tile_pad` pixels of
//! context from its neighbours (or from the reflection at the image border), and only the
//! core's part of the output is kept, so a core never sees the cut and seams stay invisible.
//! With `tile == 0` the whole image is one core.

/// One tile: the core it produces, and the (larger) input region it reads, in input pixels.
/// Region coordinates may lie outside the image: those pixels are reflections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub rx0: isize,
    pub ry0: isize,
    pub rx1: isize,
    pub ry1: isize,
}

impl Tile {
    pub fn region_w(&self) -> usize {
        (self.rx1 - self.rx0) as usize
    }
    pub fn region_h(&self) -> usize {
        (self.ry1 - self.ry0) as usize
    }
}

/// Cores of `tile` pixels (the last row/column smaller), each read with `tile_pad` pixels of
/// context from its neighbours and `prepad` reflected pixels where it touches the image
/// border; region sizes rounded up to a multiple of `multiple` (networks that
/// pixel-unshuffle their input need it).
pub fn plan(
    w: usize,
    h: usize,
    tile: usize,
    tile_pad: usize,
    prepad: usize,
    multiple: usize,
) -> Vec<Tile> {
    let spans = |n: usize| -> Vec<(usize, usize)> {
        let t = if tile == 0 { n } else { tile };
        (0..n.div_ceil(t))
            .map(|i| (i * t, ((i + 1) * t).min(n)))
            .collect()
    };
    // Image borders get the reflect pre-pad, cuts between tiles `tile_pad` of real context.
    let region = |a: usize, b: usize, n: usize| -> (isize, isize) {
        let lo = if a == 0 {
            -(prepad as isize)
        } else {
            (a as isize - tile_pad as isize).max(-(prepad as isize))
        };
        let mut hi = if b == n {
            (n + prepad) as isize
        } else {
            (b + tile_pad).min(n + prepad) as isize
        };
        let m = multiple.max(1) as isize;
        hi += (m - (hi - lo) % m) % m;
        (lo, hi)
    };
    let mut tiles = Vec::new();
    for &(y0, y1) in &spans(h) {
        for &(x0, x1) in &spans(w) {
            let (rx0, rx1) = region(x0, x1, w);
            let (ry0, ry1) = region(y0, y1, h);
            tiles.push(Tile {
                x0,
                y0,
                x1,
                y1,
                rx0,
                ry0,
                rx1,
                ry1,
            });
        }
    }
    tiles
}

/// PyTorch `reflect` padding index (the edge pixel is not repeated), for any offset.
pub fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// The tile's input region of a planar `c`×`h`×`w` image, reflected where it leaves the image.
pub fn gather(img: &[f32], c: usize, h: usize, w: usize, t: &Tile) -> Vec<f32> {
    let (rw, rh) = (t.region_w(), t.region_h());
    let xs: Vec<usize> = (t.rx0..t.rx1).map(|x| reflect(x, w)).collect();
    let mut out = Vec::with_capacity(c * rw * rh);
    for ch in 0..c {
        for y in t.ry0..t.ry1 {
            let row = &img[(ch * h + reflect(y, h)) * w..][..w];
            out.extend(xs.iter().map(|&x| row[x]));
        }
    }
    out
}

/// Copies the core of a tile's output (`c`×`region·s`) into the planar `c`×`oh`×`ow` output.
pub fn place(
    out: &mut [f32],
    c: usize,
    oh: usize,
    ow: usize,
    tile_out: &[f32],
    t: &Tile,
    s: usize,
) {
    let (tw, th) = (t.region_w() * s, t.region_h() * s);
    assert_eq!(tile_out.len(), c * tw * th);
    let ox = (t.x0 as isize - t.rx0) as usize * s;
    let oy = (t.y0 as isize - t.ry0) as usize * s;
    let (cw, chh) = ((t.x1 - t.x0) * s, (t.y1 - t.y0) * s);
    for ch in 0..c {
        for y in 0..chh {
            let src = &tile_out[(ch * th + oy + y) * tw + ox..][..cw];
            out[(ch * oh + t.y0 * s + y) * ow + t.x0 * s..][..cw].copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_pytorch() {
        // torch.nn.functional.pad(arange(4), (3, 3), "reflect") = [3,2,1,0,1,2,3,2,1,0]
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect(-5, 1), 0);
    }

    #[test]
    fn cores_cover_the_image_exactly_once() {
        for (w, h, tile) in [
            (854, 480, 200),
            (64, 64, 0),
            (10, 7, 3),
            (5, 5, 5),
            (1, 1, 4),
        ] {
            let tiles = plan(w, h, tile, 10, 10, 1);
            let mut seen = vec![0u8; w * h];
            for t in &tiles {
                for y in t.y0..t.y1 {
                    for x in t.x0..t.x1 {
                        seen[y * w + x] += 1;
                    }
                }
                assert!(t.rx0 <= t.x0 as isize && t.rx1 >= t.x1 as isize);
                assert!(t.rx0 >= -10 && t.rx1 <= w as isize + 10);
            }
            assert!(seen.iter().all(|&n| n == 1), "{w}x{h} tile {tile}");
        }
    }

    #[test]
    fn plan_regions() {
        let tiles = plan(25, 10, 10, 4, 2, 1);
        assert_eq!(tiles.len(), 3);
        // First tile: reflect 2 px on the left, 4 px of real context on the right.
        assert_eq!(
            (tiles[0].rx0, tiles[0].rx1, tiles[0].ry0, tiles[0].ry1),
            (-2, 14, -2, 12)
        );
        assert_eq!((tiles[1].rx0, tiles[1].rx1), (6, 24));
        assert_eq!(
            (tiles[2].x0, tiles[2].x1, tiles[2].rx0, tiles[2].rx1),
            (20, 25, 16, 27)
        );
        // Whole image, prepad 10: the golden's convention (pad 10 reflect on all sides).
        let t = plan(64, 64, 0, 10, 10, 1)[0];
        assert_eq!((t.rx0, t.rx1, t.ry0, t.ry1), (-10, 74, -10, 74));
        // Region sizes rounded up for a pixel-unshuffling network.
        let t = plan(7, 5, 0, 0, 0, 4)[0];
        assert_eq!((t.region_w(), t.region_h()), (8, 8));
    }

    #[test]
    fn gather_then_place_is_identity_for_scale_one() {
        let (c, h, w) = (2, 9, 13);
        let img: Vec<f32> = (0..c * h * w).map(|v| v as f32).collect();
        let mut out = vec![-1f32; img.len()];
        for t in plan(w, h, 4, 3, 2, 1) {
            let region = gather(&img, c, h, w, &t);
            place(&mut out, c, h, w, &region, &t, 1);
        }
        assert_eq!(out, img);
        // A region reaching outside the image reads its mirror image.
        let t = plan(w, h, 0, 0, 2, 1)[0];
        let r = gather(&img, c, h, w, &t);
        assert_eq!(r[0], img[2 * w + 2]);
    }
}
