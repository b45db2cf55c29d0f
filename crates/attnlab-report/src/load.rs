//! Reading a run store: every `<run-id>/` with a `summary.json`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value as Json;

/// One finished run: its summary, its config flattened to dotted paths, its eval curve.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub summary: Json,
    /// `model.attention.kind` → `"mha"`, ... (values as one-line TOML).
    pub config: BTreeMap<String, String>,
    /// (step, val loss) at every evaluation.
    pub val_curve: Vec<(usize, f64)>,
    /// (step, training loss) every `train.log_every` steps.
    pub train_curve: Vec<(usize, f64)>,
    /// `attnlab eval` records of the run (`evals.jsonl`, one JSON object each).
    pub evals: Vec<Json>,
}

impl RunRecord {
    pub fn num(&self, key: &str) -> f64 {
        self.summary.get(key).and_then(Json::as_f64).unwrap_or(f64::NAN)
    }
    pub fn text(&self, key: &str) -> String {
        self.summary.get(key).and_then(Json::as_str).unwrap_or("").to_string()
    }
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        // A mixer config (`model.attention`, a `model.overrides` table) is one value.
        toml::Value::Table(t) if !prefix.ends_with("attention") && prefix != "model.overrides" => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        // Training stages: one short value, `name(steps, lr[, aux×weight][, no LM])` each.
        toml::Value::Array(stages) if prefix == "train.stages" => {
            let show = |s: &toml::Value| {
                let get = |k: &str| s.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
                let mut parts = vec![get("steps"), format!("lr {}", get("lr"))];
                if let Some(aux) = s.get("aux").and_then(|a| a.as_table()) {
                    parts.extend(aux.iter().map(|(k, v)| format!("{k}×{v}")));
                }
                if s.get("lm_loss").and_then(|v| v.as_bool()) == Some(false) {
                    parts.push("no LM".into());
                }
                format!("{}({})", get("name"), parts.join(", "))
            };
            out.insert(prefix.to_string(), stages.iter().map(show).collect::<Vec<_>>().join(" → "));
        }
        other => {
            let s = match other {
                toml::Value::Table(t) => {
                    let f: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{{}}}", f.join(", "))
                }
                v => v.to_string(),
            };
            out.insert(prefix.to_string(), s);
        }
    }
}

/// All finished runs below `dir` (one experiment's folder), sorted by run id; run folders
/// whose summary or config is unreadable are left out (see [`load_store`]).
pub fn load_runs(dir: &Path) -> Result<Vec<RunRecord>> {
    Ok(load_store(dir)?.0)
}

/// Why a summary cannot be used, or `None` when it has what a report needs.
fn summary_problem(summary: &Json) -> Option<String> {
    let Some(obj) = summary.as_object() else { return Some(format!("not a JSON object ({})", short(summary))) };
    for key in ["attention", "status"] {
        if !obj.get(key).is_some_and(Json::is_string) {
            return Some(format!("field \"{key}\" missing or not a string"));
        }
    }
    if !obj.get("best_val_loss").is_some_and(|v| v.is_number() || v.is_null()) {
        return Some("field \"best_val_loss\" missing or not a number".into());
    }
    None
}

fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.len() > 40 { format!("{}…", &s[..s.floor_char_boundary(40)]) } else { s }
}

/// For an extension, the steps it and its ancestors restarted from, oldest first: "8000", or
/// "8000+12000" for an extension of an extension (followed through the store's run folders as
/// far as they are there), so that two runs reaching the same steps by different restarts stay
/// apart. `None` for a run trained from scratch.
fn restart_chain(root: &Path, summary: &Json) -> Option<String> {
    summary.get("extended_from").and_then(Json::as_str)?;
    let mut steps = Vec::new();
    let mut current = summary.clone();
    while let Some(parent) = current.get("extended_from").and_then(Json::as_str).map(str::to_string) {
        steps.push(current.get("extended_from_step").and_then(Json::as_u64).map_or("?".to_string(), |s| s.to_string()));
        let parent_summary = root.parent().and_then(|store| std::fs::read(store.join(&parent).join("summary.json")).ok());
        match parent_summary.and_then(|b| serde_json::from_slice::<Json>(&b).ok()) {
            Some(s) if steps.len() < 64 => current = s,
            _ => break,
        }
    }
    steps.reverse();
    Some(steps.join("+"))
}

/// One run folder: `Ok(None)` when it has no summary (not finished), `Err(reason)` when its
/// files cannot be used.
fn load_run(root: &Path) -> std::result::Result<Option<RunRecord>, String> {
    let summary_path = root.join("summary.json");
    let bytes = match std::fs::read(&summary_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read: {e}", summary_path.display())),
    };
    let summary: Json = serde_json::from_slice(&bytes).map_err(|e| format!("{}: not JSON: {e}", summary_path.display()))?;
    if let Some(problem) = summary_problem(&summary) {
        return Err(format!("{}: {problem}", summary_path.display()));
    }
    let config_path = root.join("config.toml");
    let config_text = std::fs::read_to_string(&config_path).map_err(|e| format!("{}: cannot read: {e}", config_path.display()))?;
    let config: toml::Value = toml::from_str(&config_text).map_err(|e| format!("{}: not TOML: {}", config_path.display(), e.message()))?;
    let mut flat = BTreeMap::new();
    flatten("", &config, &mut flat);
    // Fields a config leaves out at their defaults (so older run ids stay): present for
    // grouping, so a dropout run is never pooled with a run without it.
    for (key, default) in [("model.dropout", "0.0"), ("train.accumulate", "1"), ("train.precision", "\"f32\""), ("model.positions", "\"none\"")] {
        flat.entry(key.to_string()).or_insert_with(|| default.to_string());
    }
    // An extension (`train --extend`) has the config of a run trained from scratch to the same
    // steps; it is another run, grouped apart by the steps it restarted from (so the seeds of
    // one extended point pool together; the parent run's id is in its summary).
    if let Some(chain) = restart_chain(root, &summary) {
        flat.insert("extended_from_step".into(), chain);
    }
    let metrics: Vec<Json> = std::fs::read(root.join("metrics.jsonl"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .collect();
    let curve = |kind: &str, key: &str| -> Vec<(usize, f64)> {
        metrics
            .iter()
            .filter(|m| m.get("kind").and_then(Json::as_str) == Some(kind))
            .filter_map(|m| Some((m.get("step")?.as_u64()? as usize, m.get(key)?.as_f64()?)))
            .collect()
    };
    let (val_curve, train_curve) = (curve("eval", "val_loss"), curve("train", "loss"));
    let run_id = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let evals = std::fs::read_to_string(root.join("evals.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str::<Json>(l).ok()).collect();
    Ok(Some(RunRecord { run_id, summary, config: flat, val_curve, train_curve, evals }))
}

/// All finished runs below `dir`, sorted by run id, and one line per run folder left out
/// because its summary or config cannot be used (file named, reason given).
pub fn load_store(dir: &Path) -> Result<(Vec<RunRecord>, Vec<String>)> {
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the run store {}", dir.display()))?;
    for entry in entries {
        let root = entry?.path();
        let hidden = root.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !root.is_dir() {
            continue;
        }
        match load_run(&root) {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => {}
            Err(reason) => skipped.push(reason),
        }
    }
    let mut runs = drop_duplicates(dir, runs, &mut skipped);
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    skipped.sort();
    Ok((runs, skipped))
}

/// Fields that do not make a run (left out of the run id since 2026-12-03).
const BOOKKEEPING: &[&str] = &["train.checkpoint_every", "train.log_every", "eval.every"];

/// Keeps one run per (config without bookkeeping fields, seed, data source): a store that holds
/// a run under an id from before the run id changed and again under its new id would count it
/// twice. The newest summary is kept; the others are listed as left out.
fn drop_duplicates(dir: &Path, runs: Vec<RunRecord>, skipped: &mut Vec<String>) -> Vec<RunRecord> {
    let key = |r: &RunRecord| {
        let config: Vec<(&String, &String)> = r.config.iter().filter(|(k, _)| !BOOKKEEPING.contains(&k.as_str())).collect();
        // The saved tokenizer too: runs that differ only in a tokenizer file's bytes are two runs.
        let tokenizer = std::fs::read(dir.join(&r.run_id).join("tokenizer.json")).unwrap_or_default();
        format!("{config:?} {} {}", r.text("data_source"), String::from_utf8_lossy(&tokenizer))
    };
    let modified = |r: &RunRecord| std::fs::metadata(dir.join(&r.run_id).join("summary.json")).and_then(|m| m.modified()).ok();
    let mut kept: Vec<RunRecord> = Vec::new();
    for run in runs {
        match kept.iter().position(|k| key(k) == key(&run)) {
            None => kept.push(run),
            Some(i) => {
                let (newer, older) = if modified(&run) > modified(&kept[i]) { (run, kept.swap_remove(i)) } else { (kept.swap_remove(i), run) };
                skipped.push(format!("{}: the same config, seed and data as {} (newer, kept); left out so it is not counted twice", dir.join(&older.run_id).display(), newer.run_id));
                kept.push(newer);
            }
        }
    }
    kept
}

/// Sets `mfu = 3 · flops_per_token · train_tokens_per_sec / peak` (and `peak_flops`) on a run
/// whose summary has no MFU, marking it `"mfu_source": "report"`.
pub fn fill_mfu(r: &mut RunRecord, peak: f64) {
    if r.summary.get("mfu").is_some_and(|v| !v.is_null()) {
        return;
    }
    // Never above 100%: achieved FLOP/s above the given peak become the peak (as in training).
    let achieved = 3.0 * r.num("flops_per_token") * r.num("train_tokens_per_sec");
    let used = achieved.max(peak);
    let mfu = achieved / used;
    if let (Some(obj), true) = (r.summary.as_object_mut(), mfu.is_finite()) {
        obj.insert("mfu".into(), serde_json::json!(mfu));
        obj.insert("peak_flops".into(), serde_json::json!(used));
        obj.insert("peak_exceeded".into(), serde_json::json!(achieved > peak));
        obj.insert("mfu_source".into(), serde_json::json!("report"));
    }
}
