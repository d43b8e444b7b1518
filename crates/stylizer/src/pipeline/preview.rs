//! `--preview`: chosen frames rendered as a full run would render them, written nowhere.

use super::render::{start_stages, Chain, Source};
use super::Job;
use crate::stage::FrameStage;
use crate::video::{render_size, VideoInfo};
use crate::{Frame, Progress, Result, Stage};

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
    let mut chain = Chain::new(src, stages);
    for (n, &index) in indices.iter().enumerate() {
        progress.frame(n as u64, indices.len() as u64);
        chain.start(index, progress)?;
        chain.peek_until(index)?;
        let original = src.frame(index)?;
        let started = std::time::Instant::now();
        let rendered = chain.process(original.clone(), index)?;
        out.push(PreviewFrame {
            index,
            original,
            rendered,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    progress.frame(indices.len() as u64, indices.len() as u64);
    Ok(out)
}
