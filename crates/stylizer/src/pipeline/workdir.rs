//! The work folder next to the output: its manifest (the input's identity and every setting
//! that changes pixels), the segment files and their markers, resume and clean-up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Job;
use crate::video::EncodeSettings;
use crate::{Error, Progress, Result};

/// The seed of an unfinished run of the same input into the same output, so that rerunning
/// a command without `--seed` resumes instead of starting afresh with new noise.
pub fn resume_seed(job: &Job) -> Option<u64> {
    let text = std::fs::read_to_string(job.work_dir().join(MANIFEST)).ok()?;
    let manifest: Manifest = serde_json::from_str(&text).ok()?;
    let same_input = InputIdentity::of(&job.input).ok()? == manifest.input;
    same_input.then_some(manifest.seed).flatten()
}

/// The input file as the manifest remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct InputIdentity {
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) modified_ns: u128,
}

impl InputIdentity {
    pub(super) fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::input(path, e.to_string()))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
            size: meta.len(),
            modified_ns,
        })
    }
}

/// Everything that decides the pixels of the segments. Equal manifests ⇒ reusable segments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) version: u32,
    pub(super) input: InputIdentity,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) out_width: u32,
    pub(super) out_height: u32,
    pub(super) fps: String,
    pub(super) tonemap: bool,
    pub(super) encode: EncodeSettings,
    pub(super) stages: Vec<String>,
    pub(super) seed: Option<u64>,
    pub(super) segment_frames: u64,
    pub(super) segments: usize,
}

pub(super) const MANIFEST: &str = "manifest.json";

pub(super) fn segment_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.mp4"))
}
pub(super) fn empty_marker(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.empty"))
}
pub(super) fn count_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.frames"))
}
pub(super) fn partial_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.partial.mp4"))
}
/// The output as a job of one segment writes it, moved into place when complete.
pub(super) fn direct_path(work: &Path) -> PathBuf {
    work.join("output.partial.tmp")
}
pub(super) fn is_done(work: &Path, i: usize) -> bool {
    segment_path(work, i).exists() || empty_marker(work, i).exists()
}

/// Segments `[first, end)` of `total` that share `k` of `n` renders.
pub fn share_range(total: usize, k: u32, n: u32) -> (usize, usize) {
    let (k, n) = (k as usize, n as usize);
    (total * (k - 1) / n, total * k / n)
}

/// Creates the work folder or checks that the one there was made with the same settings.
pub(super) fn open_work_dir(
    work: &Path,
    manifest: &Manifest,
    shared: bool,
    progress: &mut dyn Progress,
) -> Result<()> {
    let path = work.join(MANIFEST);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let old: Option<Manifest> = serde_json::from_str(&text).ok();
        if old.as_ref() == Some(manifest) {
            // Segments cut short by a crash are never valid.
            for entry in std::fs::read_dir(work).into_iter().flatten().flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().contains(".partial.") && !shared {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            return Ok(());
        }
        if shared {
            return Err(Error::Config(format!(
                "{} was made with different settings or input; every --segment share must run the same command (remove the folder to start over)",
                work.display()
            )));
        }
        progress.warn(&format!(
            "settings or input changed since the unfinished run in {}: starting afresh",
            work.display()
        ));
        std::fs::remove_dir_all(work)
            .map_err(|e| Error::io(format!("removing {}", work.display()), e))?;
    }
    std::fs::create_dir_all(work)
        .map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
    let text = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    // Written under a unique name and renamed: shares starting together never see half a file.
    let tmp = work.join(format!("{MANIFEST}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// After a failed run: removes this run's segment in flight and, unless other shares may be
/// using the folder, the whole work folder when nothing in it is worth resuming.
pub(super) fn discard_unfinished(work: &Path, pending: &[usize], alone: bool) {
    for &i in pending {
        let _ = std::fs::remove_file(partial_path(work, i));
    }
    let _ = std::fs::remove_file(direct_path(work));
    let finished = std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("seg_") && name.ends_with(".mp4") && !name.contains(".partial.")
        });
    if alone && !finished {
        let _ = std::fs::remove_dir_all(work);
    }
}
