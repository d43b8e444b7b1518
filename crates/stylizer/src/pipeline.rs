//! decode → stages → encode, in segments that survive a crash, then join.
//!
//! Frames are committed in segments of a few seconds, each encoded with the final codec into
//! a work folder next to the output (`<output>.work/`). A manifest records the input's
//! identity and every setting that changes pixels; a rerun with the same settings skips the
//! finished segments, and `--segment K/N` lets N machines render disjoint shares into one
//! shared folder. The join stream-copies the segments with the input's audio into a
//! temporary file in the output folder, renamed to the output name only when complete. A job
//! of one segment has nothing to join: its encoder writes that file itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stage::FrameStage;
use crate::video::encode::{self, Container, Target};
use crate::video::{render_size, Decoder, EncodeSettings, Encoder, MaxRes, Timing, VideoInfo};
use crate::{Error, Frame, Progress, Result, Stage};

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

/// The seed of an unfinished run of the same input into the same output, so that rerunning
/// a command without `--seed` resumes instead of starting afresh with new noise.
pub fn resume_seed(job: &Job) -> Option<u64> {
    let text = std::fs::read_to_string(job.work_dir().join(MANIFEST)).ok()?;
    let manifest: Manifest = serde_json::from_str(&text).ok()?;
    let same_input = InputIdentity::of(&job.input).ok()? == manifest.input;
    same_input.then_some(manifest.seed).flatten()
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

/// The input file as the manifest remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct InputIdentity {
    path: PathBuf,
    size: u64,
    modified_ns: u128,
}

impl InputIdentity {
    fn of(path: &Path) -> Result<Self> {
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
struct Manifest {
    version: u32,
    input: InputIdentity,
    width: u32,
    height: u32,
    out_width: u32,
    out_height: u32,
    fps: String,
    tonemap: bool,
    encode: EncodeSettings,
    stages: Vec<String>,
    seed: Option<u64>,
    segment_frames: u64,
    segments: usize,
}

const MANIFEST: &str = "manifest.json";

fn segment_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.mp4"))
}
fn empty_marker(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.empty"))
}
fn count_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.frames"))
}
fn partial_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("seg_{i:05}.partial.mp4"))
}
/// The output as a job of one segment writes it, moved into place when complete.
fn direct_path(work: &Path) -> PathBuf {
    work.join("output.partial.tmp")
}
fn is_done(work: &Path, i: usize) -> bool {
    segment_path(work, i).exists() || empty_marker(work, i).exists()
}

/// Segments `[first, end)` of `total` that share `k` of `n` renders.
pub fn share_range(total: usize, k: u32, n: u32) -> (usize, usize) {
    let (k, n) = (k as usize, n as usize);
    (total * (k - 1) / n, total * k / n)
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

/// Creates the work folder or checks that the one there was made with the same settings.
fn open_work_dir(
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
fn discard_unfinished(work: &Path, pending: &[usize], alone: bool) {
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

/// A look-ahead stage's own decoder, ahead of the render position.
struct Ahead {
    decoder: Option<Decoder>,
    /// The next frame to peek.
    next: u64,
    /// The video ended.
    ended: bool,
}

impl Ahead {
    fn new(next: u64) -> Self {
        Self {
            decoder: None,
            next,
            ended: false,
        }
    }
}

/// The input's frames as the stages get them: decoded at the render size.
#[derive(Clone, Copy)]
struct Source<'a> {
    info: &'a VideoInfo,
    width: u32,
    height: u32,
    tonemap: bool,
}

impl Source<'_> {
    fn open(&self, start: u64) -> Result<Decoder> {
        Decoder::open(self.info, self.width, self.height, start, self.tonemap)
    }

    /// Frame `index` alone.
    fn frame(&self, index: u64) -> Result<Frame> {
        self.open(index)?.next_frame()?.ok_or_else(|| {
            Error::input(
                &self.info.path,
                format!("frame {index} could not be decoded again"),
            )
        })
    }
}

/// Loads every stage and starts it on `info`'s video, each told the size of the frames the
/// stages before it make of `size`.
fn start_stages(
    info: &VideoInfo,
    stages: &mut [Box<dyn FrameStage>],
    mut size: (u32, u32),
) -> Result<()> {
    for s in stages.iter_mut() {
        s.prepare()?;
        s.start_input(info, size)?;
        size = s.output_size(size.0, size.1);
    }
    Ok(())
}

/// Shows every stage the earlier frames it needs before frame `start`, made by the stages
/// before it.
fn warm_up(
    src: Source,
    stages: &mut [Box<dyn FrameStage>],
    start: u64,
    progress: &mut dyn Progress,
) -> Result<()> {
    for k in 0..stages.len() {
        let wanted = stages[k].warm_up_frames(start);
        if wanted.is_empty() {
            continue;
        }
        progress.stage(Stage::WarmUp);
        for index in wanted {
            let mut frame = src.frame(index)?;
            for s in stages[..k].iter_mut() {
                frame = s.process(frame, index)?;
            }
            stages[k].warm_up(frame, index)?;
        }
        progress.stage(Stage::Render);
    }
    Ok(())
}

/// Shows stage `k` the frames after its render position up to `until` (inclusive), made by
/// the stages before it, from a decoder of its own.
fn peek(
    src: Source,
    stages: &mut [Box<dyn FrameStage>],
    k: usize,
    ahead: &mut Ahead,
    until: u64,
) -> Result<()> {
    while !ahead.ended && ahead.next <= until {
        let decoder = match ahead.decoder.as_mut() {
            Some(d) => d,
            None => ahead.decoder.insert(src.open(ahead.next)?),
        };
        let Some(mut frame) = decoder.next_frame()? else {
            ahead.ended = true;
            break;
        };
        for s in stages[..k].iter_mut() {
            frame = s.process(frame, ahead.next)?;
        }
        stages[k].peek(frame, ahead.next)?;
        ahead.next += 1;
    }
    Ok(())
}

/// One frame of a preview: the original at the render size, what the stages make of it, and
/// the seconds they took for it (warm-up excluded).
pub struct PreviewFrame {
    pub index: u64,
    pub original: Frame,
    pub rendered: Frame,
    pub seconds: f64,
}

/// Renders frames `indices` of the input as `job` would render them in a full run (every
/// stage reset and warmed up as at the start of a segment there, so they are the frames the
/// video will have), for `--preview`. Writes nothing.
pub fn preview(
    job: &Job,
    info: &VideoInfo,
    stages: &mut [Box<dyn FrameStage>],
    indices: &[u64],
    progress: &mut dyn Progress,
) -> Result<Vec<PreviewFrame>> {
    let (width, height) = render_size(
        info.width,
        info.height,
        job.max_res,
        job.size_multiple.max(2),
    );
    let src = Source {
        info,
        width,
        height,
        tonemap: info.hdr && crate::video::decode::can_tonemap(),
    };
    progress.stage(Stage::LoadModels);
    start_stages(info, stages, (width, height))?;
    progress.stage(Stage::Render);
    let mut out = Vec::with_capacity(indices.len());
    for (n, &index) in indices.iter().enumerate() {
        progress.frame(n as u64, indices.len() as u64);
        for s in stages.iter_mut() {
            s.reset()?;
        }
        warm_up(src, stages, index, progress)?;
        for k in 0..stages.len() {
            let ahead = stages[k].look_ahead();
            if ahead > 0 {
                peek(src, stages, k, &mut Ahead::new(index), index + ahead)?;
            }
        }
        let original = src.frame(index)?;
        let started = std::time::Instant::now();
        let mut frame = original.clone();
        for s in stages.iter_mut() {
            frame = s.process(frame, index)?;
        }
        out.push(PreviewFrame {
            index,
            original,
            rendered: frame,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    progress.frame(indices.len() as u64, indices.len() as u64);
    Ok(out)
}

struct Renderer<'a> {
    info: &'a VideoInfo,
    work: &'a Path,
    manifest: &'a Manifest,
    encode: &'a EncodeSettings,
    range_frames: u64,
    /// The job's one segment goes straight into the output, in this container.
    direct: Option<Container>,
}

/// What [`Renderer::render`] did.
#[derive(Default)]
struct Rendered {
    /// Frames written.
    frames: u64,
    /// Frames that were repeats of the frame before.
    repeats: u64,
}

impl Renderer<'_> {
    /// Renders the `pending` segments in order, decoding continuously across neighbours.
    fn render(
        &self,
        pending: &[usize],
        stages: &mut [Box<dyn FrameStage>],
        mut done: u64,
        progress: &mut dyn Progress,
    ) -> Result<Rendered> {
        let mut out = Rendered::default();
        let m = self.manifest;
        let last = m.segments - 1;
        let mut decoder: Option<(Decoder, usize)> = None; // decoder and the segment it is at
        let mut ended_at: Option<u64> = None;
        // The previous segment's encoder, input closed, still draining (x265's frame threads
        // idle one by one at the end of a file) while the next segment renders. Committed as
        // soon as its ffmpeg exits (checked after every frame) or at the latest when the next
        // segment is done; an error before that drops it, which stops its ffmpeg, and the
        // segment is redone on resume.
        let mut draining: Option<(Encoder, usize)> = None;
        for &seg in pending {
            if ended_at.is_some() {
                self.mark_empty(seg)?;
                continue;
            }
            let start = seg as u64 * m.segment_frames;
            let (dec, _) = match decoder.take() {
                Some((d, at)) if at == seg => decoder.insert((d, at)),
                _ => decoder.insert((
                    Decoder::open(self.info, m.width, m.height, start, m.tonemap)?,
                    seg,
                )),
            };
            for s in stages.iter_mut() {
                s.reset()?;
            }
            warm_up(self.source(), stages, start, progress)?;
            let mut ahead: Vec<Option<Ahead>> = stages
                .iter()
                .map(|s| (s.look_ahead() > 0).then(|| Ahead::new(start + 1)))
                .collect();
            // The last segment runs to the end of the video, whatever the container said.
            let limit = (seg != last).then_some(m.segment_frames);
            let (partial, target) = match self.direct {
                Some(container) => (
                    direct_path(self.work),
                    Target::Output {
                        info: self.info,
                        container,
                    },
                ),
                None => (partial_path(self.work, seg), Target::Segment),
            };
            // Started before the first frame: ffmpeg's start-up overlaps the decoder's.
            let mut encoder = Encoder::create(
                &partial,
                m.out_width,
                m.out_height,
                self.info.fps,
                self.encode,
                target,
                &mut |w| progress.warn(w),
            )?;
            // The segment's previous decoded frame and what the stages made of it: a frame
            // equal to it takes the same output (never across segments, so a resumed or split
            // run decides the same).
            let mut last: Option<(Frame, Frame)> = None;
            let mut n = 0u64;
            while limit.is_none_or(|l| n < l) {
                if crate::cancel::requested() {
                    // Stop ffmpeg before its half-written segment is removed; the previous
                    // segment is complete and only draining: keep it.
                    drop(encoder);
                    if let Some(prev) = draining.take() {
                        self.commit(prev, &mut out)?;
                    }
                    return Err(Error::Interrupted {
                        work_dir: Some(self.work.to_path_buf()),
                    });
                }
                let Some(input) = dec.next_frame()? else {
                    ended_at = Some(start + n);
                    break;
                };
                if last.as_ref().is_some_and(|(before, _)| *before == input) {
                    for s in stages.iter_mut() {
                        s.repeat(start + n)?;
                    }
                    out.repeats += 1;
                } else {
                    // The stages take the frame; the input stays for the comparison. The
                    // previous pair's input buffer is reused: no allocation, no page faults.
                    let mut frame = match last.take() {
                        Some((mut spare, _)) => {
                            spare.clone_from(&input);
                            spare
                        }
                        None => input.clone(),
                    };
                    for k in 0..stages.len() {
                        if let Some(a) = ahead[k].as_mut() {
                            let until = start + n + stages[k].look_ahead();
                            peek(self.source(), stages, k, a, until)?;
                        }
                        frame = stages[k].process(frame, start + n)?;
                    }
                    last = Some((input, frame));
                }
                encoder.write_frame(&last.as_ref().expect("rendered or repeated").1)?;
                if draining.as_mut().is_some_and(|(e, _)| e.has_finished()) {
                    self.commit(draining.take().expect("checked above"), &mut out)?;
                }
                n += 1;
                done += 1;
                progress.frame(done, self.range_frames.max(done));
            }
            if let Some(prev) = draining.take() {
                self.commit(prev, &mut out)?;
            }
            if n > 0 {
                encoder.close_input();
                draining = Some((encoder, seg));
            } else {
                drop(encoder);
                let _ = std::fs::remove_file(&partial);
                self.mark_empty(seg)?;
            }
            decoder = Some((decoder.take().expect("decoder is open").0, seg + 1));
        }
        if let Some(prev) = draining.take() {
            self.commit(prev, &mut out)?;
        }
        if let Some(frames) = ended_at {
            // The container's frame count, or what its duration promises (a cut Matroska file
            // still states the full duration, while counting packets finds only what is left).
            let by_duration = (self.info.duration * self.info.fps.as_f64()).round() as u64;
            let short_of_count = frames + 1 < self.info.frame_count;
            let short_of_duration =
                frames + 2 < by_duration && (frames as f64) < 0.95 * by_duration as f64;
            if short_of_count || short_of_duration {
                progress.warn(&format!(
                    "the input ended after {frames} of {} frames (truncated or damaged file?); the output has {frames} frames",
                    self.info.frame_count.max(by_duration)
                ));
            }
            if frames == 0 {
                return Err(Error::input(&self.info.path, "no frame could be decoded"));
            }
        }
        Ok(out)
    }

    fn source(&self) -> Source<'_> {
        Source {
            info: self.info,
            width: self.manifest.width,
            height: self.manifest.height,
            tonemap: self.manifest.tonemap,
        }
    }

    /// Waits for a segment's encoder and gives the file its final name, its frame count
    /// written beside it first (the join needs it; probing every segment again costs a
    /// process each). The direct output is left for [`place_output`].
    fn commit(&self, (enc, seg): (Encoder, usize), out: &mut Rendered) -> Result<()> {
        let frames = enc.finish()?;
        out.frames += frames;
        if self.direct.is_some() {
            return Ok(());
        }
        std::fs::write(count_path(self.work, seg), frames.to_string())
            .map_err(|e| Error::io(format!("finishing segment {seg}"), e))?;
        std::fs::rename(partial_path(self.work, seg), segment_path(self.work, seg))
            .map_err(|e| Error::io(format!("finishing segment {seg}"), e))
    }

    fn mark_empty(&self, seg: usize) -> Result<()> {
        std::fs::write(empty_marker(self.work, seg), b"")
            .map_err(|e| Error::io(format!("marking segment {seg}"), e))
    }
}

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
fn finish_join(
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
fn place_output(job: &Job, tmp: &Path, work: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_longer_when_no_model_runs() {
        let mut job = Job::new(
            "in.mp4".into(),
            "out.mp4".into(),
            EncodeSettings::new(crate::video::Codec::H265, None, None).unwrap(),
        );
        let light: Vec<Box<dyn FrameStage>> = vec![Box::new(crate::stage::Identity)];
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
        let mixed: Vec<Box<dyn FrameStage>> =
            vec![Box::new(crate::stage::Identity), Box::new(Model)];
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
