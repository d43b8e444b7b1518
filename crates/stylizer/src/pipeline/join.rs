//! The join: every segment stream-copied with the input's audio into a temporary file beside
//! the output, renamed into place when complete; also the `join` command for shared folders.

use std::path::Path;

use super::workdir::{count_path, is_done, segment_path, InputIdentity, Manifest, MANIFEST};
use super::{check_output, Job, Outcome};
use crate::video::encode::{self, Container};
use crate::video::VideoInfo;
use crate::{Error, Progress, Result, Stage};

/// Joins a work folder whose segments were rendered by `--segment` shares, reading the input
/// and settings from its manifest (the `join` command).
pub fn join_work_dir(
    work: &Path,
    overwrite: bool,
    keep_work: bool,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    let path = work.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::input(&path, format!("not a work folder of video-stylizer: {e}")))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::input(&path, format!("unreadable manifest: {e}")))?;
    let input = manifest.input.path.clone();
    if InputIdentity::of(&input)? != manifest.input {
        return Err(Error::input(
            &input,
            "changed since the segments were rendered; render them again",
        ));
    }
    let info = crate::video::probe(&input)?;
    let name = work.file_name().unwrap_or_default().to_string_lossy();
    let output = work.with_file_name(name.strip_suffix(".work").unwrap_or(&name));
    let mut job = Job::new(input, output, manifest.encode.clone());
    job.overwrite = overwrite;
    job.keep_work = keep_work;
    check_output(&job)?;
    let frames = finish_join(&job, &info, work, manifest.segments, progress)?;
    Ok(Outcome::Finished {
        output: job.output,
        frames,
        repeats: 0,
    })
}

/// Joins all segments with the input's audio into the output, atomically. Returns the number
/// of frames in the output.
pub(super) fn finish_join(
    job: &Job,
    info: &VideoInfo,
    work: &Path,
    total: usize,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let missing: Vec<usize> = (0..total).filter(|&i| !is_done(work, i)).collect();
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "{} of {total} segments are not rendered yet (first missing: {}); run the remaining --segment shares or the command without --segment",
            missing.len(),
            missing[0]
        )));
    }
    let segments = (0..total)
        .filter(|&i| segment_path(work, i).exists())
        .map(|i| {
            let path = segment_path(work, i);
            let counted = std::fs::read_to_string(count_path(work, i))
                .ok()
                .and_then(|c| c.trim().parse::<u64>().ok());
            match counted {
                Some(frames) => Ok((path, frames)),
                None => crate::video::probe(&path).map(|info| (path, info.frame_count)),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if segments.is_empty() {
        return Err(Error::input(&info.path, "no frame could be decoded"));
    }
    progress.stage(Stage::Join);
    let container = Container::from_path(&job.output)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(job.output.file_name().unwrap_or_default());
    tmp_name.push(".partial");
    let tmp = job.output.with_file_name(tmp_name);
    let result = encode::join(
        &segments,
        &work.join("concat.txt"),
        info,
        info.fps,
        job.encode.codec,
        &tmp,
        container,
        &mut |m| progress.warn(m),
    );
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    place_output(job, &tmp, work)?;
    // Stream copy keeps every frame of every segment: no need to probe the output again.
    Ok(segments.iter().map(|(_, n)| n).sum())
}

/// Gives the complete output `tmp` its name and, unless kept, removes the work folder.
pub(super) fn place_output(job: &Job, tmp: &Path, work: &Path) -> Result<()> {
    if job.output.exists() && !job.overwrite {
        let _ = std::fs::remove_file(tmp);
        return Err(Error::output(
            &job.output,
            "appeared while rendering (use --overwrite to replace it)",
        ));
    }
    std::fs::rename(tmp, &job.output)
        .map_err(|e| Error::io(format!("moving the result to {}", job.output.display()), e))?;
    if !job.keep_work {
        let _ = std::fs::remove_dir_all(work);
    }
    Ok(())
}
