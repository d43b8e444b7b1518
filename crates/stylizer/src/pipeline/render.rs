//! The render loop: segments in order with one continuous decoder, every stage reset and warmed
//! up at a segment's start, look-ahead stages fed from decoders of their own, repeated frames
//! reusing the output before them, and each segment committed when its encoder is done.

use std::path::Path;

use super::workdir::{count_path, direct_path, empty_marker, partial_path, segment_path, Manifest};
use crate::stage::FrameStage;
use crate::video::encode::{Container, Target};
use crate::video::{Decoder, EncodeSettings, Encoder, VideoInfo};
use crate::{Error, Frame, Progress, Result, Stage};

/// A look-ahead stage's own decoder, ahead of the render position.
pub(super) struct Ahead {
    decoder: Option<Decoder>,
    /// The next frame to peek.
    next: u64,
    /// The video ended.
    ended: bool,
}

impl Ahead {
    pub(super) fn new(next: u64) -> Self {
        Self {
            decoder: None,
            next,
            ended: false,
        }
    }
}

/// The input's frames as the stages get them: decoded at the render size.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) info: &'a VideoInfo,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) tonemap: bool,
}

impl Source<'_> {
    pub(super) fn open(&self, start: u64) -> Result<Decoder> {
        Decoder::open(self.info, self.width, self.height, start, self.tonemap)
    }

    /// Frame `index` alone.
    pub(super) fn frame(&self, index: u64) -> Result<Frame> {
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
pub(super) fn start_stages(
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

/// The stages as the frames of a segment go through them: reset and warmed up at the
/// segment's start, look-ahead stages shown the frames ahead from decoders of their own, then
/// every frame through every stage in turn. The one driver of the render loop and the preview.
pub(super) struct Chain<'a> {
    src: Source<'a>,
    stages: &'a mut [Box<dyn FrameStage>],
    /// Per stage, its own decoder ahead of the render position (look-ahead stages).
    ahead: Vec<Option<Ahead>>,
}

impl<'a> Chain<'a> {
    pub(super) fn new(src: Source<'a>, stages: &'a mut [Box<dyn FrameStage>]) -> Self {
        Self {
            src,
            stages,
            ahead: Vec::new(),
        }
    }

    /// Puts every stage in the state an uninterrupted run is in before frame `start`.
    pub(super) fn start(&mut self, start: u64, progress: &mut dyn Progress) -> Result<()> {
        for s in self.stages.iter_mut() {
            if let Some(t) = s.temporal() {
                t.reset()?;
            }
        }
        self.warm_up(start, progress)?;
        self.ahead = self
            .stages
            .iter_mut()
            .map(|s| (look_ahead(s) > 0).then(|| Ahead::new(start + 1)))
            .collect();
        Ok(())
    }

    /// Shows every stage the earlier frames it needs before frame `start`, made by the
    /// stages before it.
    fn warm_up(&mut self, start: u64, progress: &mut dyn Progress) -> Result<()> {
        for k in 0..self.stages.len() {
            let wanted = match self.stages[k].temporal() {
                Some(t) => t.warm_up_frames(start),
                None => continue,
            };
            if wanted.is_empty() {
                continue;
            }
            progress.stage(Stage::WarmUp);
            for index in wanted {
                let mut frame = self.src.frame(index)?;
                for s in self.stages[..k].iter_mut() {
                    frame = s.process(frame, index)?;
                }
                if let Some(t) = self.stages[k].temporal() {
                    t.warm_up(frame, index)?;
                }
            }
            progress.stage(Stage::Render);
        }
        Ok(())
    }

    /// Shows every look-ahead stage the frames up to `index` + its look-ahead.
    pub(super) fn peek_until(&mut self, index: u64) -> Result<()> {
        for k in 0..self.stages.len() {
            self.peek(k, index)?;
        }
        Ok(())
    }

    /// Shows stage `k` the frames after its render position up to `index` + its look-ahead
    /// (inclusive), made by the stages before it, from a decoder of its own.
    fn peek(&mut self, k: usize, index: u64) -> Result<()> {
        let Some(ahead) = self.ahead.get_mut(k).and_then(Option::as_mut) else {
            return Ok(());
        };
        let until = index + look_ahead(&mut self.stages[k]);
        while !ahead.ended && ahead.next <= until {
            let decoder = match ahead.decoder.as_mut() {
                Some(d) => d,
                None => ahead.decoder.insert(self.src.open(ahead.next)?),
            };
            let Some(mut frame) = decoder.next_frame()? else {
                ahead.ended = true;
                break;
            };
            for s in self.stages[..k].iter_mut() {
                frame = s.process(frame, ahead.next)?;
            }
            if let Some(t) = self.stages[k].temporal() {
                t.peek(frame, ahead.next)?;
            }
            ahead.next += 1;
        }
        Ok(())
    }

    /// Frame `index` through every stage, each shown what it looks ahead at first.
    pub(super) fn process(&mut self, mut frame: Frame, index: u64) -> Result<Frame> {
        for k in 0..self.stages.len() {
            self.peek(k, index)?;
            frame = self.stages[k].process(frame, index)?;
        }
        Ok(frame)
    }

    /// Frame `index` repeats the frame before: the stages that follow the frames move on.
    pub(super) fn repeat(&mut self, index: u64) -> Result<()> {
        for s in self.stages.iter_mut() {
            if let Some(t) = s.temporal() {
                t.repeat(index)?;
            }
        }
        Ok(())
    }
}

fn look_ahead(stage: &mut Box<dyn FrameStage>) -> u64 {
    stage.temporal().map_or(0, |t| t.look_ahead())
}

pub(super) struct Renderer<'a> {
    pub(super) info: &'a VideoInfo,
    pub(super) work: &'a Path,
    pub(super) manifest: &'a Manifest,
    pub(super) encode: &'a EncodeSettings,
    pub(super) range_frames: u64,
    /// The job's one segment goes straight into the output, in this container.
    pub(super) direct: Option<Container>,
}

/// What [`Renderer::render`] did.
#[derive(Default)]
pub(super) struct Rendered {
    /// Frames written.
    pub(super) frames: u64,
    /// Frames that were repeats of the frame before.
    pub(super) repeats: u64,
}

impl Renderer<'_> {
    /// Renders the `pending` segments in order, decoding continuously across neighbours.
    pub(super) fn render(
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
        let mut chain = Chain::new(self.source(), stages);
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
            chain.start(start, progress)?;
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
                    chain.repeat(start + n)?;
                    out.repeats += 1;
                } else {
                    // The stages take the frame; the input stays for the comparison. The
                    // previous pair's input buffer is reused: no allocation, no page faults.
                    let frame = match last.take() {
                        Some((mut spare, _)) => {
                            spare.clone_from(&input);
                            spare
                        }
                        None => input.clone(),
                    };
                    let frame = chain.process(frame, start + n)?;
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
