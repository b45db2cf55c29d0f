//! The run store: `<out>/<experiment>/<run-id>/{config.toml, tokenizer.json, metrics.jsonl,
//! summary.json, checkpoint/}`. Files are written whole or not at all (temp file + rename).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A name for a temp file or folder next to `path` that no other process uses:
/// `.<name>.<pid>-<n>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // The pid and a counter are unique on one host; the random part keeps two hosts (or two
    // containers) with the same pid apart.
    let nonce = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), n);
    path.with_file_name(format!(".{name}.{}-{n}-{:08x}.tmp", std::process::id(), nonce as u32))
}

/// Writes `bytes` to `path` atomically: a per-process temp file in the same folder, fsync,
/// rename. On failure (a full disk) the temp file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = temp_path(path);
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Paths of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(out: &Path, experiment: &str, run_id: &str) -> Self {
        Self { root: out.join(experiment).join(run_id) }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
}
