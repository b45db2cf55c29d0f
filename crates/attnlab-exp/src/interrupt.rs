//! Graceful interruption: a signal handler (installed by the binary) calls [`request`]; the
//! trainer checks [`requested`] between steps, writes a checkpoint and stops, so the next
//! `train`/`sweep` resumes where it left off.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the running training loop to checkpoint and stop after the current step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
