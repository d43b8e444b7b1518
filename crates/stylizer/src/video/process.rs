//! Spawning ffmpeg/ffprobe: stdout streamed, stderr drained on its own thread (so a chatty
//! child can never block on a full pipe) and kept for the error message; the child is killed
//! and reaped when dropped, on every exit path. After ripgrep's `CommandReader`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{Error, Result};

/// Lines of stderr kept for an error message.
const STDERR_TAIL_LINES: usize = 12;

/// Which external program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ffmpeg,
    Ffprobe,
}

impl Tool {
    fn env(self) -> &'static str {
        match self {
            Tool::Ffmpeg => "FFMPEG",
            Tool::Ffprobe => "FFPROBE",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Ffmpeg => "ffmpeg",
            Tool::Ffprobe => "ffprobe",
        }
    }

    /// `$FFMPEG` / `$FFPROBE` when set, else the name looked up on PATH.
    pub fn program(self) -> OsString {
        std::env::var_os(self.env())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.name().into())
    }

    /// A command for this tool with the arguments every call shares.
    pub fn command(self) -> Command {
        let mut cmd = Command::new(self.program());
        cmd.arg("-hide_banner").args(["-loglevel", "error"]);
        if self == Tool::Ffmpeg {
            cmd.arg("-nostdin");
        }
        cmd
    }

    fn missing(self) -> Error {
        let prog = PathBuf::from(self.program());
        let tried = if std::env::var_os(self.env()).is_some_and(|v| !v.is_empty()) {
            format!("{}={}", self.env(), prog.display())
        } else {
            format!("`{}` on PATH", prog.display())
        };
        Error::ToolMissing {
            program: self.name(),
            env: self.env(),
            tried,
        }
    }
}

/// Renders a command for error messages (program and arguments, space-separated).
fn describe(cmd: &Command) -> String {
    let mut s = PathBuf::from(cmd.get_program()).display().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A running child process with its stderr being collected.
pub struct Process {
    child: Child,
    desc: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Process {
    /// Spawns `cmd` as `tool` with piped stdout and stderr; stdin piped when `stdin` is true.
    pub fn spawn(tool: Tool, mut cmd: Command, stdin: bool) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Own process group: a terminal Ctrl-C reaches only us, and we stop children in order.
        cmd.process_group(0);
        let desc = describe(&cmd);
        tracing::debug!("spawn: {desc}");
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => tool.missing(),
            _ => Error::io(format!("cannot start {}", tool.name()), e),
        })?;
        if let Some(stdin) = &child.stdin {
            widen_pipe(stdin);
        }
        if let Some(stdout) = &child.stdout {
            widen_pipe(stdout);
        }
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(|l| l.ok()) {
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if line.is_empty() {
                    continue;
                }
                tracing::debug!(target: "ffmpeg", "{line}");
                let mut t = tail.lock().unwrap();
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Self {
            child,
            desc,
            stderr_tail,
            stderr_thread: Some(stderr_thread),
        })
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The last lines the child wrote to stderr, joined into one line.
    pub fn stderr_tail(&self) -> String {
        let t = self.stderr_tail.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Waits for the child and turns a non-zero exit into [`Error::Ffmpeg`].
    pub fn wait(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {}", self.desc), e))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        self.check(status)
    }

    fn check(&self, status: ExitStatus) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        let mut stderr = self.stderr_tail();
        if stderr.is_empty() {
            stderr = "no message".into();
        }
        Err(Error::Ffmpeg {
            cmd: self.desc.clone(),
            status: status.to_string(),
            stderr,
        })
    }

    /// Whether the process has exited, without blocking (it is then reaped: `wait` returns
    /// its status at once).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The error this process ended with, if it has already failed (used when a pipe breaks).
    pub fn failure(&mut self) -> Option<Error> {
        match self.child.wait() {
            Ok(status) => {
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                self.check(status).err()
            }
            Err(_) => None,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Reaped already (wait/failure) => try_wait returns the status; else stop it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Frames cross the pipes by the megabyte: a pipe of 1 MiB (Linux's limit for unprivileged
/// processes) instead of 64 KiB wakes reader and writer a sixteenth as often: the kernel's
/// share of a 1080p re-encode fell from 8.0 % to 5.3 % of the CPU time (perf). Best effort:
/// a system with a lower limit keeps the default.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: fcntl on a pipe descriptor we own; failure only leaves the size as it was.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pipe;
}

/// Runs a command to completion and returns its stdout.
pub fn output(tool: Tool, cmd: Command) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut p = Process::spawn(tool, cmd, false)?;
    let mut out = Vec::new();
    let mut stdout = p.take_stdout().expect("stdout is piped");
    stdout
        .read_to_end(&mut out)
        .map_err(|e| Error::io(format!("reading from {}", tool.name()), e))?;
    p.wait()?;
    Ok(out)
}
