//! Per-run lock files, so that two processes (shards, or a second sweep by mistake) pointed at
//! one run store never train the same run at once.
//!
//! `<run>/lock` is created with `create_new` (atomic on local file systems) and holds
//! `<pid> <host>`. A lock whose process no longer exists on this host is stale (its process was
//! killed) and is taken over. Dropping the [`RunLock`] removes the file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Who holds a lock: `(pid, host)`.
fn holder(path: &Path) -> Option<(u32, String)> {
    let text = fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next().unwrap_or("").to_string()))
}

/// This machine's name (empty if unknown).
pub fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| fs::read_to_string("/etc/hostname")).unwrap_or_default().trim().to_string()
}

/// True when process `pid` runs on this machine (Linux: `/proc/<pid>` exists).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl RunLock {
    /// Takes the lock of the run folder `root`, or returns `Ok(None)` with the holder's
    /// description when a live process holds it.
    pub fn acquire(root: &Path) -> Result<Result<RunLock, String>> {
        let path = root.join("lock");
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{} {}", std::process::id(), host()).with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(Ok(RunLock { path }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match holder(&path) {
                    Some((pid, h)) if h != host() || alive(pid) => return Ok(Err(format!("locked by process {pid} on {h} ({})", path.display()))),
                    stale => {
                        tracing::warn!("removing the stale lock {} ({stale:?}: that process is gone)", path.display());
                        fs::remove_file(&path).with_context(|| format!("cannot remove the stale lock {}", path.display()))?;
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("cannot create the lock {}", path.display())),
            }
        }
        anyhow::bail!("cannot take the lock {}: another process keeps recreating it", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
