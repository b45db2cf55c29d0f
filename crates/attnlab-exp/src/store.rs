//! The run store: `<out>/<experiment>/<run-id>/{config.toml, tokenizer.json, metrics.jsonl,
//! summary.json, checkpoint/}`. Files are written whole or not at all (temp file + rename).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut f = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
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

/// Replaces the folder `dst` by the fully written folder `tmp` (old one removed only after).
pub fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    let old = dst.with_extension("old");
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    if dst.exists() {
        fs::rename(dst, &old)?;
    }
    fs::rename(tmp, dst).with_context(|| format!("cannot move {} to {}", tmp.display(), dst.display()))?;
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    Ok(())
}
