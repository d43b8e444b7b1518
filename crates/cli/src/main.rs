//! `video-stylizer`: the command line. Parses flags, draws progress, prints errors as one
//! line; everything else is in the `stylizer` library.

/// `println!` for a command's results: when the reader goes away (`probe … | head`) the
/// command ends quietly, as Unix tools do, instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

mod args;
mod batch;
mod commands;
mod preview;
mod progress;
mod settings;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stylizer::{pipeline, Error};

use crate::args::{Cli, Command};
use crate::batch::report;
use crate::commands::flicker::flicker;
use crate::commands::models::models;
use crate::commands::probe::print_probe;
use crate::commands::stylize::stylize;
use crate::commands::upscale::upscale;
use crate::progress::{CliProgress, Mode};

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut progress = CliProgress::new(Mode::detect(cli.quiet));
    match cli.command {
        Command::Stylize(a) => stylize(*a, &mut progress),
        Command::Upscale(a) => upscale(*a, &mut progress),
        Command::Models { command } => models(command, &mut progress),
        Command::Probe { input, json } => print_probe(&input, json),
        Command::Flicker {
            original,
            stylized,
            json,
            flow,
            max_frames,
        } => flicker(&original, &stylized, json, flow, max_frames, &mut progress),
        Command::Join {
            work_dir,
            overwrite,
            keep_work,
        } => {
            let outcome = pipeline::join_work_dir(&work_dir, overwrite, keep_work, &mut progress)
                .with_context(|| format!("joining {}", work_dir.display()))?;
            report(outcome)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "warn,stylizer=debug,video_stylizer=debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    // First Ctrl-C / SIGTERM: stop after the current frame, clean up, keep finished
    // segments. A second one: leave at once.
    let mut hits = 0;
    if let Err(e) = ctrlc::set_handler(move || {
        hits += 1;
        if hits > 1 {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current frame (press Ctrl-C again to quit at once)…");
        stylizer::cancel::request();
    }) {
        eprintln!("warning: cannot catch Ctrl-C: {e}");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e
                .downcast_ref::<Error>()
                .is_some_and(|e| matches!(e, Error::Interrupted { .. }));
            ExitCode::from(if interrupted { 130 } else { 1 })
        }
    }
}
