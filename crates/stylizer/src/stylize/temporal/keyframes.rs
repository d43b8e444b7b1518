//! Which frames are diffused: all of them, or every K-th only (`--keyframe-every K`), the
//! frames between carried from the keyframes on both sides along the source's optical flow
//! ([`crate::temporal::fusion::interpolate`]). A keyframe depends on nothing but the anchor,
//! so the ones held stay valid across segments; unless a fusion chains them
//! (Rerender-A-Video's previous frame is the previous keyframe): then every segment starts the
//! chain again from the keyframe before it, rendered following the first frame, as the look-back
//! frame of a run that diffuses every frame is.

use std::collections::btree_map::{BTreeMap, Entry};

use crate::temporal::flow::{DisParams, Gray};
use crate::temporal::fusion::{interpolate, FrameMotion, FUSION_FLOW};
use crate::{Error, Frame, Result};

/// Which frames are diffused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// Every frame.
    All,
    /// Every K-th (K ≥ 2), the others propagated between them.
    Keyframes(u64),
}

impl Frames {
    /// `--keyframe-every K`: 1 diffuses every frame.
    pub fn every(k: u64) -> Result<Self> {
        match k {
            0 => Err(Error::Config(
                "--keyframe-every must be at least 1 (1 restyles every frame)".into(),
            )),
            1 => Ok(Frames::All),
            k => Ok(Frames::Keyframes(k)),
        }
    }

    /// K: one frame in K is diffused.
    pub fn interval(self) -> u64 {
        match self {
            Frames::All => 1,
            Frames::Keyframes(k) => k,
        }
    }
}

/// A restyled keyframe and the original's luminance, to measure motion from.
struct Keyframe {
    gray: Gray,
    frame: Frame,
}

/// The keyframe axis at run time: the restyled keyframes around the current frame and any
/// peeked ahead, by index.
pub(crate) struct KeyframeState {
    every: u64,
    keys: BTreeMap<u64, Keyframe>,
}

/// Renders a frame that is diffused: `(frame, index)` → the restyled frame.
pub(crate) type Render<'a> = dyn FnMut(&Frame, u64) -> Result<Frame> + 'a;

impl KeyframeState {
    pub fn new(frames: Frames) -> Self {
        Self {
            every: frames.interval(),
            keys: BTreeMap::new(),
        }
    }

    /// A new input.
    pub fn restart(&mut self) {
        self.keys.clear();
    }

    /// A segment starts where keyframes are chained: those rendered along the chain are
    /// dropped (one peeked ahead of the segment would follow the frames before it); the first
    /// frame depends on nothing.
    pub fn restart_chain(&mut self) {
        self.keys.retain(|&index, _| index == 0);
    }

    /// The frame rendered last before frame `start`, which a chain would continue from: the
    /// frame before, or the keyframe before (none when `start` is a keyframe).
    pub fn rendered_before(&self, start: u64) -> Option<u64> {
        match self.every {
            1 => start.checked_sub(1),
            k => Some(start - start % k).filter(|&key| key != start),
        }
    }

    /// The keyframe before a segment's first frame, unless it is held.
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        let key = start - start % self.every;
        if key != start && !self.keys.contains_key(&key) && frames.last() != Some(&key) {
            frames.push(key);
        }
    }

    /// A warm-up frame is rendered whole (it is a keyframe).
    pub fn renders_warm_up(&self) -> bool {
        self.every > 1
    }

    /// A frame between keyframes needs the keyframe after it.
    pub fn look_ahead(&self) -> u64 {
        self.every - 1
    }

    /// Renders keyframes as they are seen ahead of their turn.
    pub fn peek(&mut self, frame: Frame, index: u64, render: &mut Render) -> Result<()> {
        if self.every > 1 && index % self.every == 0 {
            self.keyframe(frame, index, render)?;
        }
        Ok(())
    }

    /// Frame `index` restyled: rendered, or carried from the keyframes around it.
    pub fn process(&mut self, frame: Frame, index: u64, render: &mut Render) -> Result<Frame> {
        let k = self.every;
        if k == 1 {
            return render(&frame, index);
        }
        let before = index - index % k;
        if before == index {
            return Ok(self.keyframe(frame, index, render)?.clone());
        }
        // Keyframes behind the one before this frame are no longer needed.
        self.keys = self.keys.split_off(&before);
        let Some(a) = self.keys.get(&before) else {
            return Err(Error::Model(format!(
                "stylize: frame {index} needs keyframe {before}, which was not rendered first"
            )));
        };
        // The keyframe after is missing only when the video ends before it.
        let b = self.keys.get(&(before + k));
        let (w, h) = (frame.width as usize, frame.height as usize);
        let gray = Gray::from_rgb(w, h, &frame.data);
        let params = DisParams::preset(FUSION_FLOW);
        let near_b = (index - before) as f32 / k as f32;
        let keys: Vec<(FrameMotion, Vec<f32>, f32)> =
            [Some((a, 1.0 - near_b)), b.map(|b| (b, near_b))]
                .into_iter()
                .flatten()
                .map(|(key, weight)| {
                    let motion = FrameMotion::between(&key.gray, &gray, &params);
                    (motion, key.frame.to_unit_rgb(), weight)
                })
                .collect();
        let refs: Vec<(&FrameMotion, &[f32], f32)> =
            keys.iter().map(|(m, i, w)| (m, i.as_slice(), *w)).collect();
        Ok(Frame::from_unit_rgb(
            frame.width,
            frame.height,
            &interpolate(&refs, 3),
        ))
    }

    /// The restyled keyframe `index`, rendered unless it is held already.
    fn keyframe(&mut self, frame: Frame, index: u64, render: &mut Render) -> Result<&Frame> {
        Ok(match self.keys.entry(index) {
            Entry::Occupied(held) => &held.into_mut().frame,
            Entry::Vacant(slot) => {
                let gray = Gray::from_rgb(frame.width as usize, frame.height as usize, &frame.data);
                let frame = render(&frame, index)?;
                &slot.insert(Keyframe { gray, frame }).frame
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_continues_from_the_frame_rendered_before_the_segment() {
        let all = KeyframeState::new(Frames::All);
        assert_eq!(all.rendered_before(0), None);
        assert_eq!(all.rendered_before(5), Some(4));
        let keys = KeyframeState::new(Frames::Keyframes(3));
        // Frames 3 and 4 are made from keyframes 3 and 6; keyframe 6 starts its own chain.
        assert_eq!(keys.rendered_before(4), Some(3));
        assert_eq!(keys.rendered_before(5), Some(3));
        assert_eq!(keys.rendered_before(6), None);
        assert_eq!(keys.rendered_before(0), None);
    }
}
