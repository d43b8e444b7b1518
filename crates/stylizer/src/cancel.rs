//! Cooperative cancellation (Ctrl-C, SIGTERM). The front end calls [`request`]; the pipeline
//! checks between frames and long stages between steps, then unwind normally so that child
//! processes are stopped and partial files removed.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Asks the running job to stop at the next frame or step.
pub fn request() {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    CANCELLED.load(Ordering::Relaxed)
}
