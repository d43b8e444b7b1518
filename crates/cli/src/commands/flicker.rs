//! `flicker`: the warp-error flicker metric of a stylized video against its source.

use std::path::Path;
use std::process::ExitCode;

use stylizer::temporal::flicker::measure_files;
use stylizer::temporal::flow::{DisParams, DisPreset};

use crate::progress::CliProgress;

pub(crate) fn flicker(
    original: &Path,
    stylized: &Path,
    json: bool,
    preset: DisPreset,
    max_frames: Option<u64>,
    progress: &mut CliProgress,
) -> anyhow::Result<ExitCode> {
    let r = measure_files(
        original,
        stylized,
        DisParams::preset(preset),
        max_frames,
        progress,
    )?;
    progress.finish();
    if json {
        out!("{}", serde_json::to_string(&r)?);
    } else {
        out!("frames compared:     {}", r.frames);
        out!("warp error:          {:.6}", r.warp_error);
        out!("original's own:      {:.6}", r.warp_error_original);
        match r.ratio {
            Some(ratio) => {
                out!("ratio:               {ratio:.3} (1 = as steady as the original)")
            }
            None => out!("ratio:               n/a (the original does not change)"),
        }
        out!("occluded pixels:     {:.1} %", 100.0 * r.occluded_fraction);
        match r.detail {
            Some(detail) => out!(
                "detail:              {detail:.3} (Laplacian energy over the original's; compare modes at one seed)"
            ),
            None => out!("detail:              n/a (the original has no detail)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
