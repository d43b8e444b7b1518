//! decode → stages → encode, in segments that survive a crash, then join.
//!
//! Frames are committed in segments of a few seconds, each encoded with the final codec into
//! a work folder next to the output (`<output>.work/`). A manifest records the input's
//! identity and every setting that changes pixels; a rerun with the same settings skips the
//! finished segments, and `--segment K/N` lets N machines render disjoint shares into one
//! shared folder. The join stream-copies the segments with the input's audio into a
//! temporary file in the output folder, renamed to the output name only when complete. A job
//! of one segment has nothing to join: its encoder writes that file itself.
//!
//! Here: the job, its inputs and outputs, and [`run`]; the work folder, its manifest and resume
//! (`workdir`); the render loop over segments with warm-up and look-ahead (`render`); the
//! preview (`preview`); the join (`join`).

mod join;
mod preview;
mod render;
mod workdir;

use std::path::{Path, PathBuf};

use crate::stage::FrameStage;
use crate::video::encode::Container;
use crate::video::{render_size, EncodeSettings, MaxRes, Timing, VideoInfo};
use crate::{Error, Progress, Result, Stage};

pub use join::join_work_dir;
pub use preview::{preview, PreviewFrame};
pub use workdir::{resume_seed, share_range};

use join::{finish_join, place_output};
use render::{start_stages, Rendered, Renderer};
use workdir::{direct_path, discard_unfinished, is_done, open_work_dir, InputIdentity, Manifest};

/// `--segment K/N`: share `k` of `n` (1-based) of a job rendered on several machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub k: u32,
    pub n: u32,
}

impl std::str::FromStr for Share {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Value(format!("`{s}` is not K/N with 1 <= K <= N (e.g. 3/8)"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (
            k.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

/// One rendering job: where from, where to, and the settings that do not belong to a stage.
#[derive(Debug, Clone)]
pub struct Job {
    pub input: PathBuf,
    /// The final output file (see [`output_path`]).
    pub output: PathBuf,
    pub max_res: MaxRes,
    /// Decoded frame sides are multiples of this (8 for Stable Diffusion, 2 at least).
    pub size_multiple: u32,
    pub encode: EncodeSettings,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Keep the work folder after a successful join.
    pub keep_work: bool,
    /// Length of a segment in seconds (rounded to whole frames); `None`: chosen from the
    /// stages by [`segment_seconds`].
    pub segment_seconds: Option<f64>,
    /// Render only share `k` of `n` (1-based) and do not join.
    pub share: Option<(u32, u32)>,
    /// The random seed the stages use, recorded so that a rerun without `--seed` can resume
    /// with the same noise (see [`resume_seed`]).
    pub seed: Option<u64>,
}

impl Job {
    pub fn new(input: PathBuf, output: PathBuf, encode: EncodeSettings) -> Self {
        Self {
            input,
            output,
            max_res: MaxRes::P480,
            size_multiple: 8,
            encode,
            overwrite: false,
            keep_work: false,
            segment_seconds: None,
            share: None,
            seed: None,
        }
    }

    /// `<output>.work`, next to the output.
    pub fn work_dir(&self) -> PathBuf {
        let mut name = self.output.file_name().unwrap_or_default().to_os_string();
        name.push(".work");
        self.output.with_file_name(name)
    }
}

/// The output file for `input`: `-o` as given (a folder gets the default name inside it), or
/// the default name `<input stem>_<suffix>.<ext>` (`in_stylized.mp4`) next to the input.
pub fn output_path(input: &Path, output: Option<&Path>, suffix: &str, ext: &str) -> PathBuf {
    let stem = input.file_stem().unwrap_or_default().to_string_lossy();
    let default_name = format!("{stem}_{suffix}.{ext}");
    match output {
        Some(o) if o.is_dir() || o.as_os_str().to_string_lossy().ends_with('/') => {
            o.join(default_name)
        }
        Some(o) => o.to_path_buf(),
        None => input.with_file_name(default_name),
    }
}

/// The files a batch runs on: files as given, folders replaced by the files directly inside
/// them that `accept` takes (sorted by name), each file once. A path that does not exist is
/// kept: it fails as an input of its own. A folder with nothing to take is an error that
/// names `what` it looked for.
pub fn expand_inputs(
    inputs: &[PathBuf],
    accept: impl Fn(&Path) -> bool,
    what: &str,
) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            out.push(input.clone());
            continue;
        }
        let rd = std::fs::read_dir(input).map_err(|e| Error::input(input, e.to_string()))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && accept(p))
            .collect();
        if files.is_empty() {
            return Err(Error::input(input, format!("no {what} in this folder")));
        }
        files.sort();
        out.extend(files);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    Ok(out)
}

/// Seconds of video per segment when the job does not say. Each segment costs an encoder
/// start, about 17 frames' worth of x265 work at any size plus 0.1 s of process start-up
/// (tools/bench_video.sh); a crash loses at most the segment in flight. Model stages take
/// seconds per frame, so 5 s segments lose little on a crash and their starts are under 1 %
/// of the work. Light stages (re-encoding) cost about what encoding costs, so there
/// 5 s segments would add ~7 % and 30 s ones lose no more work on a crash than 5 s of a
/// model stage's do.
pub fn segment_seconds(job: &Job, stages: &[Box<dyn FrameStage>]) -> f64 {
    job.segment_seconds
        .unwrap_or(if stages.iter().all(|s| s.light()) {
            30.0
        } else {
            5.0
        })
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The output file is complete.
    /// `repeats`: frames this run took from the frame before instead of rendering them (the
    /// same picture again: dropped frames, re-timing, still shots).
    Finished {
        output: PathBuf,
        frames: u64,
        repeats: u64,
    },
    /// A `--segment K/N` share is rendered; the join happens in a later run.
    ShareDone {
        k: u32,
        n: u32,
        segments: usize,
        work_dir: PathBuf,
        repeats: u64,
    },
}

/// Checks the output location before any work: not the input, not an existing file unless
/// overwriting, in an existing writable folder.
pub fn check_output(job: &Job) -> Result<()> {
    let out = &job.output;
    Container::from_path(out)?.check_codec(job.encode.codec, out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::output(out, "output folder does not exist"));
    }
    let same_as_input = match (
        job.input.canonicalize(),
        parent.canonicalize(),
        out.file_name(),
    ) {
        (Ok(i), Ok(p), Some(name)) => i == p.join(name),
        _ => false,
    };
    if same_as_input {
        return Err(Error::output(out, "output would overwrite the input"));
    }
    if out.is_dir() {
        return Err(Error::output(out, "is a folder"));
    }
    if out.exists() && !job.overwrite && job.share.is_none() {
        return Err(Error::output(
            out,
            "already exists (use --overwrite to replace it)",
        ));
    }
    let probe = parent.join(format!(".video-stylizer-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| Error::output(&parent, format!("output folder is not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Frame size after all stages.
fn chain_size(stages: &[Box<dyn FrameStage>], mut w: u32, mut h: u32) -> (u32, u32) {
    for s in stages {
        (w, h) = s.output_size(w, h);
    }
    (w, h)
}

/// Runs the job: renders the missing segments (all, or one share) and joins them.
pub fn run(
    job: &Job,
    info: &VideoInfo,
    stages: &mut [Box<dyn FrameStage>],
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    check_output(job)?;
    // Frames (1–25 MB each, a few per frame) come and go all the time: from the heap, not
    // a fresh mmap each, whose pages the kernel would fault in and zero every frame.
    crate::device::keep_mid_size_buffers_in_heap();
    if let Some((k, n)) = job.share {
        if n == 0 || k == 0 || k > n {
            return Err(Error::Config(format!(
                "--segment {k}/{n}: expected K/N with 1 <= K <= N"
            )));
        }
    }
    let (width, height) = render_size(
        info.width,
        info.height,
        job.max_res,
        job.size_multiple.max(2),
    );
    let (out_width, out_height) = chain_size(stages, width, height);
    let tonemap = info.hdr && crate::video::decode::can_tonemap();
    if info.hdr && !tonemap {
        progress.warn("HDR input, but this ffmpeg lacks zscale/tonemap: colours will look washed out; install an ffmpeg built with libzimg");
    }
    match info.timing {
        Timing::Constant => {}
        Timing::Variable { declared } => progress.warn(&format!(
            "variable frame rate input{}: rendering at its average rate {} fps ({:.3}; frames are repeated or dropped to keep audio in sync)",
            if declared { "" } else { " (found from the timestamps; the container declares a constant rate)" },
            info.fps,
            info.fps.as_f64()
        )),
        Timing::Dropped { coded } => progress.warn(&format!(
            "{} of the input's {} frames are dropped frames (stored empty): each shows the picture before it again, as players do, at {} fps; repeats are not rendered twice",
            info.frame_count.saturating_sub(coded),
            info.frame_count,
            info.fps
        )),
    }
    let segment_frames = ((segment_seconds(job, stages) * info.fps.as_f64()).round() as u64).max(1);
    let manifest = Manifest {
        // 2: frames equal to the one before reuse its output.
        version: 2,
        input: InputIdentity::of(&job.input)?,
        width,
        height,
        out_width,
        out_height,
        fps: info.fps.to_string(),
        tonemap,
        encode: job.encode.clone(),
        stages: stages.iter().map(|s| s.fingerprint()).collect(),
        seed: job.seed,
        segment_frames,
        segments: info.frame_count.div_ceil(segment_frames) as usize,
    };
    let work = job.work_dir();
    open_work_dir(&work, &manifest, job.share.is_some(), progress)?;

    let total = manifest.segments;
    let (first, end) = match job.share {
        Some((k, n)) => share_range(total, k, n),
        None => (0, total),
    };
    let pending: Vec<usize> = (first..end).filter(|&i| !is_done(&work, i)).collect();
    let done_frames = ((end - first - pending.len()) as u64 * segment_frames).min(info.frame_count);
    let range_frames = if end == total {
        info.frame_count
            .saturating_sub(first as u64 * segment_frames)
    } else {
        (end - first) as u64 * segment_frames
    };
    // A job of one segment is encoded straight into the output: a join would only copy it
    // once more, in an ffmpeg run of its own (~2 % of a light job's time). Resuming it means
    // rendering it again either way.
    let direct = (job.share.is_none() && total == 1 && pending == [0] && !job.keep_work)
        .then(|| Container::from_path(&job.output))
        .transpose()?;
    let mut rendered = Rendered::default();
    if !pending.is_empty() {
        progress.stage(Stage::LoadModels);
        if let Err(e) = start_stages(info, stages, (width, height)) {
            // A run that stops before its first frame leaves nothing behind.
            discard_unfinished(&work, &pending, job.share.is_none());
            return Err(e);
        }
        progress.stage(Stage::Render);
        progress.frame(done_frames, range_frames);
        let renderer = Renderer {
            info,
            work: &work,
            manifest: &manifest,
            encode: &job.encode,
            range_frames,
            direct,
        };
        rendered = match renderer.render(&pending, stages, done_frames, progress) {
            Ok(r) => r,
            Err(e) => {
                discard_unfinished(&work, &pending, job.share.is_none());
                return Err(match e {
                    Error::Interrupted { .. } if !work.exists() => {
                        Error::Interrupted { work_dir: None }
                    }
                    e => e,
                });
            }
        };
    }

    if let Some((k, n)) = job.share {
        return Ok(Outcome::ShareDone {
            k,
            n,
            segments: pending.len(),
            work_dir: work,
            repeats: rendered.repeats,
        });
    }
    let frames = if direct.is_some() {
        place_output(job, &direct_path(&work), &work)?;
        rendered.frames
    } else {
        finish_join(job, info, &work, total, progress)?
    };
    Ok(Outcome::Finished {
        output: job.output.clone(),
        repeats: rendered.repeats,
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::workdir::MANIFEST;
    use super::*;
    use crate::Frame;

    #[test]
    fn segments_are_longer_when_no_model_runs() {
        let mut job = Job::new(
            "in.mp4".into(),
            "out.mp4".into(),
            EncodeSettings::new(crate::video::Codec::H265, None, None).unwrap(),
        );
        let light: Vec<Box<dyn FrameStage>> = vec![Box::new(crate::stage::PixelStage::new(
            crate::stage::PixelOp::Identity,
        ))];
        assert_eq!(segment_seconds(&job, &light), 30.0);
        assert_eq!(segment_seconds(&job, &[]), 30.0);
        struct Model;
        impl FrameStage for Model {
            fn name(&self) -> &str {
                "model"
            }
            fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
                (w, h)
            }
            fn fingerprint(&self) -> String {
                "model".into()
            }
            fn process(&mut self, frame: Frame, _index: u64) -> Result<Frame> {
                Ok(frame)
            }
        }
        let mixed: Vec<Box<dyn FrameStage>> = vec![
            Box::new(crate::stage::PixelStage::new(
                crate::stage::PixelOp::Identity,
            )),
            Box::new(Model),
        ];
        assert_eq!(segment_seconds(&job, &mixed), 5.0);
        job.segment_seconds = Some(0.5);
        assert_eq!(segment_seconds(&job, &light), 0.5);
    }

    #[test]
    fn shares_cover_all_segments_once() {
        for total in [1usize, 2, 7, 10, 101] {
            for n in 1..=5u32 {
                let mut next = 0;
                for k in 1..=n {
                    let (a, b) = share_range(total, k, n);
                    assert_eq!(a, next);
                    next = b;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn inputs_expand_folders_by_name_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let clips = dir.path().join("clips");
        std::fs::create_dir(&clips).unwrap();
        for name in ["b.MOV", "a.mp4", "notes.txt"] {
            std::fs::write(clips.join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let given = [
            clips.join("a.mp4"),
            clips.clone(),
            dir.path().join("missing.mkv"),
        ];
        let got = expand_inputs(&given, crate::video::is_video, "videos").unwrap();
        assert_eq!(
            got,
            [
                clips.join("a.mp4"),
                clips.join("b.MOV"),
                dir.path().join("missing.mkv")
            ]
        );
        let e = expand_inputs(
            &[dir.path().join("empty")],
            crate::video::is_video,
            "videos",
        )
        .unwrap_err();
        assert!(e.to_string().contains("no videos in this folder"), "{e}");
    }

    #[test]
    fn default_output_names() {
        assert_eq!(
            output_path(Path::new("/v/in.mov"), None, "stylized", "mp4"),
            PathBuf::from("/v/in_stylized.mp4")
        );
        assert_eq!(
            output_path(
                Path::new("/v/in.mov"),
                Some(Path::new("/o/x.mkv")),
                "stylized",
                "mp4"
            ),
            PathBuf::from("/o/x.mkv")
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            output_path(Path::new("in.mp4"), Some(dir.path()), "upscaled", "mp4"),
            dir.path().join("in_upscaled.mp4")
        );
        assert_eq!(
            output_path(Path::new("/p/a.PNG"), None, "upscaled", "PNG"),
            PathBuf::from("/p/a_upscaled.PNG")
        );
    }

    #[test]
    fn a_rerun_without_seed_finds_the_unfinished_runs_seed() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mp4");
        std::fs::write(&input, b"video").unwrap();
        let settings = EncodeSettings::new(crate::video::Codec::H265, None, None).unwrap();
        let job = Job::new(input.clone(), dir.path().join("out.mp4"), settings.clone());
        assert_eq!(resume_seed(&job), None);
        let manifest = Manifest {
            version: 1,
            input: InputIdentity::of(&input).unwrap(),
            width: 8,
            height: 8,
            out_width: 8,
            out_height: 8,
            fps: "25/1".into(),
            tonemap: false,
            encode: settings,
            stages: vec![],
            seed: Some(1234),
            segment_frames: 50,
            segments: 1,
        };
        std::fs::create_dir(job.work_dir()).unwrap();
        std::fs::write(
            job.work_dir().join(MANIFEST),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        assert_eq!(resume_seed(&job), Some(1234));
        // Another input (changed file) does not inherit it.
        std::fs::write(&input, b"another video").unwrap();
        assert_eq!(resume_seed(&job), None);
    }
}
