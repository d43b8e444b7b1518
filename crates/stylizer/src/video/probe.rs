//! What is in a video file, from `ffprobe -print_format json`.
//!
//! Frame rates are kept as exact rationals: `30000/1001` must reach the encoder as
//! `30000/1001`, not as 29.97, or a long clip drifts out of sync with its audio.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::process::{output, Tool};
use crate::{Error, Result};

/// An exact, positive rational number (a frame rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rational {
    pub num: u64,
    pub den: u64,
}

impl Rational {
    /// Parses ffprobe's `"30000/1001"` (or a bare integer); `None` for `0/0` and other
    /// non-positive values, which ffprobe prints when it does not know.
    pub fn parse(s: &str) -> Option<Self> {
        let (n, d) = s.split_once('/').unwrap_or((s, "1"));
        let (num, den) = (n.trim().parse::<u64>().ok()?, d.trim().parse::<u64>().ok()?);
        (num > 0 && den > 0).then(|| Self::new(num, den))
    }

    /// Reduced `num/den`.
    pub fn new(num: u64, den: u64) -> Self {
        fn gcd(a: u64, b: u64) -> u64 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let g = gcd(num, den).max(1);
        Self {
            num: num / g,
            den: den / g,
        }
    }

    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// The closest rational to `x > 0` whose denominator is at most `max_den` (continued
    /// fractions), so that a measured rate like 29.97 comes out as 30000/1001, not 2997/100.
    pub fn approximate(x: f64, max_den: u64) -> Self {
        let (mut p0, mut q0, mut p1, mut q1) = (0u64, 1u64, 1u64, 0u64);
        let mut v = x;
        loop {
            let a = v.floor();
            let (p2, q2) = (a as u64 * p1 + p0, a as u64 * q1 + q0);
            if q2 > max_den {
                break;
            }
            (p0, q0, p1, q1) = (p1, q1, p2, q2);
            let frac = v - a;
            if frac < 1e-9 || (p1 as f64 / q1 as f64 - x).abs() < 1e-12 * x {
                break;
            }
            v = 1.0 / frac;
        }
        Self::new(p1.max(1), q1.max(1))
    }
}

impl std::fmt::Display for Rational {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// Everything the pipeline needs to know about an input video.
#[derive(Debug, Clone, Serialize)]
pub struct VideoInfo {
    /// The probed file.
    pub path: PathBuf,
    /// Size as displayed: after rotation and with square pixels.
    pub width: u32,
    pub height: u32,
    /// Size of the stored (coded) picture.
    pub coded_width: u32,
    pub coded_height: u32,
    /// Rotation to apply for display, clockwise degrees (0, 90, 180, 270).
    pub rotation: u32,
    /// The frame rate the output is rendered at: `r_frame_rate` for constant-rate input and
    /// for dropped frames, the average rate for variable-rate input.
    pub fps: Rational,
    /// The container's average frame rate (frames / duration).
    pub avg_fps: Option<Rational>,
    /// How the stored frames are spread in time; all but [`Timing::Constant`] are re-timed to
    /// `fps` on decode (ffmpeg's `fps` filter: frames dropped or repeated).
    pub timing: Timing,
    /// Frames rendered: the video stream's frames, after re-timing to `fps`.
    pub frame_count: u64,
    /// Seconds.
    pub duration: f64,
    /// When the video stream starts relative to the file's start (seconds); carried over to
    /// the output so that audio stays aligned.
    pub video_start_offset: f64,
    pub pix_fmt: String,
    pub bit_depth: u32,
    /// PQ (smpte2084) or HLG (arib-std-b67) transfer: tone-mapped to SDR on decode.
    pub hdr: bool,
    pub color_transfer: Option<String>,
    pub codec: String,
    pub has_audio: bool,
    pub audio_codec: Option<String>,
    pub audio_streams: u32,
    pub subtitle_streams: u32,
    pub subtitle_codecs: Vec<String>,
    /// Index of the chosen stream among the file's video streams (for `-map 0:v:N`).
    pub video_stream: usize,
    /// ffprobe's `format_name` ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...).
    pub format_name: String,
}

/// How the stored frames of a video are spread in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Timing {
    /// One frame every 1/fps.
    Constant,
    /// The rate changes. `declared`: the container says so (its average rate is not its
    /// nominal one); else the packets give it away (a count that does not fit the duration,
    /// as in Matroska files whose header keeps the first rate).
    Variable { declared: bool },
    /// A constant rate with pictures left out: AVI captures store a dropped frame as an empty
    /// packet meaning "show the previous picture again". `coded` pictures stand for
    /// `frame_count` frames; players repeat the previous picture, and so does decoding.
    Dropped { coded: u64 },
}

impl Timing {
    /// Decoding re-times the frames to the output rate.
    pub fn retimed(self) -> bool {
        self != Timing::Constant
    }
}

impl VideoInfo {
    /// Variable frame rate (declared or found).
    pub fn vfr(&self) -> bool {
        matches!(self.timing, Timing::Variable { .. })
    }
}

/// The video packets as the demuxer sees them (nothing decoded): how many carry a picture,
/// and the first and last presentation times in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Packets {
    pub count: u64,
    pub first: f64,
    pub last: f64,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Deserialize, Default)]
struct FormatJson {
    #[serde(default)]
    format_name: String,
    duration: Option<String>,
    start_time: Option<String>,
}

#[derive(Deserialize, Default)]
struct StreamJson {
    #[serde(default)]
    codec_type: String,
    #[serde(default)]
    codec_name: String,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    bits_per_raw_sample: Option<String>,
    sample_aspect_ratio: Option<String>,
    r_frame_rate: Option<String>,
    avg_frame_rate: Option<String>,
    nb_frames: Option<String>,
    duration: Option<String>,
    start_time: Option<String>,
    color_transfer: Option<String>,
    #[serde(default)]
    disposition: std::collections::HashMap<String, i64>,
    #[serde(default)]
    tags: std::collections::HashMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

fn parse_f64(s: &Option<String>) -> Option<f64> {
    s.as_deref()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// Checks that `path` is a readable regular file before handing it to ffprobe, so the
/// common mistakes get a precise message.
fn check_input_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(path, "no such file"),
        std::io::ErrorKind::PermissionDenied => Error::input(path, "permission denied"),
        _ => Error::input(path, e.to_string()),
    })?;
    if meta.is_dir() {
        return Err(Error::input(path, "is a folder, not a video file"));
    }
    if meta.len() == 0 {
        return Err(Error::input(path, "is empty (0 bytes)"));
    }
    std::fs::File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
    Ok(())
}

/// Probes `path` and describes its first video stream (cover art is skipped).
pub fn probe(path: &Path) -> Result<VideoInfo> {
    check_input_file(path)?;
    let mut cmd = Tool::Ffprobe.command();
    cmd.args(["-print_format", "json", "-show_format", "-show_streams"])
        .arg(path);
    let json = match output(Tool::Ffprobe, cmd) {
        Ok(json) => json,
        // ffprobe failing on an existing file means it is not a media file ffmpeg can read.
        Err(Error::Ffmpeg { stderr, .. }) => {
            return Err(Error::input(
                path,
                format!("not a video file ffmpeg can read ({stderr})"),
            ))
        }
        Err(e) => return Err(e),
    };
    let parsed: ProbeJson = serde_json::from_slice(&json)
        .map_err(|e| Error::input(path, format!("unreadable ffprobe output: {e}")))?;
    info_from_json(path, parsed, |stream| packets(path, stream))
}

/// `packets(video_stream)` reads the packets when the header cannot be trusted for timing.
fn info_from_json(
    path: &Path,
    p: ProbeJson,
    packets: impl FnOnce(usize) -> Result<Packets>,
) -> Result<VideoInfo> {
    let format = p.format.unwrap_or_default();
    let videos: Vec<&StreamJson> = p
        .streams
        .iter()
        .filter(|s| s.codec_type == "video")
        .collect();
    let (video_stream, v) = videos
        .iter()
        .enumerate()
        .find(|(_, s)| s.disposition.get("attached_pic").copied().unwrap_or(0) == 0)
        .map(|(i, s)| (i, *s))
        .ok_or_else(|| {
            let has_audio = p.streams.iter().any(|s| s.codec_type == "audio");
            Error::input(
                path,
                if has_audio {
                    "has no video stream (audio only)"
                } else {
                    "has no video stream"
                },
            )
        })?;
    let (coded_width, coded_height) = match (v.width, v.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(Error::input(path, "video stream has no picture size")),
    };

    let rotation = rotation_of(v);
    let sar = v
        .sample_aspect_ratio
        .as_deref()
        .map(|s| s.replace(':', "/"))
        .and_then(|s| Rational::parse(&s))
        .unwrap_or(Rational { num: 1, den: 1 });
    // Square pixels: stretch the width by the sample aspect ratio, then rotate.
    let square_w = ((coded_width as u64 * sar.num) as f64 / sar.den as f64).round() as u32;
    let (width, height) = if rotation % 180 == 90 {
        (coded_height, square_w)
    } else {
        (square_w, coded_height)
    };

    let r_fps = v.r_frame_rate.as_deref().and_then(Rational::parse);
    let avg_fps = v.avg_frame_rate.as_deref().and_then(Rational::parse);
    let duration = parse_f64(&v.duration)
        .or_else(|| parse_f64(&format.duration))
        .unwrap_or(0.0);
    let video_start_offset = match (parse_f64(&v.start_time), parse_f64(&format.start_time)) {
        (Some(v), Some(f)) => (v - f).max(0.0),
        _ => 0.0,
    };
    let nb_frames = v
        .nb_frames
        .as_deref()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0);
    // The header's count is the truth for MP4/MOV (it is the sample table); AVI's counts the
    // empty packets of dropped frames too, and Matroska has none: read the packets there.
    // Declared VFR with a duration needs neither.
    let declared = declares_vfr(r_fps, avg_fps) && duration > 0.0;
    let untrusted = nb_frames.is_none() || format.format_name.split(',').any(|f| f == "avi");
    let packets = if untrusted && !declared {
        Some(packets(video_stream)?)
    } else {
        None
    };
    let Some((fps, timing, frame_count)) = timing_of(r_fps, avg_fps, nb_frames, duration, packets)
    else {
        return Err(Error::input(path, "video stream has no frame rate"));
    };
    if frame_count == 0 {
        return Err(Error::input(path, "video stream has no frames"));
    }

    let pix_fmt = v.pix_fmt.clone().unwrap_or_default();
    let bit_depth = v
        .bits_per_raw_sample
        .as_deref()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| bit_depth_of(&pix_fmt));
    let hdr = matches!(
        v.color_transfer.as_deref(),
        Some("smpte2084") | Some("arib-std-b67")
    );

    let audio: Vec<&StreamJson> = p
        .streams
        .iter()
        .filter(|s| s.codec_type == "audio")
        .collect();
    let subtitle_codecs: Vec<String> = p
        .streams
        .iter()
        .filter(|s| s.codec_type == "subtitle")
        .map(|s| s.codec_name.clone())
        .collect();

    Ok(VideoInfo {
        path: path.to_path_buf(),
        width,
        height,
        coded_width,
        coded_height,
        rotation,
        fps,
        avg_fps,
        timing,
        frame_count,
        duration,
        video_start_offset,
        pix_fmt,
        bit_depth,
        hdr,
        color_transfer: v.color_transfer.clone(),
        codec: v.codec_name.clone(),
        has_audio: !audio.is_empty(),
        audio_codec: audio.first().map(|a| a.codec_name.clone()),
        audio_streams: audio.len() as u32,
        subtitle_streams: subtitle_codecs.len() as u32,
        subtitle_codecs,
        video_stream,
        format_name: format.format_name,
    })
}

/// Clockwise display rotation from the display-matrix side data (ffprobe reports it
/// counter-clockwise) or the legacy `rotate` tag.
fn rotation_of(v: &StreamJson) -> u32 {
    let ccw = v
        .side_data_list
        .iter()
        .find_map(|sd| sd.get("rotation").and_then(|r| r.as_f64()))
        .map(|r| -r)
        .or_else(|| v.tags.get("rotate").and_then(|r| r.parse::<f64>().ok()));
    let deg = ccw.unwrap_or(0.0).round() as i64;
    // Snap to quarter turns; odd angles are not something ffmpeg's autorotate applies.
    (((deg + 45).rem_euclid(360)) / 90 * 90) as u32
}

/// Bits per component from the pixel format's name (yuv420p10le → 10).
fn bit_depth_of(pix_fmt: &str) -> u32 {
    let digits: String = pix_fmt
        .trim_end_matches("le")
        .trim_end_matches("be")
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse::<u32>()
        .ok()
        .filter(|d| (9..=16).contains(d))
        .unwrap_or(8)
}

/// The container's average rate differs from its nominal one.
fn declares_vfr(r: Option<Rational>, avg: Option<Rational>) -> bool {
    r.zip(avg)
        .is_some_and(|(r, a)| (r.as_f64() - a.as_f64()).abs() / a.as_f64() > 0.01)
}

/// The output rate, timing and frame count from what the container declares (`r`, `avg`,
/// `nb_frames`, `duration`) and, where the header cannot be trusted, the `packets`.
fn timing_of(
    r: Option<Rational>,
    avg: Option<Rational>,
    nb_frames: Option<u64>,
    duration: f64,
    packets: Option<Packets>,
) -> Option<(Rational, Timing, u64)> {
    let by_duration = |fps: Rational| (duration * fps.as_f64()).round() as u64;
    let rate = match (r, avg) {
        (Some(_), Some(a)) if declares_vfr(r, avg) => {
            let count = match (duration > 0.0, nb_frames, packets) {
                (true, _, _) => by_duration(a),
                (false, Some(n), _) => n,
                (false, None, p) => p.map_or(0, |p| p.count),
            };
            return Some((a, Timing::Variable { declared: true }, count));
        }
        (Some(r), _) => r,
        (None, Some(a)) => a,
        (None, None) => return None,
    };
    let Some(p) = packets else {
        return Some((rate, Timing::Constant, nb_frames.unwrap_or(0)));
    };
    let expected = duration * rate.as_f64();
    // Off by a frame or two (edit lists, a last frame's duration) is not a different timing.
    let fits = |n: u64| (n as f64 - expected).abs() <= (0.02 * expected).max(2.0);
    if duration <= 0.0 || fits(p.count) {
        return Some((rate, Timing::Constant, nb_frames.unwrap_or(p.count)));
    }
    if nb_frames.is_some_and(|n| fits(n) && p.count < n) {
        let timing = Timing::Dropped { coded: p.count };
        return Some((rate, timing, by_duration(rate)));
    }
    // The true average: frame intervals over the time they span.
    let span = p.last - p.first;
    if p.count < 2 || span <= 0.0 {
        return Some((rate, Timing::Constant, p.count));
    }
    let fps = Rational::approximate((p.count - 1) as f64 / span, 1001);
    Some((fps, Timing::Variable { declared: false }, p.count))
}

/// Reads the video packets (demuxing only: seconds for a long file, no decoding).
fn packets(path: &Path, video_stream: usize) -> Result<Packets> {
    let mut cmd: Command = Tool::Ffprobe.command();
    cmd.args(["-select_streams", &format!("v:{video_stream}")])
        .args(["-show_entries", "packet=pts_time"])
        .args(["-print_format", "csv=p=0"])
        .arg(path);
    let out = output(Tool::Ffprobe, cmd)?;
    Ok(packets_from_csv(&String::from_utf8_lossy(&out)))
}

/// One `pts_time` per line (`N/A` when unknown), in decoding order.
fn packets_from_csv(text: &str) -> Packets {
    let mut p = Packets {
        count: 0,
        first: f64::INFINITY,
        last: f64::NEG_INFINITY,
    };
    for line in text.lines().map(|l| l.trim().trim_end_matches(',')) {
        if line.is_empty() {
            continue;
        }
        p.count += 1;
        if let Ok(t) = line.parse::<f64>() {
            if t.is_finite() {
                p.first = p.first.min(t);
                p.last = p.last.max(t);
            }
        }
    }
    if p.first > p.last {
        (p.first, p.last) = (0.0, 0.0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationals_parse_and_reduce() {
        assert_eq!(
            Rational::parse("30000/1001"),
            Some(Rational {
                num: 30000,
                den: 1001
            })
        );
        assert_eq!(Rational::parse("50/2").unwrap().to_string(), "25/1");
        assert_eq!(Rational::parse("25").unwrap().to_string(), "25/1");
        assert_eq!(Rational::parse("0/0"), None);
        assert_eq!(Rational::parse("abc"), None);
    }

    #[test]
    fn bit_depth_from_pix_fmt() {
        assert_eq!(bit_depth_of("yuv420p"), 8);
        assert_eq!(bit_depth_of("yuv420p10le"), 10);
        assert_eq!(bit_depth_of("yuv444p12be"), 12);
        assert_eq!(bit_depth_of("rgb24"), 8);
        assert_eq!(bit_depth_of("gray16le"), 16);
    }

    fn no_packets(_: usize) -> Result<Packets> {
        panic!("the header is enough here")
    }

    #[test]
    fn rates_are_approximated_by_small_denominators() {
        assert_eq!(
            Rational::approximate(29.97002997, 1001).to_string(),
            "30000/1001"
        );
        assert_eq!(Rational::approximate(22.5, 1001).to_string(), "45/2");
        assert_eq!(Rational::approximate(25.0, 1001).to_string(), "25/1");
        let r = Rational::approximate(89.0 / 3.933, 1001);
        assert!(
            r.den <= 1001 && (r.as_f64() - 89.0 / 3.933).abs() < 1e-5,
            "{r}"
        );
    }

    /// The shapes of the generated clips in the CLI tests, as ffprobe reports them.
    #[test]
    fn timing_from_packets_where_the_header_cannot_be_trusted() {
        let r30 = Rational::new(30, 1);
        let pk = |count, first, last| Some(Packets { count, first, last });
        // Matroska, 2 s at 30 fps then 2 s at 15 fps, header 30/1: 90 packets over 4 s.
        let (fps, t, n) =
            timing_of(Some(r30), Some(r30), None, 4.023, pk(90, 0.023, 3.956)).unwrap();
        assert_eq!(t, Timing::Variable { declared: false });
        assert!((fps.as_f64() - 89.0 / 3.933).abs() < 1e-4, "{fps}");
        assert_eq!(n, 90);
        // AVI at 15 fps: 442 frames in the index, 64 with a picture.
        let r15 = Rational::new(15, 1);
        let (fps, t, n) = timing_of(
            Some(r15),
            Some(r15),
            Some(442),
            29.466667,
            pk(64, 0.0, 29.4),
        )
        .unwrap();
        assert_eq!((fps, t, n), (r15, Timing::Dropped { coded: 64 }, 442));
        // Constant: a frame or two off the duration is still constant.
        let (fps, t, n) = timing_of(Some(r30), Some(r30), None, 4.05, pk(120, 0.0, 3.967)).unwrap();
        assert_eq!((fps, t, n), (r30, Timing::Constant, 120));
        // Declared VFR (MP4 sample table): the average rate, no packets needed.
        let avg = Rational::new(300, 13);
        let (fps, t, n) = timing_of(Some(r30), Some(avg), Some(90), 3.9, None).unwrap();
        assert_eq!((fps, t, n), (avg, Timing::Variable { declared: true }, 90));
        assert!(timing_of(None, None, Some(9), 1.0, None).is_none());
    }

    #[test]
    fn packet_times_from_csv() {
        let p = packets_from_csv("0.023000\n0.089000,\nN/A\n0.056000\n\n");
        assert_eq!(
            p,
            Packets {
                count: 4,
                first: 0.023,
                last: 0.089
            }
        );
        assert_eq!(packets_from_csv("").count, 0);
    }

    fn stream(json: serde_json::Value) -> StreamJson {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn rotation_from_display_matrix_and_tag() {
        let s = stream(
            serde_json::json!({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}),
        );
        assert_eq!(rotation_of(&s), 90);
        let s = stream(serde_json::json!({"side_data_list": [{"rotation": 90}]}));
        assert_eq!(rotation_of(&s), 270);
        let s = stream(serde_json::json!({"tags": {"rotate": "180"}}));
        assert_eq!(rotation_of(&s), 180);
        assert_eq!(rotation_of(&stream(serde_json::json!({}))), 0);
    }

    #[test]
    fn vfr_uses_average_rate_and_rotation_swaps_sides() {
        let p: ProbeJson = serde_json::from_value(serde_json::json!({
            "streams": [
                {"codec_type": "video", "codec_name": "mjpeg", "width": 10, "height": 10,
                 "disposition": {"attached_pic": 1}, "r_frame_rate": "90000/1", "avg_frame_rate": "0/0"},
                {"codec_type": "video", "codec_name": "h264", "width": 640, "height": 360,
                 "sample_aspect_ratio": "1:1", "r_frame_rate": "60/1", "avg_frame_rate": "24000/1001",
                 "duration": "10.0", "pix_fmt": "yuv420p",
                 "side_data_list": [{"rotation": -90}]},
                {"codec_type": "audio", "codec_name": "aac"}
            ],
            "format": {"format_name": "mov,mp4", "duration": "10.0"}
        }))
        .unwrap();
        let info = info_from_json(Path::new("x.mp4"), p, no_packets).unwrap();
        assert_eq!(info.video_stream, 1);
        assert!(info.vfr());
        assert_eq!(info.fps.to_string(), "24000/1001");
        assert_eq!((info.width, info.height), (360, 640));
        assert_eq!(info.frame_count, 240);
        assert_eq!(info.audio_codec.as_deref(), Some("aac"));
    }

    #[test]
    fn anamorphic_width_is_stretched() {
        let p: ProbeJson = serde_json::from_value(serde_json::json!({
            "streams": [{"codec_type": "video", "codec_name": "mpeg2video", "width": 720, "height": 576,
                "sample_aspect_ratio": "64:45", "r_frame_rate": "25/1", "avg_frame_rate": "25/1",
                "nb_frames": "50"}],
        }))
        .unwrap();
        let info = info_from_json(Path::new("x.mpg"), p, no_packets).unwrap();
        assert_eq!((info.width, info.height), (1024, 576));
        assert!(!info.vfr());
    }

    #[test]
    fn audio_only_is_refused() {
        let p: ProbeJson = serde_json::from_value(serde_json::json!({
            "streams": [{"codec_type": "audio", "codec_name": "mp3"}],
        }))
        .unwrap();
        let e = info_from_json(Path::new("a.mp3"), p, no_packets).unwrap_err();
        assert!(e.to_string().contains("audio only"), "{e}");
    }
}
