//! `upscale`: Real-ESRGAN on videos and images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use stylizer::pipeline::Job;
use stylizer::upscale::images;
use stylizer::video::MaxRes;
use stylizer::{pipeline, FrameStage, Progress, Stage};

use crate::args::UpscaleArgs;
use crate::batch::{check_distinct_outputs, check_output_folder, Batch};
use crate::progress::CliProgress;

pub(crate) fn upscale(a: UpscaleArgs, progress: &mut CliProgress) -> anyhow::Result<ExitCode> {
    let mut stage = a.upscale.stage(&a.out.device)?;
    let inputs = pipeline::expand_inputs(
        &a.input,
        |p| images::is_image(p) || stylizer::video::is_video(p),
        "videos or images (png, jpg, webp)",
    )?;
    let (pictures, videos): (Vec<PathBuf>, Vec<PathBuf>) =
        inputs.into_iter().partition(|p| images::is_image(p));
    if pictures.is_empty() && (a.alpha_upscale.is_some() || a.drop_opaque_alpha) {
        bail!("--alpha-upscale and --drop-opaque-alpha are for images; video frames have no alpha here");
    }
    let total = pictures.len() + videos.len();
    check_output_folder(a.out.output.as_deref(), total)?;
    // Images keep their format: `<stem>_upscaled.<ext>`.
    let targets: Vec<PathBuf> = pictures
        .iter()
        .map(|i| {
            let ext = i.extension().unwrap_or_default().to_string_lossy();
            pipeline::output_path(i, a.out.output.as_deref(), "upscaled", &ext)
        })
        .collect();
    // Videos are upscaled from their own size: `--max-res` belongs to stylizing.
    let jobs = videos
        .iter()
        .map(|v| {
            let mut job = a.out.job(v, "upscaled", MaxRes::Original)?;
            job.size_multiple = 2;
            Ok(job)
        })
        .collect::<anyhow::Result<Vec<Job>>>()?;
    check_distinct_outputs(
        pictures
            .iter()
            .zip(&targets)
            .chain(jobs.iter().map(|j| (&j.input, &j.output))),
    )?;
    // Checked for all images before the first one is processed.
    for t in &targets {
        if t.exists() && !a.out.overwrite {
            bail!(
                "{}: already exists (use --overwrite to replace it)",
                t.display()
            );
        }
    }
    let mut batch = Batch::new(total);
    if !pictures.is_empty() {
        progress.stage(Stage::LoadModels);
        stage.prepare()?;
        progress.stage(Stage::Render);
        let alpha = a.alpha_upscale.unwrap_or_default();
        for (n, (input, target)) in pictures.iter().zip(&targets).enumerate() {
            if stylizer::cancel::requested() {
                bail!("interrupted after {n} of {} images", pictures.len());
            }
            batch.run(input, progress, |_| {
                let img = images::read_image(input)?;
                let mut out = stage.upscale_image(&img, alpha)?;
                if a.drop_opaque_alpha {
                    out = images::drop_opaque_alpha(&out).unwrap_or(out);
                }
                images::write_image(&out, target)?;
                Ok(ExitCode::SUCCESS)
            })?;
            progress.frame(n as u64 + 1, pictures.len() as u64);
        }
        progress.finish();
        eprintln!("wrote {} image(s)", pictures.len() - batch.failed.len());
    }
    let mut stages: Vec<Box<dyn FrameStage>> = vec![Box::new(stage)];
    for job in jobs {
        batch.render(job, &mut stages, progress)?;
    }
    Ok(batch.exit())
}
