//! Still images in and out (png, jpg, webp) for the `upscale` command on image files and
//! folders. Images keep what they are: grey or colour, with or without alpha, 8 or 16 bits per
//! sample — as Real-ESRGAN's `inference_realesrgan.py` keeps them.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Pixel, Primitive};

use crate::{Error, Result};

/// Extensions [`read_image`] accepts (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

pub fn is_image(path: &Path) -> bool {
    crate::has_extension(path, IMAGE_EXTENSIONS)
}

/// Decodes an image, keeping grey/colour, alpha and 8/16-bit depth (float images become
/// 16-bit).
pub fn read_image(path: &Path) -> Result<DynamicImage> {
    let img =
        image::open(path).map_err(|e| Error::input(path, format!("cannot read image: {e}")))?;
    Ok(match img {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => img,
        other if other.color().has_alpha() => DynamicImage::ImageRgba16(other.to_rgba16()),
        other => DynamicImage::ImageRgb16(other.to_rgb16()),
    })
}

/// An image taken apart for the network: planar f32 in [0, 1] (samples / 255 or / 65535).
#[derive(Debug, Clone, PartialEq)]
pub struct Planes {
    pub width: u32,
    pub height: u32,
    /// `[3][h][w]` RGB; a grey image is repeated into all three (cv2 `GRAY2RGB`).
    pub colour: Vec<f32>,
    /// `[h][w]`, when the image has an alpha channel.
    pub alpha: Option<Vec<f32>>,
    pub grey: bool,
    pub sixteen_bit: bool,
}

impl Planes {
    /// Takes apart an image as [`read_image`] returns it.
    pub fn split(img: &DynamicImage) -> Self {
        fn go<P: Pixel>(b: &ImageBuffer<P, Vec<P::Subpixel>>) -> (Vec<f32>, Option<Vec<f32>>)
        where
            P::Subpixel: Into<f32>,
        {
            let ch = P::CHANNEL_COUNT as usize;
            let grey = ch <= 2;
            let max: f32 = P::Subpixel::DEFAULT_MAX_VALUE.into();
            let n = b.width() as usize * b.height() as usize;
            let mut colour = vec![0f32; 3 * n];
            let mut alpha = (ch == 2 || ch == 4).then(|| vec![0f32; n]);
            for (i, px) in b.as_raw().chunks_exact(ch).enumerate() {
                for c in 0..3 {
                    colour[c * n + i] = px[if grey { 0 } else { c }].into() / max;
                }
                if let Some(a) = alpha.as_mut() {
                    a[i] = px[ch - 1].into() / max;
                }
            }
            (colour, alpha)
        }
        let (colour, alpha) = match img {
            DynamicImage::ImageLuma8(b) => go(b),
            DynamicImage::ImageLumaA8(b) => go(b),
            DynamicImage::ImageRgb8(b) => go(b),
            DynamicImage::ImageRgba8(b) => go(b),
            DynamicImage::ImageLuma16(b) => go(b),
            DynamicImage::ImageLumaA16(b) => go(b),
            DynamicImage::ImageRgb16(b) => go(b),
            DynamicImage::ImageRgba16(b) => go(b),
            other if other.color().has_alpha() => go(&other.to_rgba16()),
            other => go(&other.to_rgb16()),
        };
        let color = img.color();
        Self {
            width: img.width(),
            height: img.height(),
            colour,
            alpha,
            grey: !color.has_color(),
            sixteen_bit: color.bytes_per_pixel() > color.channel_count(),
        }
    }

    /// The luma of the colour planes after clamping to [0, 1] (ITU-R 601, as cv2 `BGR2GRAY`
    /// computes it for float images: B·0.114 + G·0.587 + R·0.299).
    pub fn luma(&self) -> Vec<f32> {
        let n = self.width as usize * self.height as usize;
        (0..n)
            .map(|i| {
                let [r, g, b] = [0, 1, 2].map(|c| self.colour[c * n + i].clamp(0.0, 1.0));
                b * 0.114 + g * 0.587 + r * 0.299
            })
            .collect()
    }

    /// Puts the planes back together in the layout they were split from: values are clamped
    /// to [0, 1], grey images take the luma of the three colour planes (ITU-R 601, cv2
    /// `BGR2GRAY`, see [`Planes::luma`]), and samples are `round(v · max)` with ties to
    /// even (NumPy's `round`).
    pub fn compose(&self) -> DynamicImage {
        let max = if self.sixteen_bit { 65535.0 } else { 255.0 };
        let level = |v: f32| (v.clamp(0.0, 1.0) * max).round_ties_even();
        let n = self.width as usize * self.height as usize;
        let ch = if self.grey { 1 } else { 3 } + usize::from(self.alpha.is_some());
        let luma = if self.grey { self.luma() } else { Vec::new() };
        let mut levels = Vec::with_capacity(ch * n);
        for i in 0..n {
            if self.grey {
                levels.push(level(luma[i]));
            } else {
                levels.extend([0, 1, 2].map(|c| level(self.colour[c * n + i])));
            }
            if let Some(a) = &self.alpha {
                levels.push(level(a[i]));
            }
        }
        fn buf<P: Pixel>(
            w: u32,
            h: u32,
            raw: Vec<P::Subpixel>,
        ) -> ImageBuffer<P, Vec<P::Subpixel>> {
            ImageBuffer::from_raw(w, h, raw).expect("planes hold width·height pixels")
        }
        let (w, h) = (self.width, self.height);
        if self.sixteen_bit {
            let raw: Vec<u16> = levels.into_iter().map(|v| v as u16).collect();
            match ch {
                1 => DynamicImage::ImageLuma16(buf(w, h, raw)),
                2 => DynamicImage::ImageLumaA16(buf(w, h, raw)),
                3 => DynamicImage::ImageRgb16(buf(w, h, raw)),
                _ => DynamicImage::ImageRgba16(buf(w, h, raw)),
            }
        } else {
            let raw: Vec<u8> = levels.into_iter().map(|v| v as u8).collect();
            match ch {
                1 => DynamicImage::ImageLuma8(buf(w, h, raw)),
                2 => DynamicImage::ImageLumaA8(buf(w, h, raw)),
                3 => DynamicImage::ImageRgb8(buf(w, h, raw)),
                _ => DynamicImage::ImageRgba8(buf(w, h, raw)),
            }
        }
    }
}

/// The image without its alpha channel when every pixel is fully opaque; `None` when it has no
/// alpha or some pixel is not opaque.
pub fn drop_opaque_alpha(img: &DynamicImage) -> Option<DynamicImage> {
    let opaque = match img {
        DynamicImage::ImageLumaA8(b) => b.pixels().all(|p| p[1] == u8::MAX),
        DynamicImage::ImageRgba8(b) => b.pixels().all(|p| p[3] == u8::MAX),
        DynamicImage::ImageLumaA16(b) => b.pixels().all(|p| p[1] == u16::MAX),
        DynamicImage::ImageRgba16(b) => b.pixels().all(|p| p[3] == u16::MAX),
        _ => false,
    };
    opaque.then(|| match img {
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageLuma8(img.to_luma8()),
        DynamicImage::ImageRgba8(_) => DynamicImage::ImageRgb8(img.to_rgb8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma16(img.to_luma16()),
        _ => DynamicImage::ImageRgb16(img.to_rgb16()),
    })
}

/// Converts what `format` cannot hold, with a one-line warning each: JPEG and WebP store 8 bits
/// per sample, and JPEG has no alpha (the image is flattened onto white, as image editors
/// export it).
fn fit_format(img: &DynamicImage, format: ImageFormat, path: &Path) -> DynamicImage {
    let color = img.color();
    let mut out = img.clone();
    if format != ImageFormat::Png && color.bytes_per_pixel() > color.channel_count() {
        tracing::warn!(
            "{}: {format:?} holds 8 bits per sample, the 16-bit image is written as 8-bit (use .png to keep 16 bits)",
            path.display()
        );
        out = match (color.has_color(), color.has_alpha()) {
            (false, false) => DynamicImage::ImageLuma8(img.to_luma8()),
            (false, true) => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
            (true, false) => DynamicImage::ImageRgb8(img.to_rgb8()),
            (true, true) => DynamicImage::ImageRgba8(img.to_rgba8()),
        };
    }
    if format == ImageFormat::Jpeg && color.has_alpha() {
        tracing::warn!(
            "{}: JPEG has no transparency, the image is flattened onto white (use .png or .webp to keep it)",
            path.display()
        );
        let mut rgba = out.to_rgba8();
        for p in rgba.pixels_mut() {
            let a = p[3] as u32;
            for c in 0..3 {
                p[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
            }
        }
        let flat = DynamicImage::ImageRgba8(rgba);
        out = if color.has_color() {
            DynamicImage::ImageRgb8(flat.to_rgb8())
        } else {
            DynamicImage::ImageLuma8(flat.to_luma8())
        };
    }
    out
}

/// Encodes by extension (png, jpg at quality 95, webp lossless; see `fit_format` for what
/// jpg and webp cannot hold), via a temporary name in the same folder renamed at the end, so a
/// failed write never leaves a truncated image.
pub fn write_image(img: &DynamicImage, path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let format = match ext.as_str() {
        "png" => ImageFormat::Png,
        "jpg" | "jpeg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::WebP,
        _ => {
            return Err(Error::output(
                path,
                "unsupported image extension (use .png, .jpg or .webp)",
            ))
        }
    };
    let img = fit_format(img, format, path);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::result::Result<(), String> {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| e.to_string())?);
        match format {
            ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 95)
                .encode_image(&img)
                .map_err(|e| e.to_string())?,
            _ => img.write_to(&mut f, format).map_err(|e| e.to_string())?,
        }
        std::io::Write::flush(&mut f).map_err(|e| e.to_string())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::output(path, format!("cannot write image: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, LumaA, Rgb, Rgba};

    fn samples(n: usize, modulus: usize) -> impl Iterator<Item = usize> {
        (0..n).map(move |i| i * 7919 % modulus)
    }

    /// One image of every layout, with varied samples (alpha included).
    fn layouts(w: u32, h: u32) -> Vec<DynamicImage> {
        let n = (w * h) as usize;
        let b8 = |ch: usize| samples(ch * n, 256).map(|v| v as u8).collect::<Vec<_>>();
        let b16 = |ch: usize| samples(ch * n, 65536).map(|v| v as u16).collect::<Vec<_>>();
        vec![
            DynamicImage::ImageLuma8(ImageBuffer::<Luma<u8>, _>::from_raw(w, h, b8(1)).unwrap()),
            DynamicImage::ImageLumaA8(ImageBuffer::<LumaA<u8>, _>::from_raw(w, h, b8(2)).unwrap()),
            DynamicImage::ImageRgb8(ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, b8(3)).unwrap()),
            DynamicImage::ImageRgba8(ImageBuffer::<Rgba<u8>, _>::from_raw(w, h, b8(4)).unwrap()),
            DynamicImage::ImageLuma16(ImageBuffer::<Luma<u16>, _>::from_raw(w, h, b16(1)).unwrap()),
            DynamicImage::ImageLumaA16(
                ImageBuffer::<LumaA<u16>, _>::from_raw(w, h, b16(2)).unwrap(),
            ),
            DynamicImage::ImageRgb16(ImageBuffer::<Rgb<u16>, _>::from_raw(w, h, b16(3)).unwrap()),
            DynamicImage::ImageRgba16(ImageBuffer::<Rgba<u16>, _>::from_raw(w, h, b16(4)).unwrap()),
        ]
    }

    #[test]
    fn every_layout_survives_png_and_the_planes() {
        let dir = tempfile::tempdir().unwrap();
        for (i, img) in layouts(13, 7).into_iter().enumerate() {
            let p = dir.path().join(format!("{i}.png"));
            write_image(&img, &p).unwrap();
            let back = read_image(&p).unwrap();
            assert_eq!(back, img, "{:?} through png", img.color());
            let planes = Planes::split(&img);
            assert_eq!(planes.alpha.is_some(), img.color().has_alpha());
            if planes.grey {
                // Grey is repeated into R, G and B, and 0.114 + 0.587 + 0.299 = 1 brings it back.
                let n = 13 * 7;
                assert_eq!(planes.colour[..n], planes.colour[2 * n..]);
            }
            assert_eq!(
                planes.compose(),
                img,
                "{:?} through the planes",
                img.color()
            );
        }
    }

    #[test]
    fn jpeg_and_webp_get_what_they_can_hold() {
        let dir = tempfile::tempdir().unwrap();
        for img in layouts(24, 16) {
            let c = img.color();
            let p = dir.path().join("a.webp");
            write_image(&img, &p).unwrap();
            let webp = read_image(&p).unwrap();
            assert_eq!(webp.color().has_alpha(), c.has_alpha(), "webp keeps alpha");
            assert_eq!(webp.color().bytes_per_pixel(), webp.color().channel_count());
            let p = dir.path().join("b.JPG");
            write_image(&img, &p).unwrap();
            let jpg = read_image(&p).unwrap();
            assert!(!jpg.color().has_alpha());
            assert_eq!((jpg.width(), jpg.height()), (24, 16));
        }
        // Flattened onto white: a transparent black pixel comes out white.
        let clear = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(8, 8, Rgba([0u8, 0, 0, 0])));
        let p = dir.path().join("clear.jpg");
        write_image(&clear, &p).unwrap();
        assert!(read_image(&p)
            .unwrap()
            .to_rgb8()
            .pixels()
            .all(|p| p.0.iter().all(|&v| v >= 250)));
        assert!(write_image(&clear, &dir.path().join("c.gif")).is_err());
        assert!(read_image(&dir.path().join("missing.png")).is_err());
    }

    #[test]
    fn opaque_alpha_is_dropped_only_when_fully_opaque() {
        let mut img = ImageBuffer::from_pixel(5, 3, LumaA([9u16, u16::MAX]));
        let opaque = drop_opaque_alpha(&DynamicImage::ImageLumaA16(img.clone())).unwrap();
        assert_eq!(
            opaque,
            DynamicImage::ImageLuma16(ImageBuffer::from_pixel(5, 3, Luma([9u16])))
        );
        img.put_pixel(4, 2, LumaA([9, u16::MAX - 1]));
        assert!(drop_opaque_alpha(&DynamicImage::ImageLumaA16(img)).is_none());
        assert!(drop_opaque_alpha(&layouts(2, 2)[2]).is_none());
    }
}
