//! Still images in and out (png, jpg, webp) for the `upscale` command on image files and
//! folders.

use std::path::{Path, PathBuf};

use crate::{Error, Frame, Result};

/// Extensions [`read_image`] accepts (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes an image to rgb24 (alpha is dropped, grey is expanded).
pub fn read_image(path: &Path) -> Result<Frame> {
    let img =
        image::open(path).map_err(|e| Error::input(path, format!("cannot read image: {e}")))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Frame::from_rgb(w, h, rgb.into_raw()))
}

/// Encodes by extension (png, jpg at quality 95, webp lossless), via a temporary name in the
/// same folder renamed at the end, so a failed write never leaves a truncated image.
pub fn write_image(frame: &Frame, path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let format = match ext.as_str() {
        "png" => image::ImageFormat::Png,
        "jpg" | "jpeg" => image::ImageFormat::Jpeg,
        "webp" => image::ImageFormat::WebP,
        _ => {
            return Err(Error::output(
                path,
                "unsupported image extension (use .png, .jpg or .webp)",
            ))
        }
    };
    let buf = image::RgbImage::from_raw(frame.width, frame.height, frame.data.clone())
        .ok_or_else(|| Error::output(path, "frame size does not match its data"))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::result::Result<(), String> {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| e.to_string())?);
        match format {
            image::ImageFormat::Jpeg => {
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 95)
                    .encode_image(&buf)
                    .map_err(|e| e.to_string())?
            }
            _ => buf.write_to(&mut f, format).map_err(|e| e.to_string())?,
        }
        std::io::Write::flush(&mut f).map_err(|e| e.to_string())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::output(path, format!("cannot write image: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}

/// The images directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::input(dir, e.to_string()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_png_webp_and_jpg() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..24 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let f = Frame::from_rgb(24, 16, data);
        for ext in ["png", "webp"] {
            let p = dir.path().join(format!("a.{ext}"));
            write_image(&f, &p).unwrap();
            assert_eq!(read_image(&p).unwrap(), f, "{ext} is lossless");
        }
        let p = dir.path().join("b.JPG");
        write_image(&f, &p).unwrap();
        let g = read_image(&p).unwrap();
        assert_eq!((g.width, g.height), (24, 16));
        let names: Vec<_> = list_images(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.png", "a.webp", "b.JPG"]);
        assert!(write_image(&f, &dir.path().join("c.gif")).is_err());
        assert!(read_image(&dir.path().join("missing.png")).is_err());
    }
}
