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
        toml::Value::Table(t) if !prefix.ends_with("attention") => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
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

/// All finished runs below `dir` (one experiment's folder), sorted by run id.
pub fn load_runs(dir: &Path) -> Result<Vec<RunRecord>> {
    let mut runs = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the run store {}", dir.display()))?;
    for entry in entries {
        let root = entry?.path();
        let Ok(summary) = std::fs::read_to_string(root.join("summary.json")) else { continue };
        let summary: Json = serde_json::from_str(&summary).with_context(|| format!("{}/summary.json", root.display()))?;
        let config: toml::Value = toml::from_str(&std::fs::read_to_string(root.join("config.toml"))?)
            .with_context(|| format!("{}/config.toml", root.display()))?;
        let mut flat = BTreeMap::new();
        flatten("", &config, &mut flat);
        let val_curve = std::fs::read_to_string(root.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|m| m.get("kind").and_then(Json::as_str) == Some("eval"))
            .filter_map(|m| Some((m.get("step")?.as_u64()? as usize, m.get("val_loss")?.as_f64()?)))
            .collect();
        let run_id = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        runs.push(RunRecord { run_id, summary, config: flat, val_curve });
    }
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(runs)
}

/// Sets `mfu = 3 · flops_per_token · train_tokens_per_sec / peak` (and `peak_flops`) on a run
/// whose summary has no MFU, marking it `"mfu_source": "report"`.
pub fn fill_mfu(r: &mut RunRecord, peak: f64) {
    if r.summary.get("mfu").is_some_and(|v| !v.is_null()) {
        return;
    }
    let mfu = 3.0 * r.num("flops_per_token") * r.num("train_tokens_per_sec") / peak;
    if let (Some(obj), true) = (r.summary.as_object_mut(), mfu.is_finite()) {
        obj.insert("mfu".into(), serde_json::json!(mfu));
        obj.insert("peak_flops".into(), serde_json::json!(peak));
        obj.insert("mfu_source".into(), serde_json::json!("report"));
    }
}
