//! `models`: what the hub cache holds, and fetching models ahead of a run.

use std::process::ExitCode;

use anyhow::Context;
use stylizer::Progress;

use crate::args::ModelsCommand;
use crate::progress::CliProgress;

pub(crate) fn models(
    command: ModelsCommand,
    progress: &mut CliProgress,
) -> anyhow::Result<ExitCode> {
    use stylizer::upscale::fetch;
    let dir = fetch::models_dir();
    match command {
        ModelsCommand::List => {
            out!(
                "model cache: {} (set {} to move it)",
                dir.display(),
                fetch::MODELS_ENV
            );
            for m in fetch::KNOWN_MODELS {
                let have = if dir.join(m.file).is_file() {
                    "cached"
                } else {
                    "not downloaded"
                };
                out!("  {:<28} {:>5} MB  {have}", m.name, m.bytes >> 20);
            }
        }
        ModelsCommand::Fetch { name } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the model cache {}", dir.display()))?;
            let mut last = 0u64;
            let path = fetch::fetch_model(&name, &dir, &mut |done, total| {
                // Progress in frames of 1 MiB.
                let mib = done >> 20;
                if mib != last {
                    last = mib;
                    progress.frame(mib, total.map_or(mib, |t| t >> 20));
                }
            })?;
            progress.finish();
            eprintln!("{name}: {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
