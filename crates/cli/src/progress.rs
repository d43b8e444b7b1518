//! The terminal side of `stylizer::Progress`: an indicatif bar on a terminal, a plain line
//! every few seconds otherwise (logs, CI, Slurm), nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stylizer::{Progress, Stage};

pub enum Mode {
    Bar,
    Lines,
    Quiet,
}

impl Mode {
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

pub struct CliProgress {
    mode: Mode,
    /// Shared with [`StageProgress`], which reports from inside a frame stage.
    bar: Arc<Mutex<Option<ProgressBar>>>,
    started: Option<(Instant, u64)>,
    last_line: Instant,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl CliProgress {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            bar: Arc::default(),
            started: None,
            last_line: Instant::now() - LINE_EVERY,
        }
    }

    fn bar(&mut self, total: u64) -> ProgressBar {
        let mut slot = self.bar.lock().expect("progress lock");
        slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:>9} [{bar:30}] {pos}/{len} frames  {per_sec:.1}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        })
        .clone()
    }

    /// Prints a line without tearing the bar.
    fn println(&self, line: &str) {
        println_above(&self.bar, line);
    }

    /// A line that says what comes next (the file of a batch); not with `--quiet`.
    pub fn heading(&mut self, line: &str) {
        if !matches!(self.mode, Mode::Quiet) {
            self.println(line);
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }

    /// A reporter for a frame stage: its diffusion steps show on the frame bar (a CPU frame
    /// takes minutes, so frames alone would look stuck) and its warnings print above it.
    pub fn for_stage(&self) -> StageProgress {
        StageProgress {
            bar: self.bar.clone(),
        }
    }
}

fn println_above(bar: &Mutex<Option<ProgressBar>>, line: &str) {
    match &*bar.lock().expect("progress lock") {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// See [`CliProgress::for_stage`].
pub struct StageProgress {
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl Progress for StageProgress {
    fn step(&mut self, i: usize, n: usize) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.set_message(format!("step {i}/{n}"));
        }
    }

    fn warn(&mut self, msg: &str) {
        println_above(&self.bar, &format!("warning: {msg}"));
    }
}

impl Progress for CliProgress {
    fn stage(&mut self, stage: Stage) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                let bar = self.bar.lock().expect("progress lock").clone();
                match bar {
                    Some(bar) => bar.set_message(stage.to_string()),
                    None => self.println(&format!("{stage}…")),
                }
            }
            Mode::Lines => self.println(&format!("{stage}…")),
        }
    }

    fn frame(&mut self, done: u64, total: u64) {
        let (t0, first) = *self.started.get_or_insert((Instant::now(), done));
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                let bar = self.bar(total);
                bar.set_length(total);
                if bar.position() == 0 && done > 0 {
                    // Resumed frames are not part of the rate.
                    bar.reset_eta();
                }
                bar.set_position(done);
                bar.set_message("rendering");
            }
            Mode::Lines => {
                if self.last_line.elapsed() < LINE_EVERY && done < total {
                    return;
                }
                self.last_line = Instant::now();
                let secs = t0.elapsed().as_secs_f64();
                let rate = if secs > 0.0 {
                    (done - first) as f64 / secs
                } else {
                    0.0
                };
                let eta = if rate > 0.0 {
                    format!("{:.0}s", (total.saturating_sub(done)) as f64 / rate)
                } else {
                    "?".into()
                };
                self.println(&format!(
                    "frame {done}/{total} ({:.0}%), {rate:.2} frames/s, ETA {eta}",
                    100.0 * done as f64 / total.max(1) as f64
                ));
            }
        }
    }

    fn warn(&mut self, msg: &str) {
        self.println(&format!("warning: {msg}"));
    }
}
