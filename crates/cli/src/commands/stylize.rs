//! `stylize`: restyle videos with a text prompt.

use std::process::ExitCode;

use anyhow::bail;
use stylizer::pipeline::{self, Job};
use stylizer::sampling::animate::ChunkGrid;

use crate::args::StylizeArgs;
use crate::batch::{check_distinct_outputs, check_output_folder, Batch};
use crate::preview;
use crate::progress::CliProgress;
use crate::settings::{build_stages, preview_settings};

pub(crate) fn stylize(a: StylizeArgs, progress: &mut CliProgress) -> anyhow::Result<ExitCode> {
    // Everything that can be checked without the input is checked first.
    if !a.guidance.is_finite() || a.guidance < 0.0 {
        bail!(
            "invalid value {} for --guidance: expected a number >= 0",
            a.guidance
        );
    }
    stylizer::device::select(&a.out.device)?;
    let inputs = pipeline::expand_inputs(&a.input, stylizer::video::is_video, "videos")?;
    check_output_folder(a.out.output.as_deref(), inputs.len())?;
    let mut jobs = inputs
        .iter()
        .map(|i| a.out.job(i, "stylized", a.max_res))
        .collect::<anyhow::Result<Vec<Job>>>()?;
    check_distinct_outputs(jobs.iter().map(|j| (&j.input, &j.output)))?;
    // Same seed ⇒ same video: a rerun without --seed resumes with the unfinished run's seed,
    // and shares of one job must agree on it. A batch runs with one seed.
    let unfinished = jobs
        .iter()
        .find_map(|j| pipeline::resume_seed(j).map(|seed| (seed, j.work_dir())));
    // Said once the run has passed its checks: a run that cannot start has no seed to repeat.
    let (seed, seed_line) = match (a.seed, unfinished) {
        (Some(seed), _) => (seed, None),
        (None, Some((seed, work))) => (
            seed,
            Some(format!(
                "seed {seed} (from the unfinished run in {})",
                work.display()
            )),
        ),
        (None, None) if a.out.segment.is_some() && a.frame_stage.is_none() => {
            bail!("--segment needs --seed, so that every share draws the same noise")
        }
        (None, None) => {
            let seed = random_seed();
            let line = format!("seed {seed} (pass --seed {seed} to render the same video again)");
            (seed, a.frame_stage.is_none().then_some(line))
        }
    };
    if a.frame_stage.is_none() {
        for job in &mut jobs {
            job.seed = Some(seed);
        }
    }
    let mut stages = build_stages(&a, seed, progress)?;
    if let Some(line) = seed_line {
        // Not when no input can be read either (a batch goes on past a bad input).
        if jobs.iter().any(|j| j.input.is_file()) {
            eprintln!("{line}");
        }
    }
    if let Some(n) = a.preview {
        let settings = preview_settings(&a, seed);
        let frames_per_render = match a.animatediff {
            true => ChunkGrid::new(&a.context()).stride(),
            false => 1,
        };
        for job in &jobs {
            preview::run(job, &mut stages, n, &settings, frames_per_render, progress)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut batch = Batch::new(jobs.len());
    for job in jobs {
        batch.render(job, &mut stages, progress)?;
    }
    Ok(batch.exit())
}

/// A seed from the clock and the process id (only needs to differ between runs).
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() % 1_000_000_000
}
