//! Checkpoints with checksums: `checkpoint/{model.bpk, optim.bpk, state.json, sha256.json}`.
//!
//! A checkpoint is written into `checkpoint.tmp/` and renamed into place; the one it replaces
//! is kept as `checkpoint.prev/`. On resume the SHA-256 of every file is checked: a corrupt
//! checkpoint falls back to the previous one, and a corrupt previous one to a fresh start, each
//! with a warning.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::store::write_atomic;

/// Files a checkpoint holds besides its checksum list.
pub const FILES: &[&str] = &["model.bpk", "optim.bpk", "state.json"];
const SUMS: &str = "sha256.json";

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the checksum list of a fully written checkpoint folder.
pub fn seal(dir: &Path) -> Result<()> {
    let sums: BTreeMap<&str, String> = FILES.iter().map(|f| Ok((*f, sha256_file(&dir.join(f))?))).collect::<Result<_>>()?;
    write_atomic(&dir.join(SUMS), serde_json::to_string_pretty(&sums)?.as_bytes())
}

/// Checks every file of a checkpoint folder against its checksum list.
pub fn verify(dir: &Path) -> Result<()> {
    let sums: BTreeMap<String, String> = serde_json::from_str(
        &fs::read_to_string(dir.join(SUMS)).with_context(|| format!("{}: no checksum list", dir.display()))?,
    )
    .with_context(|| format!("{}: unreadable checksum list", dir.display()))?;
    for f in FILES {
        let want = sums.get(*f).with_context(|| format!("{}: {f} missing from the checksum list", dir.display()))?;
        let got = sha256_file(&dir.join(f))?;
        if &got != want {
            bail!("{}: {f} has sha256 {got}, expected {want}", dir.display());
        }
    }
    Ok(())
}

/// Moves the fully written `tmp` to `dst`, keeping the old `dst` as `<dst>.prev`.
pub fn install(tmp: &Path, dst: &Path) -> Result<()> {
    let prev = previous(dst);
    if dst.exists() {
        if prev.exists() {
            fs::remove_dir_all(&prev).with_context(|| format!("cannot remove {}", prev.display()))?;
        }
        fs::rename(dst, &prev).with_context(|| format!("cannot move {} to {}", dst.display(), prev.display()))?;
    }
    fs::rename(tmp, dst).with_context(|| format!("cannot move {} to {}", tmp.display(), dst.display()))
}

/// `<dst>.prev`.
pub fn previous(dst: &Path) -> PathBuf {
    dst.with_extension("prev")
}

/// The newest checkpoint folder that verifies, warning about each one that does not:
/// `checkpoint/`, then `checkpoint.prev/`; `None` if neither exists or verifies.
pub fn newest_valid(dst: &Path) -> Option<PathBuf> {
    for dir in [dst.to_path_buf(), previous(dst)] {
        if !dir.join("state.json").exists() {
            continue;
        }
        match verify(&dir) {
            Ok(()) => return Some(dir),
            Err(e) => tracing::warn!("corrupt checkpoint, not used: {e:#}"),
        }
    }
    None
}
