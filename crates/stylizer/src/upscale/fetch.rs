//! The model cache folder and downloads into it.
//!
//! Folder: `$VIDEO_STYLIZER_MODELS`, else `$XDG_CACHE_HOME/video-stylizer/models`, else
//! `~/.cache/video-stylizer/models`. A model name `NAME` resolves to `NAME.pth`,
//! `NAME.safetensors` or `NAME.param` there. Downloads go to `FILE.part` (resumed with an HTTP
//! Range request when it exists), are checked against a pinned sha256, then renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A model `video-stylizer models fetch NAME` can download.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    pub file: &'static str,
    pub url: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

/// Official Real-ESRGAN release files whose sha256 is pinned here. (Other release files —
/// RealESRGAN_x2plus, realesr-animevideov3, realesr-general-x4v3 — load from a path; their
/// checksums could not be verified offline, so they are not offered for download.)
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "RealESRGAN_x4plus",
        file: "RealESRGAN_x4plus.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        sha256: "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        bytes: 67_040_989,
    },
    KnownModel {
        name: "RealESRGAN_x4plus_anime_6B",
        file: "RealESRGAN_x4plus_anime_6B.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        sha256: "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
        bytes: 17_938_799,
    },
];

/// The default model, as the product always used.
pub const DEFAULT_MODEL: &str = "RealESRGAN_x4plus";

/// Env var that overrides the model cache folder.
pub const MODELS_ENV: &str = "VIDEO_STYLIZER_MODELS";

pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("video-stylizer").join("models")
}

pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// `--upscale-model NAME|PATH` → a model file. A name is looked up in [`models_dir`]; a
/// missing one is an error that says how to get it.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    resolve_model_in(spec, &models_dir())
}

/// [`resolve_model`] with an explicit cache folder.
pub fn resolve_model_in(spec: &str, dir: &Path) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let looks_like_path = spec.contains(std::path::MAIN_SEPARATOR)
        || spec.contains('/')
        || p.extension().is_some_and(|e| {
            ["pth", "pt", "safetensors", "param", "bin"].contains(&e.to_string_lossy().as_ref())
        });
    if looks_like_path {
        return Err(Error::Weights(format!("{spec}: no such model file")));
    }
    for ext in ["pth", "safetensors", "param"] {
        let f = dir.join(format!("{spec}.{ext}"));
        if f.is_file() {
            return Ok(f);
        }
    }
    Err(Error::Weights(match known_model(spec) {
        Some(_) => format!(
            "model {spec} is not in the model cache ({}); download it with `video-stylizer models fetch {spec}` (or pass a .pth/.safetensors/.param file to --upscale-model)",
            dir.display()
        ),
        None => format!(
            "unknown model {spec}: not in the model cache ({}) and not downloadable (known: {}); pass a .pth/.safetensors/.param file to --upscale-model",
            dir.display(),
            KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        ),
    }))
}

/// Downloads a known model into `dir` (see [`download`]); returns its path. Does nothing if
/// the file is already there with the right checksum.
pub fn fetch_model(
    name: &str,
    dir: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf> {
    let m = known_model(name).ok_or_else(|| {
        Error::Config(format!(
            "unknown model {name}; downloadable models: {}",
            KNOWN_MODELS
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let dest = dir.join(m.file);
    if dest.is_file() && sha256_file(&dest)? == m.sha256 {
        return Ok(dest);
    }
    download(m.url, m.sha256, &dest, progress)?;
    Ok(dest)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// GET `url` into `dest`, resuming `dest.part` if a previous attempt left one, then checks
/// the sha256 and renames into place. `progress(done, total)` is called as bytes arrive.
pub fn download(
    url: &str,
    sha256: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<()> {
    let net = |e: &dyn std::fmt::Display| Error::Input {
        path: PathBuf::from(url),
        reason: format!("download failed: {e}"),
    };
    if let Some(d) = dest.parent() {
        fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| net(&e))?;
    let status = resp.status().as_u16();
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // 206: the server continues where we stopped; 200: it sends everything again;
    // 416: nothing left to send (the part file is complete).
    let (mut file, mut done, total) = match status {
        206 => {
            let f = OpenOptions::new().append(true).open(&part);
            (Some(f), have, len.map(|l| l + have))
        }
        200 => (Some(File::create(&part)), 0, len),
        416 if have > 0 => (None, have, Some(have)),
        _ => return Err(net(&format!("HTTP status {status}"))),
    };
    if let Some(f) = file.take() {
        let mut f = f.map_err(|e| Error::io(format!("writing {}", part.display()), e))?;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        progress(done, total);
        loop {
            let n = body.read(&mut buf).map_err(|e| net(&e))?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])
                .map_err(|e| Error::io(format!("writing {}", part.display()), e))?;
            done += n as u64;
            progress(done, total);
        }
        f.sync_all()
            .map_err(|e| Error::io(format!("writing {}", part.display()), e))?;
    }
    let got = sha256_file(&part)?;
    if got != sha256 {
        // A corrupt partial file would poison every later resume.
        let _ = fs::remove_file(&part);
        return Err(Error::Weights(format!(
            "{url}: sha256 mismatch (got {got}, expected {sha256}); the partial download was removed, try again"
        )));
    }
    fs::rename(&part, dest).map_err(|e| Error::io(format!("renaming to {}", dest.display()), e))
}
