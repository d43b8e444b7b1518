//! Streaming encode (rgb24 frames → ffmpeg → a segment file) and the final join (segments +
//! the input's audio and subtitles → the output file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};

use serde::{Deserialize, Serialize};

use super::probe::{Rational, VideoInfo};
use super::process::{Process, Tool};
use crate::{Error, Frame, Result};

/// Video codec of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    H265,
    H264,
    Av1,
}

impl std::str::FromStr for Codec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "h265" | "hevc" | "x265" => Ok(Codec::H265),
            "h264" | "avc" | "x264" => Ok(Codec::H264),
            "av1" => Ok(Codec::Av1),
            _ => Err(Error::Config(format!(
                "unknown codec `{s}` (expected h265, h264 or av1)"
            ))),
        }
    }
}

impl Codec {
    /// The product's historical default is crf 26 for H.265; the others get the value of
    /// similar quality for their encoder.
    pub fn default_crf(self) -> u32 {
        match self {
            Codec::H265 => 26,
            Codec::H264 => 21,
            Codec::Av1 => 32,
        }
    }

    fn max_crf(self) -> u32 {
        match self {
            Codec::H265 | Codec::H264 => 51,
            Codec::Av1 => 63,
        }
    }

    fn encoder(self) -> &'static str {
        match self {
            Codec::H265 => "libx265",
            Codec::H264 => "libx264",
            Codec::Av1 => "libsvtav1",
        }
    }
}

/// How frames are encoded; part of the resume fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeSettings {
    pub codec: Codec,
    pub crf: u32,
    pub preset: Option<String>,
}

impl EncodeSettings {
    pub fn new(codec: Codec, crf: Option<u32>, preset: Option<String>) -> Result<Self> {
        let crf = crf.unwrap_or_else(|| codec.default_crf());
        if crf > codec.max_crf() {
            return Err(Error::Config(format!(
                "--crf {crf} is out of range for {:?} (0..={})",
                codec,
                codec.max_crf()
            )));
        }
        Ok(Self { codec, crf, preset })
    }
}

/// Output container, from the output file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Mov,
    Mkv,
    Webm,
}

impl Container {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("mp4") | Some("m4v") => Ok(Container::Mp4),
            Some("mov") => Ok(Container::Mov),
            Some("mkv") => Ok(Container::Mkv),
            Some("webm") => Ok(Container::Webm),
            _ => Err(Error::output(
                path,
                "unsupported output extension (use .mp4, .mkv, .mov or .webm)",
            )),
        }
    }

    fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Mov => "mov",
            Container::Mkv => "matroska",
            Container::Webm => "webm",
        }
    }

    /// Checks that the container can hold the codec (webm is AV1 only here).
    pub fn check_codec(self, codec: Codec, path: &Path) -> Result<()> {
        if self == Container::Webm && codec != Codec::Av1 {
            return Err(Error::output(path, "a .webm output needs --codec av1"));
        }
        Ok(())
    }

    /// Audio codecs this container takes as they are; anything else is transcoded.
    fn keeps_audio(self, codec: &str) -> bool {
        match self {
            Container::Mkv => true,
            Container::Mp4 => matches!(codec, "aac" | "mp3" | "ac3" | "eac3" | "opus" | "alac"),
            Container::Mov => {
                matches!(codec, "aac" | "mp3" | "ac3" | "eac3" | "alac")
                    || codec.starts_with("pcm_")
            }
            Container::Webm => matches!(codec, "opus" | "vorbis"),
        }
    }

    /// Subtitle encoder for this container, or `None` if it cannot hold subtitles of that
    /// kind (bitmap subtitles in mp4/mov/webm).
    fn subtitle_codec(self, codec: &str) -> Option<&'static str> {
        let text = matches!(
            codec,
            "subrip" | "srt" | "ass" | "ssa" | "webvtt" | "mov_text" | "text"
        );
        match self {
            Container::Mkv => Some("copy"),
            Container::Mp4 | Container::Mov => text.then_some("mov_text"),
            Container::Webm => text.then_some("webvtt"),
        }
    }
}

/// MP4 track timescale for `fps`: a multiple of the rate's numerator, so every frame lasts a
/// whole number of ticks and 30000/1001 stays exactly 30000/1001 through the join.
fn timescale(fps: Rational) -> u64 {
    let k = 10_000u64.div_ceil(fps.num).max(1);
    fps.num * k
}

/// Where an [`Encoder`] writes.
pub enum Target<'a> {
    /// A segment: video only, MP4, for a later [`join`].
    Segment,
    /// The output itself, with the input's audio, subtitles and metadata as [`join`] would
    /// add them. A job of one segment needs no join, so it skips that extra ffmpeg run.
    Output {
        info: &'a VideoInfo,
        container: Container,
    },
}

/// An ffmpeg process encoding rgb24 frames from a pipe into a segment or the output.
pub struct Encoder {
    process: Process,
    /// Unbuffered: a frame goes from its own memory into the pipe (1 MiB) in one write.
    stdin: Option<ChildStdin>,
    width: u32,
    height: u32,
    frames: u64,
}

impl Encoder {
    /// Starts encoding `width`×`height` frames at `fps` into `path`.
    pub fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: Rational,
        settings: &EncodeSettings,
        target: Target,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let mut cmd = Tool::Ffmpeg.command();
        if let Target::Output { info, .. } = &target {
            offset_video(&mut cmd, info);
        }
        cmd.args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
            .args(["-s", &format!("{width}x{height}")])
            .args(["-framerate", &fps.to_string()])
            .args(["-i", "-"]);
        if let Target::Output { info, .. } = &target {
            cmd.arg("-i").arg(&info.path).args(["-map", "0:v:0"]);
        }
        // One output frame per frame sent: an offset video start must not be filled with
        // copies of the first frame, as MP4's default constant-rate mode would.
        cmd.args(["-fps_mode", "passthrough"]);
        // RGB → BT.709 limited-range 4:2:0, tagged, so players show the colours we made.
        // Area-averaged chroma keeps 0.3-0.8 dB more of the picture than bicubic.
        cmd.args([
            "-vf",
            "scale=out_color_matrix=bt709:out_range=tv:flags=area+accurate_rnd+full_chroma_int,format=yuv420p",
        ])
        .args(["-colorspace", "bt709", "-color_primaries", "bt709"])
        .args(["-color_trc", "bt709", "-color_range", "tv"])
        .args(["-c:v", settings.codec.encoder()])
        .args(["-crf", &settings.crf.to_string()]);
        if let Some(preset) = &settings.preset {
            cmd.args(["-preset", preset]);
        }
        match settings.codec {
            Codec::H265 => {
                cmd.args(["-x265-params", "log-level=error"]);
            }
            Codec::Av1 => {
                cmd.args(["-svtav1-params", "fast-decode=1"]);
            }
            Codec::H264 => {}
        }
        match target {
            Target::Segment => {
                cmd.args(["-video_track_timescale", &timescale(fps).to_string()])
                    .args(["-f", "mp4", "-y"])
                    .arg(path);
            }
            Target::Output { info, container } => {
                mux_output(&mut cmd, info, fps, settings.codec, container, path, warn)
            }
        }
        let mut process = Process::spawn(Tool::Ffmpeg, cmd, true)?;
        let stdin = process.take_stdin().expect("stdin is piped");
        Ok(Self {
            process,
            stdin: Some(stdin),
            width,
            height,
            frames: 0,
        })
    }

    pub fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        if (frame.width, frame.height) != (self.width, self.height) {
            return Err(Error::Config(format!(
                "a stage produced a {}x{} frame, expected {}x{}",
                frame.width, frame.height, self.width, self.height
            )));
        }
        let stdin = self.stdin.as_mut().expect("encoder is open");
        if let Err(e) = stdin.write_all(&frame.data) {
            // A broken pipe means ffmpeg died: its own message is the useful one.
            self.stdin = None;
            return Err(self
                .process
                .failure()
                .unwrap_or_else(|| Error::io("writing frames to ffmpeg", e)));
        }
        self.frames += 1;
        Ok(())
    }

    /// Closes the pipe: ffmpeg goes on to drain its encoder (frame threads, lookahead) in
    /// the background while the caller starts on the next segment.
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// After [`Encoder::close_input`]: whether ffmpeg is done with the file (never blocks).
    pub fn has_finished(&mut self) -> bool {
        self.stdin.is_none() && self.process.has_exited()
    }

    /// Closes the pipe and waits for ffmpeg to finish the file.
    pub fn finish(mut self) -> Result<u64> {
        self.close_input();
        let frames = self.frames;
        self.process.wait()?;
        Ok(frames)
    }
}

/// Joins encoded segments (in order, each with its frame count) with the input's audio and
/// subtitles into `output`, written by stream copy. `output` is written as given; the caller
/// renames it into place.
#[allow(clippy::too_many_arguments)]
pub fn join(
    segments: &[(PathBuf, u64)],
    list_path: &Path,
    info: &VideoInfo,
    fps: Rational,
    codec: Codec,
    output: &Path,
    container: Container,
    warn: &mut dyn FnMut(&str),
) -> Result<()> {
    // The concat demuxer's list, with each segment's exact duration: read from the files it
    // would be MP4's millisecond movie duration, and the rounding adds up over segments.
    let mut list = String::from("ffconcat version 1.0\n");
    for (s, frames) in segments {
        let p = s
            .canonicalize()
            .map_err(|e| Error::io(format!("segment {}", s.display()), e))?;
        list.push_str(&format!(
            "file '{}'\nduration {:.6}\n",
            p.to_string_lossy().replace('\'', "'\\''"),
            *frames as f64 * fps.den as f64 / fps.num as f64
        ));
    }
    std::fs::write(list_path, list)
        .map_err(|e| Error::io(format!("writing {}", list_path.display()), e))?;
    let mut cmd = Tool::Ffmpeg.command();
    cmd.args(["-f", "concat", "-safe", "0"]);
    offset_video(&mut cmd, info);
    cmd.arg("-i").arg(list_path).arg("-i").arg(&info.path);
    cmd.args(["-map", "0:v:0", "-c:v", "copy"]);
    if matches!(container, Container::Mp4 | Container::Mov) {
        // The concat demuxer offsets files in microseconds; snapping every timestamp back
        // to the frame grid (in the segments' time base) keeps 30000/1001 exact over any
        // length. Matroska counts in milliseconds anyway, and ffmpeg 5.1 hands its bitstream
        // filters packets in that time base while saying it is the segments' one: the snap
        // would collapse whole runs of frames onto one timestamp.
        let tick = timescale(fps) * fps.den / fps.num;
        cmd.args([
            "-bsf:v",
            &format!(
                "setts=pts=round(PTS/{tick})*{tick}:dts=round(DTS/{tick})*{tick}:duration={tick}"
            ),
        ]);
    }
    mux_output(&mut cmd, info, fps, codec, container, output, warn);
    Process::spawn(Tool::Ffmpeg, cmd, false)?.wait()
}

/// Starts the next input (the video) where the input's video starts: its audio may begin
/// earlier.
fn offset_video(cmd: &mut Command, info: &VideoInfo) {
    if info.video_start_offset > 0.0005 {
        cmd.args(["-itsoffset", &format!("{:.6}", info.video_start_offset)]);
    }
}

/// The output's streams besides the video (input 1, the original file: its audio,
/// subtitles, metadata and chapters, converted where the container needs it) and the
/// container's settings, then the output file.
fn mux_output(
    cmd: &mut Command,
    info: &VideoInfo,
    fps: Rational,
    codec: Codec,
    container: Container,
    output: &Path,
    warn: &mut dyn FnMut(&str),
) {
    cmd.args(["-map_metadata", "1", "-map_chapters", "1"]);
    if let Some(codec) = &info.audio_codec {
        cmd.args(["-map", "1:a"]);
        if container.keeps_audio(codec) {
            cmd.args(["-c:a", "copy"]);
        } else {
            let (enc, name) = match container {
                Container::Webm => ("libopus", "Opus"),
                _ => ("aac", "AAC"),
            };
            warn(&format!(
                "audio `{codec}` cannot be stored in this container as it is; converting it to {name}"
            ));
            cmd.args(["-c:a", enc, "-b:a", "192k"]);
        }
    }
    let mut kept = 0;
    for (i, codec) in info.subtitle_codecs.iter().enumerate() {
        match container.subtitle_codec(codec) {
            Some(enc) => {
                cmd.args(["-map", &format!("1:s:{i}")]);
                cmd.args([format!("-c:s:{kept}"), enc.to_string()]);
                kept += 1;
            }
            None => warn(&format!(
                "subtitle stream {i} (`{codec}`) cannot be stored in this container; it is left out (use .mkv to keep it)"
            )),
        }
    }
    if matches!(container, Container::Mp4 | Container::Mov) {
        cmd.args(["-video_track_timescale", &timescale(fps).to_string()]);
        if codec == Codec::H265 {
            // Apple players need the hvc1 tag to play HEVC.
            cmd.args(["-tag:v", "hvc1"]);
        }
        cmd.args(["-movflags", "+faststart"]);
    }
    cmd.args(["-f", container.muxer(), "-y"]).arg(output);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timescale_is_a_multiple_of_the_rate() {
        let ntsc = Rational::new(30000, 1001);
        assert_eq!(timescale(ntsc) % 30000, 0);
        assert_eq!(timescale(Rational::new(25, 1)), 10_000);
        assert_eq!(timescale(Rational::new(24000, 1001)), 24000);
    }

    #[test]
    fn containers_and_codecs() {
        assert_eq!(
            Container::from_path(Path::new("a/b.MKV")).unwrap(),
            Container::Mkv
        );
        assert!(Container::from_path(Path::new("a.avi")).is_err());
        assert!(Container::Webm
            .check_codec(Codec::H265, Path::new("x.webm"))
            .is_err());
        assert!(Container::Mp4.keeps_audio("aac"));
        assert!(!Container::Mp4.keeps_audio("pcm_s16le"));
        assert!(Container::Mov.keeps_audio("pcm_s16le"));
        assert_eq!(Container::Mp4.subtitle_codec("subrip"), Some("mov_text"));
        assert_eq!(Container::Mp4.subtitle_codec("hdmv_pgs_subtitle"), None);
        assert_eq!("HEVC".parse::<Codec>().unwrap(), Codec::H265);
        assert!(EncodeSettings::new(Codec::H265, Some(52), None).is_err());
        assert_eq!(
            EncodeSettings::new(Codec::H265, None, None).unwrap().crf,
            26
        );
    }
}
