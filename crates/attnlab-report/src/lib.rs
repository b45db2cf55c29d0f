//! Reports from a run store `runs/<experiment>/`: runs are grouped by the config fields that
//! vary (seeds pooled), and written as `README.md` (tables, mean ± std over seeds),
//! `results.csv` and `results.json` (one row per run), `loss.svg` and `pareto.svg`, and
//! `position_loss.svg` when runs have dense `attnlab eval` records.

pub mod load;
pub mod mad;
pub mod plots;
pub mod stats;
pub mod tables;

pub use load::{load_runs, load_store, RunRecord};
pub use tables::{group_runs, Group};

use std::path::Path;

use anyhow::{Context, Result};

/// Writes the whole report for the run store `runs_dir` into `out`. A `notes.md` already in
/// `out` (a human reading of the results) is kept and included in `README.md`.
/// `peak_flops` fills in MFU for runs recorded before summaries carried it (older runs).
pub fn write_report(runs_dir: &Path, out: &Path, peak_flops: Option<f64>) -> Result<Vec<Group>> {
    write_report_stores(&[runs_dir.to_path_buf()], out, peak_flops)
}

/// The folder name of a store (its experiment's name), for labels.
pub fn store_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into())
}

/// One report over several run stores side by side (`attnlab report A B`): every run gets a
/// config field `store` (the store's folder name; the folder's path when two names clash), so
/// configs present in several stores form one group per store, labelled `store=…`, and the
/// noise check compares them. Run ids are shown as `store/run-id`. With one store this is the
/// plain report.
pub fn write_report_stores(stores: &[std::path::PathBuf], out: &Path, peak_flops: Option<f64>) -> Result<Vec<Group>> {
    write_report_stores_with(stores, out, peak_flops, &|_, _| {})
}

/// [`write_report_stores`], with `fill(run folder, run)` called on every run as it is loaded: the
/// CLI derives there what older summaries lack (`keys_attended`) from the run's config.
pub fn write_report_stores_with(stores: &[std::path::PathBuf], out: &Path, peak_flops: Option<f64>, fill: &dyn Fn(&Path, &mut RunRecord)) -> Result<Vec<Group>> {
    let (mut runs, mut skipped) = (Vec::new(), Vec::new());
    let names: Vec<String> = stores.iter().map(|s| store_name(s)).collect();
    for (i, dir) in stores.iter().enumerate() {
        let (mut r, s) = load_store(dir)?;
        for run in &mut r {
            fill(&dir.join(&run.run_id), run);
        }
        if stores.len() > 1 {
            let clash = names.iter().filter(|n| **n == names[i]).count() > 1;
            let name = if clash { dir.display().to_string() } else { names[i].clone() };
            for run in &mut r {
                run.config.insert("store".into(), name.clone());
                run.run_id = format!("{name}/{}", run.run_id);
            }
        }
        runs.extend(r);
        skipped.extend(s);
    }
    let runs_dir = stores.first().map(|p| p.as_path()).unwrap_or(Path::new("."));
    for reason in &skipped {
        eprintln!("warning: left out of the report: {reason}");
    }
    if let Some(peak) = peak_flops {
        for r in &mut runs {
            load::fill_mfu(r, peak);
        }
    }
    anyhow::ensure!(!runs.is_empty(), "{}: no finished runs (no */summary.json)", if stores.len() > 1 { names.join(", ") } else { runs_dir.display().to_string() });
    let groups = group_runs(&runs);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let notes = std::fs::read_to_string(out.join("notes.md")).ok();
    let mut readme = tables::markdown(&runs, &groups, notes.as_deref());
    if let Some(mad) = mad::markdown(&runs) {
        readme.push_str(&format!("\n{mad}"));
    }
    if !skipped.is_empty() {
        readme.push_str(&format!("\n## Runs left out\n\n{} run folders have a summary or config that cannot be used:\n\n", skipped.len()));
        for reason in &skipped {
            readme.push_str(&format!("- {reason}\n"));
        }
    }
    write(out, "README.md", &readme)?;
    write(out, "results.csv", &tables::csv(&runs, &groups))?;
    write(out, "results.json", &serde_json::to_string_pretty(&tables::json(&runs, &groups))?)?;
    plots::loss_svg(&groups, &out.join("loss.svg"))?;
    plots::pareto_svg(&groups, &out.join("pareto.svg"))?;
    if mad::markdown(&runs).is_some() {
        mad::plot(&runs, &out.join("mad.svg"))?;
    }
    plots::position_svg(&tables::position_rows(&runs, &groups), &out.join("position_loss.svg"))?;
    for field in plots::accuracy_axes(&groups) {
        plots::accuracy_svg(&groups, &field, &out.join(plots::accuracy_file(&field)))?;
    }
    Ok(groups)
}

/// Writes `dir/name` whole (a per-process temp file, then rename); the temp file is removed
/// when writing fails (a full disk).
fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", dir.join(name).display()));
    }
    Ok(())
}
