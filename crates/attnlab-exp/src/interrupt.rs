//! Graceful interruption: a signal handler (installed by the binary) calls [`request`]; the
//! trainer checks [`requested`] between steps, writes a checkpoint and stops, so the next
//! `train`/`sweep` resumes where it left off.
//!
//! Only while a run is being trained ([`graceful`], held by an [`Active`] guard) is a signal
//! deferred; during start-up (reading files, preparing data) there is nothing to save, and the
//! handler ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Asks the running training loop to checkpoint and stop after the current step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Whether a run is being trained now (a signal then checkpoints instead of exiting).
pub fn graceful() -> bool {
    ACTIVE.load(Ordering::SeqCst) > 0
}

/// Marks a training run in progress until dropped.
pub struct Active(());

impl Active {
    pub fn new() -> Self {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Active(())
    }
}

impl Default for Active {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}
