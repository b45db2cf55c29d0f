//! Extending a finished run to more steps: `attnlab train X.toml --set train.steps=N --extend
//! RUN`. The extension is a **new run**, initialised from RUN's final checkpoint (weights,
//! optimizer moments, RNG, step, best values so far, metrics) and trained on to the new
//! `train.steps`; RUN itself is left as it is.
//!
//! - Only `train.steps` (and the bookkeeping fields) may differ from RUN's config, and it must
//!   grow; RUN must have finished (not diverged) on the same data (`data.sha256`).
//! - The new run's id hashes the extended config *and* RUN's id, so it never collides with a
//!   run trained for the new count from scratch; its summary names RUN (`extended_from`).
//! - **Comparability.** The learning-rate schedule is a function of `train.steps`: RUN's steps
//!   followed the old cosine (down to `min_lr` at the old count), and the extension follows the
//!   new one from the old count on, so the rate steps up again there (a warm restart). An
//!   extended run is therefore not the run trained for the new count from the start; compare
//!   extended runs with extended runs, and say so in a paper.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::SpecError;
use crate::spec::{ExperimentSpec, PreparedRun};

/// Where an extended run starts from.
#[derive(Debug, Clone)]
pub struct Extension {
    /// The extended run's id and folder.
    pub from_run: String,
    pub from_dir: PathBuf,
    /// Its step count (where the extension starts).
    pub from_step: usize,
}

/// `spec` as TOML with the fields an extension may change normalised.
fn comparable(spec: &ExperimentSpec) -> toml::Value {
    let mut s = spec.clone();
    let d = ExperimentSpec::defaults();
    s.train.steps = 0;
    s.train.checkpoint_every = d.train.checkpoint_every;
    s.train.log_every = d.train.log_every;
    s.eval.every = d.eval.every;
    toml::Value::try_from(s).expect("spec serialises")
}

/// The first dotted path at which two TOML values differ, with both values.
fn first_difference(a: &toml::Value, b: &toml::Value, path: &str) -> Option<(String, String, String)> {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (ta.get(k), tb.get(k)) {
                    (Some(x), Some(y)) => first_difference(x, y, &p),
                    (x, y) => Some((p, x.map_or("(absent)".into(), |v| v.to_string()), y.map_or("(absent)".into(), |v| v.to_string()))),
                }
            })
        }
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

/// Makes `run` the extension of the finished run in folder `old`, checking everything first.
pub fn extend(run: &mut PreparedRun, old: &Path) -> Result<(), SpecError> {
    let bad = |msg: String| SpecError::new(format!("--extend {}: {msg}", old.display()));
    let config = old.join("config.toml");
    if !config.is_file() {
        return Err(bad("not a run folder (no config.toml); give runs/<experiment>/<run-id>".into()));
    }
    let old_spec = ExperimentSpec::load(&config, &[])?;
    if let Some((path, was, now)) = first_difference(&comparable(&old_spec), &comparable(&run.spec), "") {
        return Err(bad(format!("its config differs at {path} ({was} there, {now} here); only train.steps may change")));
    }
    let (was, now) = (old_spec.train.steps, run.spec.train.steps);
    if now <= was {
        return Err(bad(format!("train.steps = {now}: must be more than the run's {was} steps")));
    }
    let summary: serde_json::Value = std::fs::read_to_string(old.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| bad("has no readable summary.json: only a finished run can be extended (resume an unfinished one with the same command)".into()))?;
    if summary.get("status").and_then(|s| s.as_str()) != Some("finished") {
        return Err(bad(format!("its status is {}: only a finished run can be extended", summary.get("status").unwrap_or(&serde_json::Value::Null))));
    }
    let stored = std::fs::read_to_string(old.join("data.sha256")).unwrap_or_default();
    if let Some(sha) = &run.data_sha256 {
        if stored.trim().is_empty() {
            return Err(bad("it has no data.sha256 (a run from before 2026-12-03): its data cannot be checked, so it is not extended".into()));
        }
        if stored.trim() != sha {
            return Err(bad(format!("it was trained on other data (sha256 {:?}; now {sha})", stored.trim())));
        }
    }
    // The same token ids: a rewritten tokenizer file, or a learned BPE that came out otherwise,
    // would continue the old weights on other tokens.
    let stored: Option<attnlab_data::Tokenizer> = std::fs::read_to_string(old.join("tokenizer.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    if stored.as_ref() != Some(&run.tokenizer) {
        return Err(bad(format!(
            "its tokenizer.json {} the tokenizer of this config ({} tokens here)",
            if stored.is_some() { "differs from" } else { "is missing or unreadable, so it cannot be checked against" },
            run.tokenizer.vocab_size()
        )));
    }
    let checkpoint = old.join("checkpoint");
    crate::checkpoint::verify(&checkpoint).map_err(|e| bad(format!("{e:#}")))?;
    let from_run = old.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let digest = Sha256::digest(format!("{} extends {from_run}", run.run_id).as_bytes());
    run.run_id = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    run.extends = Some(Extension { from_run, from_dir: old.to_path_buf(), from_step: was });
    Ok(())
}
