//! Where each frame's ControlNet image comes from: Canny edges of the frame (`--control
//! canny`), the frame itself (`--control frame`: tile and colour nets), or the same frame of
//! another video (`--control-video`: depth, pose or line art made by any tool).

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::sampling::img2img::ControlWeight;
use crate::stylize::canny::canny;
use crate::video::decode::{can_tonemap, Decoder};
use crate::video::probe::{probe, VideoInfo};
use crate::weights::ModelSource;
use crate::{Error, Frame, Result};

/// Thresholds the ControlNet annotators call `cv2.Canny` with.
pub const CANNY_THRESHOLDS: (f64, f64) = (100.0, 200.0);

/// What a ControlNet is shown for each frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlSource {
    /// Canny edges of the frame, low and high thresholds on the L1 gradient.
    Canny { low: f64, high: f64 },
    /// The frame itself.
    Frame,
    /// The frame of the same number in this video (resized to the frame's size).
    Video(PathBuf),
}

impl std::fmt::Display for ControlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlSource::Canny { low, high } => write!(f, "canny({low},{high})"),
            ControlSource::Frame => f.write_str("frame"),
            ControlSource::Video(p) => write!(f, "video({})", p.display()),
        }
    }
}

/// One `--controlnet-id` with its control images and weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetSpec {
    pub model: ModelSource,
    pub control: ControlSource,
    pub weight: ControlWeight,
}

/// A control video read in step with the input. Any frame can be asked for (a resumed or
/// split run starts mid-way): going on from the last one read is cheap, anything else
/// restarts the decoder there.
pub(crate) struct ControlVideo {
    info: VideoInfo,
    width: u32,
    height: u32,
    decoder: Option<Decoder>,
    /// The frame the decoder gives next.
    next: u64,
}

impl ControlVideo {
    /// Opens `path` for an input of `input`'s frames rendered at `width`×`height`; refuses a
    /// video whose frame count differs, before any frame is rendered.
    pub(crate) fn open(
        path: &std::path::Path,
        input: &VideoInfo,
        width: u32,
        height: u32,
    ) -> Result<Self> {
        let info = probe(path)?;
        if info.frame_count != input.frame_count {
            return Err(Error::Config(format!(
                "--control-video {} has {} frames, the input {} has {}: a control video must match the input frame for frame",
                path.display(),
                info.frame_count,
                input.path.display(),
                input.frame_count
            )));
        }
        Ok(Self {
            info,
            width,
            height,
            decoder: None,
            next: 0,
        })
    }

    /// Frame `index`, at the input's rendered size.
    pub(crate) fn frame(&mut self, index: u64) -> Result<Frame> {
        if self.decoder.is_none() || self.next > index {
            let tonemap = self.info.hdr && can_tonemap();
            self.decoder = Some(Decoder::open(
                &self.info,
                self.width,
                self.height,
                index,
                tonemap,
            )?);
            self.next = index;
        }
        let decoder = self.decoder.as_mut().expect("opened above");
        loop {
            let frame = decoder.next_frame()?.ok_or_else(|| {
                Error::input(
                    &self.info.path,
                    format!("the control video ends before frame {index}"),
                )
            })?;
            self.next += 1;
            if self.next > index {
                return Ok(frame);
            }
        }
    }
}

/// The control image `[1, 3, H, W]` in [0, 1] for `frame` (number `index`) from `source`;
/// `video` is the opened control video of a [`ControlSource::Video`].
pub(crate) fn control_image(
    source: &ControlSource,
    frame: &Frame,
    index: u64,
    video: Option<&mut ControlVideo>,
    device: &Device,
) -> Result<Tensor> {
    match (source, video) {
        (ControlSource::Canny { low, high }, _) => {
            let (w, h) = (frame.width as usize, frame.height as usize);
            let edges = canny(&frame.data, w, h, 3, *low, *high);
            let plane: Vec<f32> = edges.iter().map(|&v| v as f32 / 255.0).collect();
            Ok(Tensor::from_vec(plane, (1, 1, h, w), device)?.repeat((1, 3, 1, 1))?)
        }
        (ControlSource::Frame, _) => frame.to_tensor(device),
        (ControlSource::Video(_), Some(video)) => video.frame(index)?.to_tensor(device),
        (ControlSource::Video(p), None) => Err(Error::Model(format!(
            "control video {} was not opened before frame {index}",
            p.display()
        ))),
    }
}
