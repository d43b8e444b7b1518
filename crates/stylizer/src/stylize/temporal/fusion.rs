//! How the previous result is carried into the frame: not at all, or along the source's
//! optical flow (`--consistency flow`): in the early steps the frame's predicted x0 is
//! replaced by the previous frame's x0 of the same step, warped into it, wherever the previous
//! frame saw the same surface, and the latents re-noised with the model's own ε; the later
//! steps refine the frame on its own. Decoded pixels may be blended too
//! ([`crate::temporal::fusion`]). The chain restarts at every segment from a look-back frame
//! rendered on its own, so a segment's frames never depend on where the run started.

use candle_core::Tensor;

use super::rerender::{DisFlows, PairFlows, RerenderFusion, RerenderState};
use super::Diffuse;
use crate::frame::interleaved;
use crate::sampling::img2img::StepHook;
use crate::sampling::schedulers::Prediction;
use crate::temporal::flow::{DisParams, Gray};
use crate::temporal::fusion::{FlowFusion, FrameMotion, FUSION_FLOW};
use crate::{Frame, Result};

/// How the previous result is carried into the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Every frame keeps its own result.
    None,
    /// Along the flow: x0 in the early steps, and pixels.
    Flow(FlowFusion),
    /// Rerender-A-Video's: the first frame's x0, then a second pass towards the first and
    /// previous results blended in pixels ([`super::rerender`]).
    Rerender(RerenderFusion),
}

impl std::fmt::Display for Fusion {
    /// As the fingerprint has it: `none`, or the weights.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fusion::None => f.write_str("none"),
            Fusion::Flow(flow) => write!(f, "{flow}"),
            Fusion::Rerender(r) => write!(f, "{r}"),
        }
    }
}

/// What flow-guided fusion keeps of the frame rendered last.
struct Previous {
    index: u64,
    /// The original frame's luminance, to measure motion from.
    gray: Gray,
    /// The (fused) predicted x0 of every fused step.
    x0: Vec<Tensor>,
    /// Per latent cell, where the x0 it carries truly sits relative to the cell (in cells).
    lag: Vec<[f32; 2]>,
    /// The (fused) image, RGB interleaved in [0, 1]; kept when pixels are blended.
    image: Option<Vec<f32>>,
}

/// The fusion axis at run time: the frame rendered last.
pub(crate) struct FusionState {
    choice: Fusion,
    previous: Option<Previous>,
    rerender: Option<RerenderState>,
}

impl FusionState {
    pub fn new(choice: Fusion) -> Self {
        Self::with_flows(choice, Box::new(DisFlows))
    }

    /// With the flows between original frames from `flows` (Rerender-A-Video's; replays
    /// give the reference's own).
    pub fn with_flows(choice: Fusion, flows: Box<dyn PairFlows>) -> Self {
        Self {
            choice,
            previous: None,
            rerender: match choice {
                Fusion::Rerender(r) => Some(RerenderState::new(r, flows)),
                _ => None,
            },
        }
    }

    /// A new input: nothing of the last one is kept.
    pub fn new_input(&mut self) {
        self.restart();
        if let Some(r) = self.rerender.as_mut() {
            r.new_input();
        }
    }

    /// The next frame starts a chain of its own (a segment's start, a warm-up frame); under
    /// Rerender-A-Video it follows the first frame.
    pub fn restart(&mut self) {
        self.previous = None;
        if let Some(r) = self.rerender.as_mut() {
            r.restart();
        }
    }

    /// Whether a result depends on the frames rendered before it: then a warm-up frame is
    /// rendered whole, to start the chain.
    pub fn chains(&self) -> bool {
        self.choice != Fusion::None
    }

    /// The first frame, for Rerender-A-Video (the frame a chain continues from is the
    /// stage's to add: [`super::keyframes::KeyframeState::rendered_before`]).
    pub fn warm_up_frames(&self, start: u64, frames: &mut Vec<u64>) {
        if let Some(r) = &self.rerender {
            r.warm_up_frames(start, frames);
        }
    }

    /// (shape, pixel) steps Rerender-A-Video fused in the frame rendered last.
    pub fn rerender_fused(&self) -> Option<(usize, usize)> {
        self.rerender.as_ref().map(RerenderState::fused)
    }

    /// The same picture again: the chain goes on from it (zero motion).
    pub fn repeat(&mut self, index: u64) {
        if let Some(p) = self.previous.as_mut() {
            if p.index + 1 == index {
                p.index = index;
            }
        }
    }

    /// Restyles frame `index` with `model`, fusing it with the frames before.
    pub fn render(&mut self, frame: &Frame, index: u64, model: &mut dyn Diffuse) -> Result<Frame> {
        if let Some(r) = self.rerender.as_mut() {
            return r.render(frame, index, model);
        }
        let Fusion::Flow(flow) = self.choice else {
            let latents = model.denoise(frame, index, &mut ())?;
            return Frame::from_tensor(&model.decode(&latents)?);
        };
        let (w, h) = (frame.width as usize, frame.height as usize);
        let gray = Gray::from_rgb(w, h, &frame.data);
        let previous = self.previous.take().filter(|p| p.index + 1 == index);
        let motion = previous
            .as_ref()
            .map(|p| FrameMotion::between(&p.gray, &gray, &DisParams::preset(FUSION_FLOW)));
        let factor = model.latent_scale()?;
        let latent_motion = motion.as_ref().map(|m| m.downscale(factor));
        let carry = previous
            .as_ref()
            .zip(latent_motion.as_ref())
            .map(|(p, m)| Carry::new(m, &p.lag));
        let mut hook = X0Fusion {
            flow,
            previous: previous
                .as_ref()
                .zip(carry.as_ref())
                .map(|(p, c)| (p.x0.as_slice(), c)),
            x0: Vec::new(),
            fused: 0,
        };
        let latents = model.denoise(frame, index, &mut hook)?;
        let x0 = hook.x0;
        let mut image = interleaved(&model.decode(&latents)?.squeeze(0)?)?;
        if let (Some(Some(before)), Some(m)) = (previous.as_ref().map(|p| &p.image), &motion) {
            m.fuse(&mut image, before, 3, flow.pixel);
        }
        let out = Frame::from_unit_rgb(frame.width, frame.height, &image);
        let lag = match carry {
            Some(c) => c.lag,
            None => vec![[0.0; 2]; (w / factor) * (h / factor)],
        };
        self.previous = Some(Previous {
            index,
            gray,
            x0,
            lag,
            image: (flow.pixel > 0.0).then_some(image),
        });
        Ok(out)
    }
}

/// Which cell of the previous frame every latent cell takes its x0 from. A nearest-cell warp
/// chained from frame to frame would round motion slower than half a cell per frame away every
/// time and pin x0 to the screen; interpolating would blur it a little more at every frame. So
/// every carried value keeps its lag, where it truly sits relative to its cell, and a cell
/// takes, among the 3×3 cells around where the motion says it was, the value whose true
/// position is closest: values move in whole cells, but as often as the motion adds up to.
struct Carry {
    /// Per cell: the previous frame's cell, and the share of it the previous frame saw.
    from: Vec<(usize, f32)>,
    /// Per cell: the lag of what it takes (0 where it keeps its own).
    lag: Vec<[f32; 2]>,
}

impl Carry {
    /// `motion` (latent grid) leads from the current frame back to the previous one, whose
    /// values lag by `lag`.
    fn new(motion: &FrameMotion, lag: &[[f32; 2]]) -> Self {
        let (w, h) = (motion.back.width, motion.back.height);
        let (from, lag) = (0..w * h)
            .map(|c| {
                let [dx, dy] = motion.back.data[c];
                let p = [(c % w) as f32 + dx, (c / w) as f32 + dy];
                let near = |v: f32, n: usize| (v.round().max(0.0) as usize).min(n - 1);
                let (qx, qy) = (near(p[0], w), near(p[1], h));
                let mut best = (f32::INFINITY, c, [0f32; 2]);
                for y in qy.saturating_sub(1)..(qy + 2).min(h) {
                    for x in qx.saturating_sub(1)..(qx + 2).min(w) {
                        let l = lag[y * w + x];
                        let off = [x as f32 + l[0] - p[0], y as f32 + l[1] - p[1]];
                        let d = off[0] * off[0] + off[1] * off[1];
                        if d < best.0 {
                            best = (d, y * w + x, off);
                        }
                    }
                }
                let seen = motion.visible[c];
                let kept = if seen >= 0.5 { best.2 } else { [0.0; 2] };
                ((best.1, seen), kept)
            })
            .unzip();
        Self { from, lag }
    }
}

/// The denoising of one frame under flow fusion: in its first fused steps, the predicted x0
/// becomes the previous frame's of the same step, carried along the motion, where the previous
/// frame saw the same surface.
struct X0Fusion<'a> {
    flow: FlowFusion,
    /// The previous frame's x0 per fused step, and where each cell takes it from.
    previous: Option<(&'a [Tensor], &'a Carry)>,
    /// This frame's (fused) x0 per fused step, for the next frame.
    x0: Vec<Tensor>,
    /// How many steps had their x0 replaced.
    fused: usize,
}

impl StepHook for X0Fusion<'_> {
    fn replaces_x0(&self, i: usize, total: usize) -> bool {
        i < self.flow.fused_steps(total)
    }

    fn predicted(&mut self, i: usize, p: &Prediction) -> Result<Option<Tensor>> {
        let x0 = &p.x0;
        let fused = match self.previous {
            Some((steps, carry)) if i < steps.len() => Some(replace(x0, &steps[i], carry)?),
            _ => None,
        };
        self.fused += fused.is_some() as usize;
        self.x0.push(fused.clone().unwrap_or_else(|| x0.clone()));
        Ok(fused)
    }
}

/// `current` [1, C, h, w] with every cell replaced by the cell of `previous` it carries, in
/// proportion to the share of it the previous frame saw.
fn replace(current: &Tensor, previous: &Tensor, carry: &Carry) -> Result<Tensor> {
    let (_, c, h, w) = current.dims4()?;
    let mut fused = interleaved(&current.squeeze(0)?)?;
    let before = interleaved(&previous.squeeze(0)?)?;
    for (cell, &(from, seen)) in fused.chunks_exact_mut(c).zip(&carry.from) {
        for (v, b) in cell.iter_mut().zip(&before[from * c..(from + 1) * c]) {
            *v += seen * (b - *v);
        }
    }
    Ok(Tensor::from_vec(fused, (h, w, c), current.device())?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::sampling::img2img::{Img2ImgParams, Schedule};
    use crate::sampling::noise::NoiseDraw;
    use crate::sampling::schedulers::SchedulerConfig;
    use crate::temporal::flow::Flow;

    /// A model whose prediction at every step is a latent image filled with the frame's
    /// index, over the steps the tool's defaults run (strength 0.6 of 10 steps: the schedule's
    /// first 4 are skipped). It records the x0 every step goes on from.
    struct Counting {
        total: usize,
        went_on_from: Vec<Vec<f32>>,
    }

    impl Diffuse for Counting {
        fn denoise(
            &mut self,
            frame: &Frame,
            index: u64,
            hook: &mut dyn StepHook,
        ) -> Result<Tensor> {
            let (h, w) = (frame.height as usize / 8, frame.width as usize / 8);
            let x0 = Tensor::full(index as f32, (1, 4, h, w), &Device::Cpu)?;
            let mut last = x0.clone();
            for i in 0..self.total {
                let p = Prediction {
                    x0: x0.clone(),
                    eps: x0.zeros_like()?,
                };
                last = match hook.replaces_x0(i, self.total) {
                    true => hook.predicted(i, &p)?.unwrap_or_else(|| x0.clone()),
                    false => x0.clone(),
                };
                self.went_on_from.push(last.flatten_all()?.to_vec1()?);
            }
            Ok(last)
        }

        fn decode(&self, latents: &Tensor) -> Result<Tensor> {
            let (_, _, h, w) = latents.dims4()?;
            Ok(Tensor::zeros(
                (1, 3, h * 8, w * 8),
                candle_core::DType::F32,
                &Device::Cpu,
            )?)
        }

        fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
            self.decode(latents)
        }

        fn encode(&mut self, _: &Frame, _: u64, _: &Tensor, _: NoiseDraw) -> Result<Tensor> {
            unreachable!("flow fusion encodes nothing of its own")
        }

        fn params(&self) -> Result<Img2ImgParams> {
            unreachable!("flow fusion counts the steps that run")
        }

        fn device(&self) -> Result<Device> {
            Ok(Device::Cpu)
        }

        fn latent_scale(&self) -> Result<usize> {
            Ok(8)
        }
    }

    #[test]
    fn motion_slower_than_a_cell_per_frame_still_moves_the_carried_values() {
        // 0.375 cell to the right per frame, everything seen: a cell takes what was at
        // x − 0.375 in the frame before. Rounding alone would copy every cell in place forever.
        let (w, h) = (12, 3);
        let motion = FrameMotion {
            back: Flow {
                width: w,
                height: h,
                data: vec![[-0.375, 0.0]; w * h],
            },
            visible: vec![1.0; w * h],
        };
        let mut lag = vec![[0f32; 2]; w * h];
        let mut moved = 0usize;
        for frame in 1..=8 {
            let carry = Carry::new(&motion, &lag);
            let from = carry.from[w + 6].0 % w;
            moved += 6 - from;
            lag = carry.lag;
            // What a cell takes never lags more than about half a cell behind the motion.
            assert!(
                lag[w + 6][0].abs() <= 0.51,
                "frame {frame}: lag {:?}",
                lag[w + 6]
            );
        }
        // 8 frames × 0.375 = 3 cells.
        assert_eq!(moved, 3);
    }

    #[test]
    fn x0_fusion_fires_at_the_tools_settings_and_only_in_the_early_steps() {
        let params = Img2ImgParams {
            strength: 0.6,
            steps: 10,
            ..Default::default()
        };
        let schedule = Schedule::new(&params, &SchedulerConfig::default()).unwrap();
        assert_eq!((schedule.first, schedule.total), (4, 6));
        let mut model = Counting {
            total: schedule.total,
            went_on_from: Vec::new(),
        };
        // A still, textured picture: zero motion, every cell seen by the frame before.
        let (w, h) = (64u32, 48u32);
        let data = (0..w * h * 3)
            .map(|i| ((i / 3 % w) * 7 + (i / 3 / w) * 13 % 255) as u8)
            .collect();
        let frame = Frame::from_rgb(w, h, data);
        let mut state = FusionState::new(Fusion::Flow(FlowFusion::default()));
        for index in 0..3 {
            state.render(&frame, index, &mut model).unwrap();
        }
        let fused = FlowFusion::default().fused_steps(6);
        assert_eq!(fused, 3);
        for (step, x0) in model.went_on_from.iter().enumerate() {
            let (index, i) = (step / 6, step % 6);
            // Frame 0 has nothing to fuse with; later frames take frame 0's x0 (chained through
            // frame 1's fused one) in the fused steps and keep their own after them.
            let want = if index > 0 && i < fused {
                0.0
            } else {
                index as f32
            };
            let off = x0.iter().map(|v| (v - want).abs()).fold(0f32, f32::max);
            assert!(off < 1e-5, "frame {index} step {i}: off by {off}");
        }
        // No share, no fusion; a share of all steps still leaves the last to the frame.
        let none = FlowFusion {
            steps: 0.0,
            pixel: 0.0,
        };
        assert_eq!(
            (
                none.fused_steps(6),
                FlowFusion { steps: 1.0, ..none }.fused_steps(6)
            ),
            (0, 5)
        );
    }
}
