//! Many inputs in one command: each job run and reported in turn, a failed input reported
//! while the rest go on, and the summary line of a finished job.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use stylizer::pipeline::{Job, Outcome};
use stylizer::video::probe;
use stylizer::{pipeline, Error, FrameStage, Progress, Stage};

use crate::progress::CliProgress;

/// Probes the input, runs the job, reports the outcome.
pub(crate) fn render(
    job: Job,
    stages: &mut [Box<dyn FrameStage>],
    progress: &mut CliProgress,
) -> anyhow::Result<ExitCode> {
    progress.stage(Stage::Probe);
    let info = probe(&job.input)?;
    let outcome = pipeline::run(&job, &info, stages, progress);
    progress.finish();
    report(outcome?)
}

/// `-o` with several outputs must be a folder.
pub(crate) fn check_output_folder(output: Option<&Path>, outputs: usize) -> anyhow::Result<()> {
    match output {
        Some(o) if outputs > 1 && !o.is_dir() => bail!(
            "{}: with several inputs, -o must be an existing folder",
            o.display()
        ),
        _ => Ok(()),
    }
}

/// Two inputs may not write the same file (a.mp4 and a.mov both make a_stylized.mp4).
pub(crate) fn check_distinct_outputs<'a>(
    pairs: impl Iterator<Item = (&'a PathBuf, &'a PathBuf)>,
) -> anyhow::Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (input, output) in pairs {
        if let Some(other) = seen.insert(output, input) {
            bail!(
                "{} and {} would both be written to {}; use -o with separate folders",
                other.display(),
                input.display(),
                output.display()
            );
        }
    }
    Ok(())
}

/// The inputs of one command, run in turn with the models loaded once. A failure that
/// concerns one input (unreadable, damaged, an output that cannot be written) is reported
/// and the rest go on; any other (a model, Ctrl-C) stops the batch. A single input is not
/// a batch: its error is the command's.
pub(crate) struct Batch {
    pub(crate) total: usize,
    pub(crate) done: usize,
    pub(crate) failed: Vec<PathBuf>,
}

impl Batch {
    pub(crate) fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            failed: Vec::new(),
        }
    }

    pub(crate) fn run(
        &mut self,
        input: &Path,
        progress: &mut CliProgress,
        one: impl FnOnce(&mut CliProgress) -> anyhow::Result<ExitCode>,
    ) -> anyhow::Result<()> {
        self.done += 1;
        if self.total == 1 {
            return one(progress).map(drop);
        }
        progress.heading(&format!(
            "[{}/{}] {}",
            self.done,
            self.total,
            input.display()
        ));
        let Err(e) = one(progress) else {
            return Ok(());
        };
        progress.finish();
        let about_this_input = e.downcast_ref::<Error>().is_some_and(|e| {
            matches!(
                e,
                Error::Input { .. }
                    | Error::Output { .. }
                    | Error::Ffmpeg { .. }
                    | Error::Io { .. }
            )
        });
        if !about_this_input {
            return Err(e);
        }
        eprintln!("error: {e:#}");
        self.failed.push(input.to_path_buf());
        Ok(())
    }

    /// Renders one video of the batch. In a batch, an input whose output is finished (there,
    /// with no unfinished run) is skipped, so that rerunning a batch that stopped half-way
    /// resumes it.
    pub(crate) fn render(
        &mut self,
        job: Job,
        stages: &mut [Box<dyn FrameStage>],
        progress: &mut CliProgress,
    ) -> anyhow::Result<()> {
        let input = job.input.clone();
        if self.total > 1 && !job.overwrite && job.output.exists() && !job.work_dir().exists() {
            self.done += 1;
            progress.heading(&format!(
                "[{}/{}] {}: {} is there, skipped (--overwrite renders it again)",
                self.done,
                self.total,
                input.display(),
                job.output.display()
            ));
            return Ok(());
        }
        self.run(&input, progress, |p| render(job, stages, p))
    }

    /// Success only when every input succeeded; the failed ones are listed.
    pub(crate) fn exit(self) -> ExitCode {
        if self.failed.is_empty() {
            return ExitCode::SUCCESS;
        }
        let names: Vec<String> = self
            .failed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "{} of {} inputs failed: {}",
            self.failed.len(),
            self.total,
            names.join(", ")
        );
        ExitCode::from(1)
    }
}

/// ", N repeats reused" for the summary line, when there were any.
pub(crate) fn repeated(repeats: u64) -> String {
    match repeats {
        0 => String::new(),
        n => format!(", {n} repeated frames reused"),
    }
}

pub(crate) fn report(outcome: Outcome) -> anyhow::Result<ExitCode> {
    match outcome {
        Outcome::Finished {
            output,
            frames,
            repeats,
        } => {
            eprintln!(
                "wrote {} ({frames} frames{})",
                output.display(),
                repeated(repeats)
            );
        }
        Outcome::ShareDone {
            k,
            n,
            segments,
            work_dir,
            repeats,
        } => {
            eprintln!(
                "share {k}/{n}: rendered {segments} segment(s){} into {}; run `video-stylizer join {}` (or the same command without --segment) once every share is done",
                repeated(repeats),
                work_dir.display(),
                work_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
