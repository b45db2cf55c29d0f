//! Grouping runs by their varying config fields, and the Markdown / CSV / JSON tables.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value as Json};

use crate::load::RunRecord;
use crate::stats::{ci95, mean, std, welch95, wilson};

/// A task run counts as solved when its final test accuracy reaches this.
pub const SOLVED: f64 = 0.9;

/// True for a run stored before tasks had a separate validation set (no `final_test_accuracy`
/// key at all): its "val" set *was* the test set.
pub fn before_val_test_split(r: &RunRecord) -> bool {
    r.summary.get("final_test_accuracy").is_none()
}

/// Final test accuracy of a run: `final_test_accuracy` (NaN when null, e.g. diverged), or
/// `final_val_accuracy` for a store from before the validation/test split.
pub fn test_accuracy(r: &RunRecord) -> f64 {
    if before_val_test_split(r) { r.num("final_val_accuracy") } else { r.num("final_test_accuracy") }
}

/// Fields never used to tell configs apart. `train.init_from` (a run started from another's
/// weights, `attnlab linearize`) pairs each run with the source of its seed: it varies with the
/// seed, not with the config.
const IGNORED: &[&str] = &["train.seed", "name", "train.init_from"];

/// Runs that differ only in their seed.
#[derive(Debug, Clone)]
pub struct Group {
    /// Short name: the attention label, plus any other varying field.
    pub label: String,
    /// The varying fields and their values.
    pub fields: BTreeMap<String, String>,
    /// Indices into the run list.
    pub runs: Vec<usize>,
    pub best_val: Vec<f64>,
    /// Synthetic tasks: final test accuracy of each (non-diverged) run; empty otherwise.
    pub accuracy: Vec<f64>,
    /// Synthetic tasks: test accuracy at the evaluation chosen on validation, per run that has it.
    pub accuracy_at_best_val: Vec<f64>,
    /// Synthetic tasks: final validation accuracy of each (non-diverged) run (what selects a
    /// learning rate).
    pub val_accuracy: Vec<f64>,
    /// Synthetic tasks: every run of the group, diverged ones included (they count as
    /// unsolved); 0 otherwise.
    pub task_runs: usize,
    pub kv_bytes: f64,
    /// Mean val-loss curve over seeds: (step, mean, min, max).
    pub curve: Vec<(usize, f64, f64, f64)>,
    /// Mean logged training loss over seeds: (step, mean) at steps every run logged.
    pub train_curve: Vec<(usize, f64)>,
}

impl Group {
    pub fn best_mean(&self) -> f64 {
        mean(&self.best_val)
    }
    pub fn best_std(&self) -> f64 {
        std(&self.best_val)
    }
    pub fn accuracy_mean(&self) -> f64 {
        mean(&self.accuracy)
    }
    /// Runs whose final test accuracy is ≥ [`SOLVED`] (out of [`Group::task_runs`]: a diverged
    /// run is unsolved).
    pub fn solved(&self) -> usize {
        self.accuracy.iter().filter(|&&a| a >= SOLVED).count()
    }
    /// Mean final validation accuracy with diverged runs counted as 0.
    pub fn val_accuracy_over_all_runs(&self) -> f64 {
        self.val_accuracy.iter().sum::<f64>() / self.task_runs.max(1) as f64
    }
}

/// True when the runs are a synthetic task (they report accuracy).
pub fn has_accuracy(groups: &[Group]) -> bool {
    groups.iter().any(|g| !g.accuracy.is_empty())
}

/// Config fields that together say which mixer each layer uses.
const MIXER_FIELDS: [&str; 3] = ["model.attention", "model.pattern", "model.overrides"];

/// The value of a varying field that a run's config lacks.
pub const ABSENT: &str = "–";

/// `name=value` for a group's field in labels, column headers and legends (the last part of the
/// dotted key); `None` for a field the group's runs lack ([`ABSENT`]).
pub fn field_text(key: &str, value: &str) -> Option<String> {
    (value != ABSENT).then(|| format!("{}={value}", key.rsplit('.').next().unwrap_or(key)))
}

/// Groups runs by the config fields (other than the seed) whose values differ between runs.
pub fn group_runs(runs: &[RunRecord]) -> Vec<Group> {
    // A key some runs lack (an extension's `extended_from_step`, a field newer than a run)
    // counts as the value [`ABSENT`] for them, so its presence alone separates groups; labels
    // leave such an absent key out.
    let keys: BTreeSet<&str> = runs.iter().flat_map(|r| r.config.keys().map(String::as_str)).collect();
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in runs {
        for k in &keys {
            values.entry(k).or_default().insert(r.config.get(*k).map_or(ABSENT, String::as_str));
        }
    }
    let mut varying: Vec<&str> = values.iter().filter(|(k, v)| v.len() > 1 && !IGNORED.contains(k)).map(|(k, _)| *k).collect();
    if varying.iter().any(|k| k.starts_with("data.task.")) {
        // With a task, train.block is the task's sequence length: not a separate axis.
        varying.retain(|k| *k != "train.block");
    }
    // With a layer schedule among them, the mixer fields (one kind, or a pattern with
    // overrides) are one axis, named `model.attention` and valued by the run's mixer label
    // (`kda×3+mla-nope`).
    let mixer_varies = varying.iter().any(|k| MIXER_FIELDS[1..].contains(k));
    if mixer_varies {
        varying.retain(|k| !MIXER_FIELDS.contains(k));
    }
    let mut groups: Vec<Group> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let mut fields: BTreeMap<String, String> =
            varying.iter().map(|k| (k.to_string(), r.config.get(*k).cloned().unwrap_or_else(|| ABSENT.into()))).collect();
        if mixer_varies {
            fields.insert("model.attention".into(), r.text("attention"));
        }
        match groups.iter_mut().find(|g| g.fields == fields) {
            Some(g) => g.runs.push(i),
            None => {
                let mut label = r.text("attention");
                for text in fields.iter().filter(|(k, _)| *k != "model.attention").filter_map(|(k, v)| field_text(k, v)) {
                    label.push_str(&format!(" {text}"));
                }
                groups.push(Group { label, fields, runs: vec![i], best_val: vec![], accuracy: vec![], accuracy_at_best_val: vec![], val_accuracy: vec![], task_runs: 0, kv_bytes: 0.0, curve: vec![], train_curve: vec![] });
            }
        }
    }
    for g in &mut groups {
        // Diverged runs are listed in the per-run table but left out of the statistics.
        let kept: Vec<usize> = g.runs.iter().copied().filter(|&i| runs[i].text("status") != "diverged").collect();
        g.best_val = kept.iter().map(|&i| runs[i].num("best_val_loss")).filter(|v| v.is_finite()).collect();
        g.accuracy = kept.iter().map(|&i| test_accuracy(&runs[i])).filter(|a| a.is_finite()).collect();
        g.accuracy_at_best_val = kept.iter().map(|&i| runs[i].num("test_accuracy_at_best_val")).filter(|a| a.is_finite()).collect();
        g.val_accuracy = kept.iter().map(|&i| runs[i].num("final_val_accuracy")).filter(|a| a.is_finite()).collect();
        g.task_runs = if g.accuracy.is_empty() { 0 } else { g.runs.len() };
        g.kv_bytes = runs[g.runs[0]].num("kv_bytes_per_token_measured");
        let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for &i in &g.runs {
            for &(s, v) in &runs[i].val_curve {
                by_step.entry(s).or_default().push(v);
            }
        }
        g.curve = by_step
            .into_iter()
            .map(|(s, v)| (s, mean(&v), v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)))
            .collect();
        let mut train: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for &i in &kept {
            for &(s, v) in &runs[i].train_curve {
                train.entry(s).or_default().push(v);
            }
        }
        // Non-diverged runs only; a mean over fewer runs would jump where a run stops logging.
        g.train_curve = train.into_iter().filter(|(_, v)| v.len() == kept.len() && v.iter().all(|x| x.is_finite())).map(|(s, v)| (s, mean(&v))).collect();
    }
    groups.sort_by(|a, b| b.kv_bytes.total_cmp(&a.kv_bytes).then(a.label.cmp(&b.label)));
    groups
}

/// Δ of a group from the baseline: test accuracy in percentage points for tasks, else best
/// validation loss.
fn delta(g: &Group, base: &Group, accuracy: bool) -> f64 {
    if accuracy {
        100.0 * (g.accuracy_mean() - base.accuracy_mean())
    } else {
        g.best_mean() - base.best_mean()
    }
}

/// The group runs are compared against: `mha` if present, else the one with the most KV bytes.
pub fn baseline(groups: &[Group]) -> &Group {
    groups.iter().find(|g| g.label == "mha" || g.label.starts_with("mha ")).unwrap_or(&groups[0])
}

fn group_mean(runs: &[RunRecord], g: &Group, key: &str) -> f64 {
    mean(&g.runs.iter().map(|&i| runs[i].num(key)).collect::<Vec<_>>())
}

/// Accuracy in percent over seeds, ± the 95% t-interval's half-width (none for one seed).
fn pct(xs: &[f64]) -> String {
    match (xs.len(), ci95(xs)) {
        (0, _) => "–".into(),
        (_, Some(h)) => format!("{:.1} ± {:.1}%", 100.0 * mean(xs), 100.0 * h),
        (_, None) => format!("{:.1}% (1 seed)", 100.0 * mean(xs)),
    }
}

fn mfu(v: f64) -> String {
    if v.is_finite() { format!("{:.1}%", 100.0 * v) } else { "–".into() }
}

/// Mean over seeds ± the 95% t-interval's half-width (none for one seed).
fn pm(xs: &[f64]) -> String {
    let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return "–".into();
    }
    let xs = &xs[..];
    match ci95(xs) {
        Some(h) => format!("{:.4} ± {h:.4}", mean(xs)),
        None => format!("{:.4} (1 seed)", mean(xs)),
    }
}

/// Markdown report: settings, the comparison table, a noise check, and the per-run table.
pub fn markdown(runs: &[RunRecord], groups: &[Group], notes: Option<&str>) -> String {
    let first = &runs[0];
    let base = baseline(groups);
    let mut md = String::new();
    md.push_str(&format!("# Report: {}\n\n", first.text("experiment")));
    let devices: BTreeSet<String> = runs.iter().map(|r| r.text("device")).collect();
    let data: BTreeSet<String> = runs.iter().map(|r| r.text("data_source")).collect();
    md.push_str(&format!(
        "{} runs, {} configs; device: {}; data: {}; steps: {}. Generated by `attnlab report` from the run store; \
         numbers are per run; over seeds, mean ± the half-width of its 95% confidence interval (Student's t, n − 1 degrees of freedom; \
         none for a single seed).\n\n",
        runs.len(),
        groups.len(),
        devices.into_iter().collect::<Vec<_>>().join(", "),
        data.into_iter().collect::<Vec<_>>().join(", "),
        first.num("steps"),
    ));
    if let Some(notes) = notes {
        md.push_str(notes.trim());
        md.push_str("\n\n");
    }
    md.push_str("## Results\n\n");
    md.push_str("| config | seeds | params | attention params | KV bytes/token | KV vs ");
    md.push_str(&base.label);
    // Selection methods: the fraction of causal (query, key) pairs scored, when any config scores fewer than all.
    let keys = |g: &Group| group_mean(runs, g, "keys_attended");
    let sparse = groups.iter().any(|g| keys(g) < 1.0 - 1e-12);
    if sparse {
        md.push_str(" | keys attended⁴");
    }
    let accuracy = has_accuracy(groups);
    md.push_str(if accuracy { " | best val loss | Δ test acc. (pp) vs " } else { " | best val loss | Δ vs " });
    md.push_str(&base.label);
    md.push_str(" | final val loss |");
    if accuracy {
        md.push_str(&format!(" test accuracy (final) | test acc. at best val² | solved (≥ {:.0}%), 95% CI³ |", 100.0 * SOLVED));
    }
    md.push_str(" train tokens/s | ms/step | MFU | peak RSS MiB¹ |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    if sparse {
        md.push_str("---|");
    }
    md.push_str(if accuracy { "---|---|---|\n" } else { "\n" });
    for g in groups {
        let n = g.runs.len();
        let finals: Vec<f64> = g.runs.iter().map(|&i| runs[i].num("final_val_loss")).collect();
        let acc = if accuracy {
            let (lo, hi) = wilson(g.solved(), g.task_runs);
            format!(
                " {} | {} | {}/{} [{:.0}–{:.0}%] |",
                pct(&g.accuracy),
                pct(&g.accuracy_at_best_val),
                g.solved(),
                g.task_runs,
                100.0 * lo,
                100.0 * hi
            )
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.3}×{} | {} | {} | {} |{acc} {:.0} | {:.1} | {} | {:.0} |\n",
            g.label,
            n,
            group_mean(runs, g, "params"),
            group_mean(runs, g, "mixer_params"),
            g.kv_bytes,
            g.kv_bytes / base.kv_bytes,
            match (sparse, keys(g)) {
                (false, _) => String::new(),
                (true, k) if k.is_finite() => format!(" | {:.1}%", 100.0 * k),
                (true, _) => " | —".to_string(),
            },
            pm(&g.best_val),
            format!("{:+.*}", if accuracy { 1 } else { 4 }, delta(g, base, accuracy)),
            pm(&finals),
            group_mean(runs, g, "train_tokens_per_sec"),
            group_mean(runs, g, "ms_per_step_median"),
            mfu(group_mean(runs, g, "mfu")),
            group_mean(runs, g, "peak_rss_bytes") / (1024.0 * 1024.0),
        ));
    }
    md.push_str("\nKV bytes/token: decode state of all layers for one sequence, f32, measured from the real state tensors \
                 (it equals the formula: MHA 2·h·d_h·l, GQA 2·g·d_h·l, MQA 2·d_h·l, MLA (d_c + d_R)·l, × 4 bytes; \
                 a sliding window's state stops growing at the window, and a recurrent state (linear, gated_deltanet, kda) never grows, \
                 so their bytes are averaged over a full `model.max_seq` context).\n\n\
                 MFU: 3 · forward FLOPs/token · train tokens/s / the device's measured matmul peak in the run's compute type (`attnlab bench peak`: best over sizes since 2026-12-04, 1024³ only before), never above 100%. \
                 For gated_deltanet and kda the forward FLOPs are those of the chunked training form (C × C scores and, for the delta rules, the Gram matrix and its inverse), \
                 which the fused recurrence they train with on CPU does not compute: there their MFU overstates the work done; compare tokens/s.\n\n\
                 ¹ Peak resident memory of the process that ran the run (a `sweep` process runs several runs, so this is an upper bound for one run).\n\n");
    if sparse {
        md.push_str("⁴ Keys attended: the fraction of the causal (query, key) pairs that enter the attention softmax at the training block length, averaged over heads and over the layers that attend key by key \
                     (dense softmax 100%; DSA's indexer scores every pair to choose; a sliding window or sparse pattern from its mask; DSA min(top_k, t + 1) keys per query; MoSA's routed heads the pairs among their \
                     routing budget's tokens, an upper bound for prefix routing, which may choose fewer; — = a recurrent state summarises every key).\n\n");
    }
    if accuracy {
        md.push_str(&format!(
            "Test accuracy: exact match on the answers of the task's test set, which nothing is selected on (a separate validation set picks the best evaluation). \
             ² Test accuracy of the model at the evaluation with the highest validation accuracy. \
             ³ Runs whose final test accuracy is ≥ {:.0}% (a diverged run counts as unsolved), with the 95% Wilson score interval of the success rate.\n\n",
            100.0 * SOLVED
        ));
    }
    if let Some(r) = runs.iter().find(|r| r.text("mfu_source") == "report") {
        md.push_str(&format!(
            "MFU of runs recorded before summaries carried it is computed by `attnlab report --peak-gflops {:.1}` from their tokens/s and FLOPs/token.\n\n",
            r.num("peak_flops") / 1e9
        ));
    }
    if let Some(best) = best_rate(runs, groups) {
        md.push_str(&best);
    }
    if let Some(pivot) = accuracy_pivot(groups) {
        md.push_str(&pivot);
    }
    if let Some(depths) = accuracy_by_depth(runs, groups) {
        md.push_str(&depths);
    }
    if let Some(evals) = evaluations(runs, groups) {
        md.push_str(&evals);
    }
    if let Some(positions) = position_markdown(runs, groups) {
        md.push_str(&positions);
    }
    md.push_str("## Noise check\n\n");
    let (measure, unit, scale, p) = if accuracy { ("final test accuracy", " pp", 100.0, 1) } else { ("best val loss", "", 1.0, 4) };
    md.push_str(&format!(
        "A difference Δ of {measure} from {} counts as resolved when its 95% Welch interval (Student's t with the \
         Welch–Satterthwaite degrees of freedom) excludes 0. With one seed on either side there is no interval.\n\n",
        base.label
    ));
    for g in groups.iter().filter(|g| !std::ptr::eq(*g, base)) {
        let kv = format!("KV cache {:.1}% of {}", 100.0 * g.kv_bytes / base.kv_bytes, base.label);
        let (ours, theirs) = if accuracy { (&g.accuracy, &base.accuracy) } else { (&g.best_val, &base.best_val) };
        let line = match welch95(ours, theirs) {
            None if ours.len() < 2 || theirs.len() < 2 => format!("Δ = {:+.p$}{unit}: one seed, no interval", delta(g, base, accuracy)),
            None => format!("Δ = {:+.p$}{unit}: every seed equal on both sides, no spread to judge it by", delta(g, base, accuracy)),
            Some((d, h)) => {
                let better = if accuracy { d > 0.0 } else { d < 0.0 };
                let verdict = if d - h > 0.0 || d + h < 0.0 {
                    format!("{} than {} beyond seed noise", if better { "better" } else { "worse" }, base.label)
                } else {
                    "within seed noise".to_string()
                };
                let (d, h) = (scale * d, scale * h);
                format!("Δ = {d:+.p$}{unit}, 95% interval [{:+.p$}, {:+.p$}]: {verdict}", d - h, d + h)
            }
        };
        md.push_str(&format!("- **{}**: {line}; {kv}.\n", g.label));
    }
    md.push_str("\n![validation loss](loss.svg)\n\n![pareto](pareto.svg)\n\n");
    for field in crate::plots::accuracy_axes(groups) {
        md.push_str(&format!("![accuracy vs {field}]({})\n\n", crate::plots::accuracy_file(&field)));
    }
    md.push_str("## Runs\n\n");
    md.push_str("| run | config | seed | status | best val loss | final val loss | test accuracy | train tokens/s | wall s |\n|---|---|---|---|---|---|---|---|---|\n");
    for g in groups {
        for &i in &g.runs {
            let r = &runs[i];
            let acc = test_accuracy(r);
            md.push_str(&format!(
                "| `{}` | {} | {} | {} | {:.4} | {:.4} | {} | {:.0} | {:.0} |\n",
                r.run_id, g.label, r.num("seed"), status(r), r.num("best_val_loss"), r.num("final_val_loss"),
                if acc.is_finite() { format!("{:.1}%", 100.0 * acc) } else { "–".into() },
                r.num("train_tokens_per_sec"), r.num("wall_seconds")
            ));
        }
    }
    md
}

/// With `train.lr` swept: each config at its best learning rate, chosen on **validation**
/// (highest mean final validation accuracy for tasks, a diverged run counting as 0; lowest
/// mean best validation loss for text), with its test numbers, and every rate's result beside
/// it.
fn best_rate(runs: &[RunRecord], groups: &[Group]) -> Option<String> {
    const LR: &str = "train.lr";
    if !groups.first()?.fields.contains_key(LR) {
        return None;
    }
    let accuracy = has_accuracy(groups);
    let mut md = String::from("## Each config at its best learning rate\n\n");
    if accuracy && runs.iter().any(before_val_test_split) {
        // Their "validation" accuracy was measured on the test set: no honest choice to make.
        md.push_str("Not shown: some runs were stored before tasks had a validation set separate from the test set, so a rate chosen on their \"validation\" accuracy would be chosen on test.\n\n");
        return Some(md);
    }
    let family = |g: &Group| g.label.split(' ').filter(|p| !p.starts_with("lr=")).collect::<Vec<_>>().join(" ");
    let lr = |g: &Group| g.fields.get(LR).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let mut families: Vec<(String, Vec<&Group>)> = Vec::new();
    for g in groups {
        match families.iter_mut().find(|(f, _)| *f == family(g)) {
            Some((_, members)) => members.push(g),
            None => families.push((family(g), vec![g])),
        }
    }
    let score = |g: &Group| if accuracy { -g.val_accuracy_over_all_runs() } else { g.best_mean() };
    md.push_str(if accuracy {
        "The rate is chosen on the validation set (highest mean final validation accuracy over seeds, a diverged run counting as 0); the columns after it are test-set numbers of the final models at that rate. Every rate's solved count is listed so the choice can be checked.\n\n\
         | config | best lr | val accuracy (final, mean) | test accuracy (final) | solved, 95% CI | every rate: solved |\n|---|---|---|---|---|---|\n"
    } else {
        "The rate is chosen by the lowest mean best validation loss over seeds.\n\n| config | best lr | best val loss | every rate: best val loss |\n|---|---|---|---|\n"
    });
    for (name, mut members) in families {
        members.sort_by(|a, b| lr(a).total_cmp(&lr(b)));
        let Some(best) = members.iter().copied().filter(|g| score(g).is_finite()).min_by(|a, b| score(a).total_cmp(&score(b))) else {
            md.push_str(&format!("| {name} | – (no finished run) |{}\n", if accuracy { " | | | |" } else { " |" }));
            continue;
        };
        if accuracy {
            let (lo, hi) = wilson(best.solved(), best.task_runs);
            let all: Vec<String> = members.iter().map(|g| format!("{}: {}/{}", lr(g), g.solved(), g.task_runs)).collect();
            md.push_str(&format!(
                "| {name} | {} | {:.1}% | {} | {}/{} [{:.0}–{:.0}%] | {} |\n",
                lr(best),
                100.0 * best.val_accuracy_over_all_runs(),
                pct(&best.accuracy),
                best.solved(),
                best.task_runs,
                100.0 * lo,
                100.0 * hi,
                all.join(", ")
            ));
        } else {
            let all: Vec<String> = members.iter().map(|g| format!("{}: {:.4}", lr(g), g.best_mean())).collect();
            md.push_str(&format!("| {name} | {} | {} | {} |\n", lr(best), pm(&best.best_val), all.join(", ")));
        }
    }
    md.push('\n');
    Some(md)
}

/// With accuracy and more than one varying field: test accuracy (mean over seeds) with one row
/// per attention config and one column per combination of the other varying fields.
fn accuracy_pivot(groups: &[Group]) -> Option<String> {
    if !has_accuracy(groups) || groups[0].fields.len() < 2 || !groups[0].fields.contains_key("model.attention") {
        return None;
    }
    let column = |g: &Group| -> String {
        g.fields.iter().filter(|(k, _)| k.as_str() != "model.attention").filter_map(|(k, v)| field_text(k, v)).collect::<Vec<_>>().join(" ")
    };
    let row = |g: &Group| g.label.split(' ').next().unwrap_or(&g.label).to_string();
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    for g in groups {
        if !columns.contains(&column(g)) {
            columns.push(column(g));
        }
        if !rows.contains(&row(g)) {
            rows.push(row(g));
        }
    }
    columns.sort();
    let mut md = String::from("## Test accuracy by config\n\nMean exact-match accuracy on the test set's answers; one row per attention config, one column per value of the other varying fields.\n\n| attention |");
    for c in &columns {
        md.push_str(&format!(" {c} |"));
    }
    md.push_str(&format!("\n|---|{}\n", "---|".repeat(columns.len())));
    for r in &rows {
        md.push_str(&format!("| {r} |"));
        for c in &columns {
            let cell = groups.iter().find(|g| row(g) == *r && column(g) == *c).filter(|g| !g.accuracy.is_empty());
            md.push_str(&match cell {
                Some(g) => format!(" {:.1}% |", 100.0 * g.accuracy_mean()),
                None => " – |".into(),
            });
        }
        md.push('\n');
    }
    md.push('\n');
    Some(md)
}

/// Needle runs: final test accuracy per depth bucket (mean over seeds), shallow to deep.
fn accuracy_by_depth(runs: &[RunRecord], groups: &[Group]) -> Option<String> {
    let buckets = |i: usize| -> Option<Vec<f64>> {
        let r = &runs[i];
        if r.text("status") == "diverged" {
            return None;
        }
        let key = if before_val_test_split(r) { "final_val_accuracy_by_bucket" } else { "final_test_accuracy_by_bucket" };
        r.summary.get(key)?.as_array()?.iter().map(|v| v.as_f64()).collect()
    };
    let n = groups.iter().flat_map(|g| g.runs.iter()).find_map(|&i| buckets(i))?.len();
    let mut md = String::from("## Needle accuracy by depth\n\nFinal test accuracy by the needle's depth in the window (0 = start, 1 = just before the query), mean over seeds.\n\n| config |");
    for b in 0..n {
        md.push_str(&format!(" depth {:.2}–{:.2} |", b as f64 / n as f64, (b + 1) as f64 / n as f64));
    }
    md.push_str(&format!("\n|---|{}\n", "---|".repeat(n)));
    for g in groups {
        let rows: Vec<Vec<f64>> = g.runs.iter().filter_map(|&i| buckets(i)).filter(|b| b.len() == n).collect();
        if rows.is_empty() {
            continue;
        }
        md.push_str(&format!("| {} |", g.label));
        for b in 0..n {
            md.push_str(&format!(" {:.1}% |", 100.0 * mean(&rows.iter().map(|r| r[b]).collect::<Vec<_>>())));
        }
        md.push('\n');
    }
    md.push('\n');
    Some(md)
}

/// The `attnlab eval` records of the runs: one row per (config, inference setting, split),
/// means over the seeds that have it (the latest record of each run), the same positions
/// scored under the setting and under the model's own attention side by side.
fn evaluations(runs: &[RunRecord], groups: &[Group]) -> Option<String> {
    let mut rows: Vec<(String, String, String, Vec<&Json>)> = Vec::new();
    for g in groups {
        for &i in &g.runs {
            let mut latest: Vec<&Json> = Vec::new();
            for e in &runs[i].evals {
                let key = |e: &Json| (e.get("settings").cloned(), e.get("split").cloned(), e.get("block").cloned());
                latest.retain(|x| key(x) != key(e));
                latest.push(e);
            }
            for e in latest {
                let text = |k: &str| e.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                let (settings, split) = (text("settings"), format!("{} @ {}", text("split"), e.get("block").and_then(Json::as_u64).unwrap_or(0)));
                match rows.iter_mut().find(|r| r.0 == g.label && r.1 == settings && r.2 == split) {
                    Some(r) => r.3.push(e),
                    None => rows.push((g.label.clone(), settings, split, vec![e])),
                }
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    let mut md = String::from(
        "## Evaluations (`attnlab eval`)\n\nThe latest record of each run per setting, mean over seeds. Star Attention scores each window's query tokens \
         (global attention on the same positions beside it); key selection (Adamas, sink + window, pages, oracle) the tokens decoded one at a time \
         after a dense prefill (the dense model's cached decode beside it; recall = share of the budget − 1 earlier keys of largest true score that were selected, the current token, always attended, left out).\n\n\
         | config | inference | split @ window | seeds | loss | same positions, dense/global | accuracy | dense/global accuracy | recall | phase 1 / prefill |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let num = |e: &Json, path: &[&str]| -> f64 { path.iter().try_fold(e, |v, k| v.get(*k)).and_then(Json::as_f64).unwrap_or(f64::NAN) };
    for (label, settings, split, evals) in rows {
        let avg = |path: &[&str]| mean(&evals.iter().map(|e| num(e, path)).collect::<Vec<_>>());
        let (dense, dense_acc) = if evals[0].get("star").is_some() {
            (avg(&["star", "global_loss"]), avg(&["star", "global_accuracy"]))
        } else {
            (avg(&["sparse", "dense_loss"]), avg(&["sparse", "dense_accuracy"]))
        };
        let show = |x: f64, f: &dyn Fn(f64) -> String| if x.is_finite() { f(x) } else { "–".to_string() };
        let loss = |x: f64| format!("{x:.4}");
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let phase = avg(&["star", "phase1_seconds"]) / avg(&["star", "prefill_seconds"]);
        let exit = avg(&["mean_exit_loop"]);
        let settings = if exit.is_finite() { format!("{settings} (mean exit loop {exit:.2})") } else { settings };
        md.push_str(&format!(
            "| {label} | {settings} | {split} | {} | {} | {} | {} | {} | {} | {} |\n",
            evals.len(),
            show(avg(&["loss"]), &loss),
            show(dense, &loss),
            show(avg(&["accuracy"]), &pct),
            show(dense_acc, &pct),
            show(avg(&["sparse", "recall"]), &|x| format!("{x:.3}")),
            show(phase, &|x| format!("{x:.2}×")),
        ));
    }
    md.push('\n');
    Some(md)
}

/// Position buckets `[lo, hi)` of a window of `block` tokens (0-based): position 0 alone, then
/// doubling widths 1, 2–3, 4–7, … (the last cut at the window's end).
pub fn position_buckets(block: usize) -> Vec<(usize, usize)> {
    let mut buckets = vec![(0, 1.min(block))];
    let mut lo = 1;
    while lo < block {
        let hi = (2 * lo).min(block);
        buckets.push((lo, hi));
        lo = hi;
    }
    buckets
}

/// Each [`position_buckets`] bucket of a per-position loss, with the mean over its scored
/// (finite) positions: NaN where none was scored (a task's pair section).
pub fn bucket_means(losses: &[f64]) -> Vec<((usize, usize), f64)> {
    position_buckets(losses.len())
        .into_iter()
        .map(|(lo, hi)| {
            let scored: Vec<f64> = losses[lo..hi].iter().copied().filter(|v| v.is_finite()).collect();
            ((lo, hi), if scored.is_empty() { f64::NAN } else { mean(&scored) })
        })
        .collect()
}

/// One row of the loss-by-position table: a config, the split and window its dense `attnlab
/// eval` records scored, and per seed (run) the mean loss of each [`position_buckets`] bucket
/// (NaN where no position of the bucket was scored).
pub struct PositionRow {
    pub label: String,
    pub split: String,
    pub block: usize,
    pub per_run: Vec<Vec<f64>>,
}

/// The latest dense `attnlab eval` record (no inference-time setting) of each run per split and
/// window, grouped by config: the mean cross-entropy at each position, bucketed.
pub fn position_rows(runs: &[RunRecord], groups: &[Group]) -> Vec<PositionRow> {
    let mut rows: Vec<PositionRow> = Vec::new();
    for g in groups {
        for &i in &g.runs {
            let mut latest: Vec<&Json> = Vec::new();
            for e in runs[i].evals.iter().filter(|e| e.get("settings").and_then(Json::as_str).is_none_or(|s| s.is_empty() || s == "dense")) {
                let key = |e: &Json| (e.get("split").cloned(), e.get("block").cloned());
                latest.retain(|x| key(x) != key(e));
                latest.push(e);
            }
            for e in latest {
                let losses: Vec<f64> = e.get("loss_by_position").and_then(Json::as_array).map(|a| a.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect()).unwrap_or_default();
                if losses.len() < 2 {
                    continue;
                }
                let block = losses.len();
                let buckets: Vec<f64> = bucket_means(&losses).into_iter().map(|(_, loss)| loss).collect();
                let split = e.get("split").and_then(Json::as_str).unwrap_or("").to_string();
                match rows.iter_mut().find(|r| r.label == g.label && r.split == split && r.block == block) {
                    Some(r) => r.per_run.push(buckets),
                    None => rows.push(PositionRow { label: g.label.clone(), split, block, per_run: vec![buckets] }),
                }
            }
        }
    }
    rows
}

/// The loss-by-position table: one row per config and window, mean ± std over seeds per bucket.
fn position_markdown(runs: &[RunRecord], groups: &[Group]) -> Option<String> {
    let rows = position_rows(runs, groups);
    let block = rows.iter().map(|r| r.block).max()?;
    let buckets = position_buckets(block);
    let mut md = String::from(
        "## Loss by position (`attnlab eval`, dense)\n\nMean cross-entropy over the positions of each bucket (0-based, doubling widths) of each run's latest dense \
         evaluation, then mean ± std over the seeds that have one; `position_loss.svg` plots the means. – = no scored position there.\n\n| config | split @ window | seeds |",
    );
    for (lo, hi) in &buckets {
        md.push_str(&if hi - lo == 1 { format!(" {lo} |") } else { format!(" {lo}–{} |", hi - 1) });
    }
    md.push_str(&format!("\n|---|---|---|{}\n", "---|".repeat(buckets.len())));
    for r in &rows {
        md.push_str(&format!("| {} | {} @ {} | {} |", r.label, r.split, r.block, r.per_run.len()));
        for b in 0..buckets.len() {
            let xs: Vec<f64> = r.per_run.iter().filter_map(|v| v.get(b).copied()).filter(|v| v.is_finite()).collect();
            md.push_str(&match xs.len() {
                0 => " – |".to_string(),
                1 => format!(" {:.4} |", xs[0]),
                _ => format!(" {:.4} ± {:.4} |", mean(&xs), std(&xs)),
            });
        }
        md.push('\n');
    }
    md.push_str("\n![loss by position](position_loss.svg)\n\n");
    Some(md)
}

fn status(r: &RunRecord) -> String {
    match r.summary.get("diverged_at_step").and_then(Json::as_u64) {
        Some(step) => format!("diverged at step {step}"),
        None => r.text("status"),
    }
}

/// Columns of `results.csv` / fields of `results.json`, from `summary.json`.
const COLUMNS: &[&str] = &[
    "run_id", "experiment", "status", "diverged_at_step", "attention", "seed", "steps", "best_val_loss", "final_val_loss",
    "best_val_bits_per_token", "best_val_accuracy", "final_val_accuracy", "final_val_accuracy_by_bucket",
    "final_test_accuracy", "final_test_accuracy_by_bucket", "test_accuracy_at_best_val", "best_val_step", "final_train_loss", "train_tokens_per_sec",
    "ms_per_step_median", "ms_per_step_p90", "mfu",
    "params", "mixer_params", "kv_bytes_per_token", "kv_bytes_per_token_measured", "flops_per_token", "keys_attended",
    "peak_rss_bytes", "device_memory_peak_bytes", "wall_seconds", "device", "data_source", "vocab",
];

fn cell(v: Option<&Json>) -> String {
    match v {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// One row per run: the group label, the varying fields, every summary metric.
pub fn csv(runs: &[RunRecord], groups: &[Group]) -> String {
    let fields: Vec<&String> = groups.first().map(|g| g.fields.keys().collect()).unwrap_or_default();
    let mut out = String::from("config");
    for f in &fields {
        out.push(',');
        out.push_str(&csv_quote(f));
    }
    for c in COLUMNS {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    for g in groups {
        for &i in &g.runs {
            let mut row = vec![csv_quote(&g.label)];
            row.extend(fields.iter().map(|f| csv_quote(g.fields.get(*f).map(String::as_str).unwrap_or(""))));
            row.extend(COLUMNS.iter().map(|c| csv_quote(&cell(runs[i].summary.get(*c)))));
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

/// `{"runs": [...], "groups": [...]}`.
pub fn json(runs: &[RunRecord], groups: &[Group]) -> Json {
    let rows: Vec<Json> = groups
        .iter()
        .flat_map(|g| g.runs.iter().map(move |&i| json!({"config": g.label, "fields": g.fields, "summary": runs[i].summary})))
        .collect();
    let summary: Vec<Json> = groups
        .iter()
        .map(|g| json!({
            "config": g.label, "fields": g.fields, "seeds": g.runs.len(),
            "best_val_loss_mean": g.best_mean(), "best_val_loss_std": g.best_std(), "best_val_loss_ci95": ci95(&g.best_val),
            "kv_bytes_per_token": g.kv_bytes,
            "final_test_accuracy_mean": if g.accuracy.is_empty() { Json::Null } else { json!(g.accuracy_mean()) },
            "solved": g.solved(), "solved_of": g.accuracy.len(),
        }))
        .collect();
    json!({"runs": rows, "groups": summary})
}
