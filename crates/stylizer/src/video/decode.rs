//! Streaming decode: ffmpeg writes `rawvideo rgb24` frames to a pipe, we read one at a time.
//! Frames never touch the disk.

use std::io::Read;
use std::process::ChildStdout;
use std::sync::OnceLock;

use super::probe::VideoInfo;
use super::process::{output, Process, Tool};
use crate::{Error, Frame, Result};

/// Short-side limit for decoded frames (`--max-res`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MaxRes {
    P480,
    P720,
    P1080,
    /// Keep the input size (still rounded down to multiples of 8).
    Original,
}

impl MaxRes {
    fn short_side(self) -> Option<u32> {
        match self {
            MaxRes::P480 => Some(480),
            MaxRes::P720 => Some(720),
            MaxRes::P1080 => Some(1080),
            MaxRes::Original => None,
        }
    }
}

impl std::str::FromStr for MaxRes {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "480p" | "480" => Ok(MaxRes::P480),
            "720p" | "720" => Ok(MaxRes::P720),
            "1080p" | "1080" => Ok(MaxRes::P1080),
            "original" => Ok(MaxRes::Original),
            _ => Err(Error::Config(format!(
                "unknown max resolution `{s}` (expected 480p, 720p, 1080p or original)"
            ))),
        }
    }
}

impl std::fmt::Display for MaxRes {
    /// As `--max-res` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaxRes::P480 => "480p",
            MaxRes::P720 => "720p",
            MaxRes::P1080 => "1080p",
            MaxRes::Original => "original",
        })
    }
}

/// Size frames are decoded at: the short side brought down to `max_res` (never up), the
/// aspect ratio kept, both sides rounded down to multiples of `multiple` (8 for the diffusion
/// model's latent grid; 2 is what 4:2:0 video needs).
pub fn render_size(display_w: u32, display_h: u32, max_res: MaxRes, multiple: u32) -> (u32, u32) {
    let short = display_w.min(display_h).max(1);
    let target = max_res.short_side().map_or(short, |s| s.min(short));
    let scale = target as f64 / short as f64;
    let fit = |v: u32| (((v as f64 * scale).round() as u32) / multiple * multiple).max(multiple);
    (fit(display_w), fit(display_h))
}

/// Filters this ffmpeg build has (checked once).
fn has_filter(name: &str) -> bool {
    static FILTERS: OnceLock<String> = OnceLock::new();
    let list = FILTERS.get_or_init(|| {
        let mut cmd = Tool::Ffmpeg.command();
        cmd.arg("-filters");
        output(Tool::Ffmpeg, cmd)
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default()
    });
    list.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(name))
}

/// Whether HDR input can be tone-mapped by this ffmpeg (needs zscale and tonemap).
pub fn can_tonemap() -> bool {
    has_filter("zscale") && has_filter("tonemap")
}

/// Builds the `-vf` chain: re-time VFR and dropped frames, skip to `start`, tone-map HDR, scale to square
/// pixels at `width`×`height`.
pub fn filter_chain(
    info: &VideoInfo,
    width: u32,
    height: u32,
    start: u64,
    tonemap: bool,
) -> String {
    let mut f = Vec::new();
    if info.timing.retimed() {
        f.push(format!("fps={}", info.fps));
    }
    if start > 0 {
        f.push(format!("select=gte(n\\,{start})"));
    }
    if info.hdr && tonemap {
        // Linear light → BT.709 primaries → Hable curve → BT.709 transfer, in float RGB, so
        // PQ/HLG highlights are compressed instead of clipped or washed out.
        f.push(
            "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,\
             tonemap=tonemap=hable:desat=0,zscale=t=bt709:m=bt709:r=pc,format=gbrp"
                .into(),
        );
    }
    // full_chroma_int: chroma upsampled before the RGB conversion, not nearest-neighbour.
    // Not accurate_rnd: it triples the cost of the conversion (4.3 s vs 1.2 s for 10 s of
    // 1080p) for at most one code value of rounding.
    f.push(format!(
        "scale={width}:{height}:flags=lanczos+full_chroma_int,setsar=1"
    ));
    f.join(",")
}

/// An ffmpeg process decoding the input to rgb24 frames.
pub struct Decoder {
    process: Process,
    path: std::path::PathBuf,
    stdout: ChildStdout,
    width: u32,
    height: u32,
    decoded: u64,
}

impl Decoder {
    /// Starts decoding `info`'s video at frame `start` (0-based, after VFR re-timing), scaled
    /// to `width`×`height`.
    pub fn open(
        info: &VideoInfo,
        width: u32,
        height: u32,
        start: u64,
        tonemap: bool,
    ) -> Result<Self> {
        let mut cmd = Tool::Ffmpeg.command();
        cmd.arg("-i")
            .arg(&info.path)
            .args(["-map", &format!("0:v:{}", info.video_stream)])
            .args(["-vf", &filter_chain(info, width, height, start, tonemap)])
            // Frames out exactly as the filter chain emits them: no duplication or dropping
            // by the muxer's frame-rate logic (rawvideo would otherwise default to CFR).
            .args(["-fps_mode", "passthrough"])
            .args(["-an", "-sn", "-dn"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
        let mut process = Process::spawn(Tool::Ffmpeg, cmd, false)?;
        let stdout = process.take_stdout().expect("stdout is piped");
        Ok(Self {
            process,
            path: info.path.clone(),
            // Unbuffered: frames are read straight into their own memory (through a buffer,
            // every frame would be copied once more; the pipe itself holds 1 MiB).
            stdout,
            width,
            height,
            decoded: 0,
        })
    }

    /// The next frame, or `None` at the end of the video. A decoder failure is an error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let len = Frame::byte_len(self.width, self.height);
        // Read into fresh capacity rather than a zeroed buffer: a frame is megabytes.
        let mut data = Vec::with_capacity(len);
        let filled = (&mut self.stdout)
            .take(len as u64)
            .read_to_end(&mut data)
            .map_err(|e| Error::io("reading decoded frames from ffmpeg", e))?;
        if filled == 0 {
            // End of stream: ffmpeg must have exited cleanly, else report its error.
            return match self.process.failure() {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        if filled < len {
            return Err(self.process.failure().unwrap_or_else(|| {
                Error::input(
                    &self.path,
                    format!(
                        "decoding stopped in the middle of frame {} ({filled} of {} bytes)",
                        self.decoded, len
                    ),
                )
            }));
        }
        self.decoded += 1;
        Ok(Some(Frame::from_rgb(self.width, self.height, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_size_never_upscales_and_rounds_to_8() {
        assert_eq!(render_size(1920, 1080, MaxRes::P480, 8), (848, 480));
        assert_eq!(render_size(1280, 720, MaxRes::P480, 8), (848, 480));
        assert_eq!(render_size(1080, 1920, MaxRes::P720, 8), (720, 1280));
        assert_eq!(render_size(321, 241, MaxRes::P480, 8), (320, 240));
        assert_eq!(render_size(640, 360, MaxRes::P1080, 8), (640, 360));
        assert_eq!(render_size(3840, 2160, MaxRes::Original, 8), (3840, 2160));
        assert_eq!(render_size(4, 4, MaxRes::P480, 8), (8, 8));
        assert_eq!(render_size(161, 91, MaxRes::Original, 2), (160, 90));
    }

    #[test]
    fn max_res_parses_and_rejects() {
        assert_eq!("720p".parse::<MaxRes>().unwrap(), MaxRes::P720);
        assert_eq!("ORIGINAL".parse::<MaxRes>().unwrap(), MaxRes::Original);
        let e = "4k".parse::<MaxRes>().unwrap_err();
        assert!(e.to_string().contains("unknown max resolution `4k`"));
    }
}
