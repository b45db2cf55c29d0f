//! Warnings printed once per process: a sweep prepares every run, and a warning about shared
//! input (a missing corpus, say) would otherwise repeat once per run.

use std::collections::BTreeSet;
use std::sync::Mutex;

static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Logs `message` as a warning the first time this process sees it; later calls with the same
/// text are silent.
pub fn warn_once(message: &str) {
    let first = SEEN.lock().unwrap_or_else(|e| e.into_inner()).insert(message.to_owned());
    if first {
        tracing::warn!("{message}");
    }
}
