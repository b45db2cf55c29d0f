//! A report from a fixture run store: grouping by the varying field, mean ± std over seeds,
//! CSV/JSON rows for every run, both plots written, human notes kept.

use std::path::Path;

fn fixture_run(store: &Path, id: &str, kind: &str, kv: usize, seed: u64, best: f64) {
    let dir = store.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let attention = if kind == "gqa" { "{ kind = \"gqa\", kv_heads = 2 }".to_string() } else { format!("{{ kind = \"{kind}\" }}") };
    std::fs::write(
        dir.join("config.toml"),
        format!("name = \"fx\"\n[model]\nd_model = 64\nattention = {attention}\n[train]\nseed = {seed}\nsteps = 100\n"),
    )
    .unwrap();
    let label = if kind == "gqa" { "gqa-2" } else { kind };
    let summary = serde_json::json!({
        "run_id": id, "experiment": "fx", "status": "finished", "attention": label, "steps": 100, "seed": seed,
        "best_val_loss": best, "final_val_loss": best + 0.01, "best_val_bits_per_token": best / std::f64::consts::LN_2,
        "final_train_loss": best - 0.1, "train_tokens_per_sec": 1000.0, "ms_per_step_median": 10.0, "ms_per_step_p90": 12.0,
        "params": 1000, "mixer_params": 100, "kv_bytes_per_token": kv, "kv_bytes_per_token_measured": kv,
        "flops_per_token": 2000, "peak_rss_bytes": 1048576, "wall_seconds": 5.0, "device": "cpu",
        "data_source": "builtin", "vocab": 40
    });
    std::fs::write(dir.join("summary.json"), serde_json::to_string(&summary).unwrap()).unwrap();
    let metrics: String = (1..=4)
        .map(|i| format!("{{\"kind\":\"eval\",\"step\":{},\"val_loss\":{},\"train_loss\":1.0}}\n", i * 25, best + 1.0 / i as f64))
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
}

#[test]
fn report_groups_seeds_and_writes_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    for (i, best) in [2.0, 2.2, 2.1].iter().enumerate() {
        fixture_run(&store, &format!("mha{i}"), "mha", 4096, i as u64, *best);
        fixture_run(&store, &format!("gqa{i}"), "gqa", 2048, i as u64, best + 0.5);
    }
    // An unfinished run (no summary) is ignored.
    std::fs::create_dir_all(store.join("partial")).unwrap();
    let out = tmp.path().join("report");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.md"), "## Reading\n\nHand-written notes survive.").unwrap();

    let groups = attnlab_report::write_report(&store, &out, None).unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].label, "mha");
    assert_eq!(groups[0].runs.len(), 3);
    assert!((groups[0].best_mean() - 2.1).abs() < 1e-9);
    assert!((groups[0].best_std() - 0.1).abs() < 1e-9);
    assert_eq!(groups[0].curve.len(), 4);

    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| mha | 3 |"), "{md}");
    // mean 2.1, s = 0.1, n = 3: t(0.975, 2) = 4.302653 (tables) · 0.1 / √3 = 0.2484.
    assert!(md.contains("2.1000 ± 0.2484"), "{md}");
    assert!(md.contains("| gqa-2 | 3 |") && md.contains("0.500×") && md.contains("+0.5000"), "{md}");
    assert!(md.contains("worse than mha beyond seed noise"), "{md}");
    assert!(md.contains("Hand-written notes survive."));

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(csv.lines().next().unwrap().starts_with("config,model.attention,run_id"), "{csv}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 6);
    for svg in ["loss.svg", "pareto.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("gqa-2") && text.contains("mha"), "{svg}");
    }
    let pareto = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(pareto.contains("KV-cache bytes/token (log)"));
}

/// Runs that differ by `model.pattern` (and one plain `model.attention` run) form one mixer
/// axis grouped and labelled by the summary's mixer label, not one axis per field.
#[test]
fn hybrid_schedules_are_grouped_by_their_mixer_label() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    let write = |id: &str, model: &str, label: &str, seed: u64, best: f64| {
        fixture_run(&store, id, "mha", 4096, seed, best);
        let dir = store.join(id);
        std::fs::write(dir.join("config.toml"), format!("name = \"fx\"\n[model]\nd_model = 64\n{model}\n[train]\nseed = {seed}\nsteps = 100\n")).unwrap();
        let mut summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        summary["attention"] = label.into();
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    };
    for seed in 0..2 {
        write(&format!("h31-{seed}"), "pattern = [{kind = \"kda\"}, {kind = \"kda\"}, {kind = \"kda\"}, {kind = \"mla\", rope = false}]", "kda×3+mla-nope", seed, 2.0);
        write(&format!("h11-{seed}"), "pattern = [{kind = \"kda\"}, {kind = \"mla\", rope = false}]", "kda+mla-nope", seed, 2.1);
        write(&format!("k27-{seed}"), "pattern = [{kind = \"kda\"}, {kind = \"kda\"}, {kind = \"kda\"}, {kind = \"mla\", rope = false}]\noverrides = { 26 = {kind = \"mla\", rope = false} }", "kda×3+mla-nope,L26=mla-nope", seed, 2.2);
        write(&format!("mla-{seed}"), "attention = {kind = \"mla\"}", "mla", seed, 2.3);
    }
    let out = tmp.path().join("report");
    let groups = attnlab_report::write_report(&store, &out, None).unwrap();
    let mut labels: Vec<&str> = groups.iter().map(|g| g.label.as_str()).collect();
    labels.sort();
    assert_eq!(labels, ["kda+mla-nope", "kda×3+mla-nope", "kda×3+mla-nope,L26=mla-nope", "mla"]);
    for g in &groups {
        assert_eq!(g.runs.len(), 2, "{}", g.label);
        assert_eq!(g.fields.keys().collect::<Vec<_>>(), ["model.attention"], "{}", g.label);
    }
}

#[test]
fn task_runs_get_an_accuracy_column_and_plot_and_old_runs_get_mfu_from_a_given_peak() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    for (i, (kind, d_model, acc)) in [("mha", 32, 0.5), ("mha", 64, 0.99), ("mqa", 32, 0.4), ("mqa", 64, 0.9)].iter().enumerate() {
        let id = format!("r{i}");
        fixture_run(&store, &id, kind, 1024, 0, 1.0);
        let dir = store.join(&id);
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap().replace("d_model = 64", &format!("d_model = {d_model}"));
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        s["final_val_accuracy"] = serde_json::json!(acc);
        s["final_val_accuracy_by_bucket"] = serde_json::json!([acc, acc / 2.0]);
        std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
    }
    let out = tmp.path().join("report");
    attnlab_report::write_report(&store, &out, Some(1e9)).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("test accuracy") && md.contains("99.0%") && md.contains("40.0%"), "{md}");
    // 3 · 2000 FLOPs/token · 1000 tokens/s / 1 GFLOP/s = 0.6%.
    assert!(md.contains("| 0.6% |") && md.contains("--peak-gflops 1.0"), "{md}");
    let svg = std::fs::read_to_string(out.join("accuracy_vs_d_model.svg")).unwrap();
    assert!(svg.contains("mha") && svg.contains("mqa"), "{svg}");
    assert!(md.contains("accuracy_vs_d_model.svg"));
    assert!(md.contains("## Test accuracy by config") && md.contains("| mha | 50.0% | 99.0% |"), "{md}");
    assert!(md.contains("## Needle accuracy by depth") && md.contains("depth 0.50–1.00") && md.contains("| 99.0% | 49.5% |"), "{md}");
}

/// Hand values: 0/5 → [0, z²/(n+z²)] = [0, 0.4345]; 5/5 → [0.5655, 1]; 3/10 → [0.1078, 0.6032].
/// Planted: the normal approximation p ± z√(p(1−p)/n) gives [0, 0] at 0/5 and fails.
#[test]
fn wilson_interval_matches_hand_values() {
    use attnlab_report::stats::wilson;
    for ((k, n), (lo, hi)) in [((0, 5), (0.0, 0.4345)), ((5, 5), (0.5655, 1.0)), ((3, 10), (0.1078, 0.6032))] {
        let (l, h) = wilson(k, n);
        assert!((l - lo).abs() < 1e-3 && (h - hi).abs() < 1e-3, "{k}/{n}: [{l}, {h}]");
    }
}

/// New stores: the report reads `final_test_accuracy` (not the validation accuracy) and counts
/// solved runs, a diverged run as unsolved. Planted: reading `final_val_accuracy` shows 10.0%
/// and fails; leaving diverged runs out of the count shows 2/3 and fails.
#[test]
fn task_reports_use_test_accuracy_and_count_solved_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    for (i, test) in [0.95, 0.97, 0.2].iter().enumerate() {
        let id = format!("r{i}");
        fixture_run(&store, &id, "mha", 1024, i as u64, 1.0);
        let dir = store.join(&id);
        let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        s["final_val_accuracy"] = serde_json::json!(0.1);
        s["final_test_accuracy"] = serde_json::json!(test);
        s["test_accuracy_at_best_val"] = serde_json::json!(0.5);
        std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
    }
    fixture_run(&store, "r3", "mha", 1024, 3, 1.0);
    let dir = store.join("r3");
    let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    s["status"] = serde_json::json!("diverged");
    s["diverged_at_step"] = serde_json::json!(7);
    s["final_val_accuracy"] = serde_json::json!(0.99);
    s["final_test_accuracy"] = serde_json::Value::Null;
    std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
    let out = tmp.path().join("report");
    attnlab_report::write_report(&store, &out, None).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    // s = 0.4389 over 3 seeds: t(0.975, 2) · s / √3 = 109.0 points (a t-interval is not
    // clipped to [0, 100]%; the Wilson interval of the solved count is the bounded one).
    assert!(md.contains("| 70.7 ± 109.0% | 50.0 ± 0.0% | 2/4 ["), "{md}");
    assert!(!md.contains("99.0%"), "a diverged run's validation accuracy is no test score: {md}");
    assert!(!md.contains("10.0%"), "{md}");
}

/// With `train.lr` swept, each config is read at the rate with the best *validation* accuracy.
/// Here mha's best validation rate (0.001) is not its best test rate (0.003): the table must
/// pick 0.001. Planted: selecting on test accuracy picks 0.003 and fails.
#[test]
fn a_swept_learning_rate_is_chosen_on_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    let cases = [(0.001, 0.9, 0.5), (0.003, 0.6, 0.95)];
    for (lr, val, test) in cases {
        for seed in 0..2u64 {
            let id = format!("r{lr}-{seed}");
            fixture_run(&store, &id, "mha", 1024, seed, 1.0);
            let dir = store.join(&id);
            let config = std::fs::read_to_string(dir.join("config.toml")).unwrap().replace("steps = 100", &format!("steps = 100\nlr = {lr}"));
            std::fs::write(dir.join("config.toml"), config).unwrap();
            let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
            s["final_val_accuracy"] = serde_json::json!(val);
            s["final_test_accuracy"] = serde_json::json!(test);
            std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
        }
    }
    let out = tmp.path().join("report");
    attnlab_report::write_report(&store, &out, None).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("## Each config at its best learning rate"), "{md}");
    assert!(md.contains("| mha | 0.001 | 90.0% | 50.0 ± 0.0% | 0/2 ["), "{md}");
    assert!(md.contains("0.001: 0/2, 0.003: 2/2"), "{md}");
}

/// A store that holds one run twice (under an id from before the run id changed, and under
/// its new id) counts it once: the newest summary is kept, the other listed as left out.
/// Planted, and seen to fail: `drop_duplicates` returning every run (two seeds counted).
#[test]
fn a_run_stored_twice_under_two_ids_is_counted_once() {
    let store = tempfile::tempdir().unwrap();
    let config = "name = \"dup\"\n[model]\nd_model = 32\n[model.attention]\nkind = \"mha\"\n[train]\nseed = 0\n";
    for (id, checkpoint_every, loss) in [("aaaaaaaaaa", 0, 2.0), ("bbbbbbbbbb", 4, 1.5)] {
        let dir = store.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), config.replace("seed = 0", &format!("seed = 0\ncheckpoint_every = {checkpoint_every}"))).unwrap();
        let summary = serde_json::json!({"attention": "mha", "status": "finished", "best_val_loss": loss, "final_val_loss": loss, "data_source": "builtin"});
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (runs, skipped) = attnlab_report::load_store(store.path()).unwrap();
    assert_eq!(runs.len(), 1, "{skipped:?}");
    assert_eq!(runs[0].run_id, "bbbbbbbbbb", "the newest is kept");
    assert!(skipped.len() == 1 && skipped[0].contains("aaaaaaaaaa") && skipped[0].contains("counted twice"), "{skipped:?}");
    // Runs whose saved tokenizers differ (a rewritten data.tokenizer_file) are two runs.
    std::fs::write(store.path().join("aaaaaaaaaa").join("tokenizer.json"), r#"{"kind":"byte"}"#).unwrap();
    let (runs, skipped) = attnlab_report::load_store(store.path()).unwrap();
    assert_eq!(runs.len(), 2, "{skipped:?}");
}

/// Student-t quantiles against printed tables; Welch's interval against a hand computation;
/// one seed gives no interval (and no "± 0" claim).
/// Planted, and seen to fail: the normal quantile 1.96 for every n; `ci95` for one seed as 0.
#[test]
fn t_intervals_match_tables_and_one_seed_has_none() {
    use attnlab_report::stats::{ci95, t_quantile, welch95};
    for (df, want) in [(1.0, 12.7062), (2.0, 4.3027), (4.0, 2.7764), (30.0, 2.0423)] {
        assert!((t_quantile(df, 0.975) - want).abs() < 1e-3, "df {df}: {}", t_quantile(df, 0.975));
    }
    assert!((ci95(&[2.0, 2.2, 2.1]).unwrap() - 0.24841).abs() < 1e-4);
    assert_eq!(ci95(&[2.0]), None);
    // Equal spreads s = 0.1, n = 3 each: se = 0.08165, Welch df = 4, t = 2.7764 → 0.2267.
    let (d, h) = welch95(&[2.5, 2.7, 2.6], &[2.0, 2.2, 2.1]).unwrap();
    assert!((d - 0.5).abs() < 1e-12 && (h - 0.22669).abs() < 1e-4, "{d} {h}");
    assert_eq!(welch95(&[1.0], &[2.0, 3.0]), None);
    // No spread on either side (seeds with identical accuracies): no interval, not a point
    // that "excludes 0" (planted: `Some((d, 0.0))`, seen to fail).
    assert_eq!(welch95(&[0.5, 0.5], &[1.0, 1.0]), None);

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("fx");
    fixture_run(&store, "mha0", "mha", 4096, 0, 2.0);
    fixture_run(&store, "gqa0", "gqa", 2048, 0, 2.5);
    let out = tmp.path().join("report");
    attnlab_report::write_report(&store, &out, None).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("2.0000 (1 seed)") && md.contains("one seed, no interval") && !md.contains("± 0.0000"), "{md}");
}

/// Two stores side by side: each config once per store (labelled store=…), the noise check
/// comparing them, run ids prefixed with their store.
/// Planted, and seen to fail: the `store` field not added (the two stores' mha runs pooled
/// into one group of 4 seeds).
#[test]
fn two_stores_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("old").join("fx"), tmp.path().join("new").join("fx2"));
    for (i, best) in [2.0, 2.2].iter().enumerate() {
        fixture_run(&a, &format!("a{i}"), "mha", 4096, i as u64, *best);
        fixture_run(&b, &format!("b{i}"), "mha", 4096, i as u64, best + 0.01);
    }
    let out = tmp.path().join("cmp");
    let groups = attnlab_report::write_report_stores(&[a, b], &out, None).unwrap();
    assert_eq!(groups.len(), 2, "{:?}", groups.iter().map(|g| &g.label).collect::<Vec<_>>());
    assert!(groups.iter().all(|g| g.runs.len() == 2));
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("mha store=fx ") || md.contains("mha store=fx |"), "{md}");
    assert!(md.contains("mha store=fx2") && md.contains("within seed noise") && md.contains("fx2/b1"), "{md}");
}

/// An extension (`train --extend`, same config as a from-scratch run), a run with dropout (a
/// field its config omits at 0) and a run whose best val loss is null each stay apart from the
/// plain runs, and nothing panics on the null.
/// Two extensions of different runs from the same step (two seeds of one extended point) pool
/// into one group, labelled `extended_from_step=…`; an extension of an extension stays apart
/// from a single extension at the same step (`20+30` against `30`), and no label shows an absent
/// key as `=–`.
/// Planted, and seen to fail: `extended_from` not read into the config (the extension
/// deduplicated away as a copy of the from-scratch run); no default for `model.positions` (the
/// plain runs labelled `positions=–`); the extensions grouped by their parent's id (two
/// groups); labels keeping an absent key as `=–`; the restart chain not followed (the extension
/// of an extension dropped as a duplicate).
#[test]
fn extensions_and_dropout_runs_are_not_pooled_and_nan_losses_do_not_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("fx");
    fixture_run(&store, "plain", "mha", 4096, 0, 2.0);
    // An extension's fixture: a run whose summary names its parent and restart step.
    let extension = |id: &str, seed: u64, best: f64, parent: &str, step: u64| {
        fixture_run(&store, id, "mha", 4096, seed, best);
        let path = store.join(id).join("summary.json");
        let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        s["extended_from"] = serde_json::json!(parent);
        s["extended_from_step"] = serde_json::json!(step);
        std::fs::write(&path, s.to_string()).unwrap();
    };
    extension("ext", 0, 1.9, "plain", 20);
    extension("ext2", 1, 1.8, "plain_seed_1", 20);
    // Same config and seed, both restarted at step 30: one extends the extension `ext` (chain
    // 20+30), one extends a run trained from scratch (30). Two runs, not a duplicate.
    extension("ext3", 0, 1.7, "ext", 30);
    extension("ext4", 0, 1.7, "plain", 30);
    fixture_run(&store, "drop", "mha", 4096, 0, 2.1);
    let config = std::fs::read_to_string(store.join("drop/config.toml")).unwrap().replace("[model]\n", "[model]\ndropout = 0.1\n");
    std::fs::write(store.join("drop/config.toml"), config).unwrap();
    fixture_run(&store, "nan", "mha", 4096, 1, 2.0);
    let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(store.join("nan/summary.json")).unwrap()).unwrap();
    s["best_val_loss"] = serde_json::Value::Null;
    std::fs::write(store.join("nan/summary.json"), s.to_string()).unwrap();
    let (runs, skipped) = attnlab_report::load_store(&store).unwrap();
    assert_eq!(runs.len(), 7, "{skipped:?}");
    let groups = attnlab_report::write_report(&store, &tmp.path().join("out"), None).unwrap();
    let labels: Vec<&String> = groups.iter().map(|g| &g.label).collect();
    assert_eq!(groups.len(), 5, "{labels:?}");
    assert!(labels.iter().any(|l| l.contains("extended_from_step=20+30")), "{labels:?}");
    let extended = groups.iter().find(|g| g.fields.get("extended_from_step").map(String::as_str) == Some("20")).unwrap_or_else(|| panic!("{labels:?}"));
    assert_eq!(extended.runs.len(), 2, "{labels:?}");
    assert!(labels.iter().all(|l| !l.contains("=–")), "{labels:?}");
    // Learned positions (omitted from a config at "none"): apart, and the plain runs' label
    // names the default rather than "–".
    fixture_run(&store, "pos", "mha", 4096, 0, 2.2);
    let config = std::fs::read_to_string(store.join("pos/config.toml")).unwrap().replace("[model]\n", "[model]\npositions = \"learned\"\n");
    std::fs::write(store.join("pos/config.toml"), config).unwrap();
    let groups = attnlab_report::write_report(&store, &tmp.path().join("out"), None).unwrap();
    let labels: Vec<&String> = groups.iter().map(|g| &g.label).collect();
    assert_eq!(groups.len(), 6, "{labels:?}");
    assert!(labels.iter().any(|l| l.contains("positions=\"learned\"")) && labels.iter().any(|l| l.contains("positions=\"none\"")), "{labels:?}");
}

/// Plots for a paper: a two-factor sweep (attention × learning rate) gets one loss panel per
/// learning rate with only the attention in the legend, the legend lies right of every panel,
/// the training loss is drawn (dashed) beside the validation points, the log axis of the
/// Pareto plot has 1-2-5 ticks, and a task's Pareto plot shows test accuracy. The PNG look at
/// print size was checked by eye (README: "Plots").
///
/// Planted and seen to fail: the legend inside the plot (plotters' series labels, upper
/// right); no facets (one panel, legend entries "mha lr=0.001"); the training curve left out;
/// plotters' own log ticks (powers of ten only); a task's Pareto plot on loss.
#[test]
fn plots_facet_a_second_factor_keep_legends_outside_and_show_training_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    for (kind, kv) in [("mha", 4096), ("gqa", 2048), ("mqa", 256)] {
        for lr in ["0.001", "0.003"] {
            for seed in 0..2u64 {
                let id = format!("{kind}-{lr}-{seed}");
                fixture_run(&store, &id, kind, kv, seed, 2.0 + seed as f64 * 0.1);
                let dir = store.join(&id);
                let config = std::fs::read_to_string(dir.join("config.toml")).unwrap().replace("steps = 100", &format!("steps = 100\nlr = {lr}"));
                std::fs::write(dir.join("config.toml"), config).unwrap();
                let train: String = (0..10).map(|i| format!("{{\"kind\":\"train\",\"step\":{},\"loss\":{}}}\n", 1 + 10 * i, 4.0 - 0.1 * i as f64)).collect();
                let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
                std::fs::write(dir.join("metrics.jsonl"), train + &metrics).unwrap();
            }
        }
    }
    let out = tmp.path().join("report");
    let groups = attnlab_report::write_report(&store, &out, None).unwrap();
    assert_eq!(groups.len(), 6);
    // The training curve is the mean over seeds at each logged step.
    assert_eq!(groups[0].train_curve.len(), 10);
    assert!((groups[0].train_curve[3].1 - 3.7).abs() < 1e-9, "{:?}", groups[0].train_curve);
    let layout = attnlab_report::plots::layout(&groups);
    assert_eq!(layout.line_field.as_deref(), Some("model.attention"));
    assert_eq!(layout.facet_fields, vec!["train.lr".to_string()]);

    let loss = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    // Two panels stacked (470 × 320 px each) and a 190 px legend column.
    assert!(loss.contains("width=\"660\" height=\"640\""), "{}", &loss[..200]);
    let texts = svg_texts(&loss);
    assert!(texts.iter().any(|(_, t)| t == "lr=0.001") && texts.iter().any(|(_, t)| t == "lr=0.003"), "panel titles: {texts:?}");
    for name in ["mha", "gqa-2", "mqa"] {
        let (x, _) = texts.iter().find(|(_, t)| t == name).unwrap_or_else(|| panic!("legend entry {name}: {texts:?}"));
        assert!(*x >= 470.0, "legend entry {name} at x = {x}, inside the plots");
    }
    assert!(!texts.iter().any(|(_, t)| t.contains("lr=0.001 ") || t.starts_with("mha lr")), "labels name only what differs: {texts:?}");
    // The training curves are dashed: many short segments, one polyline each.
    let without_train = {
        let mut g = groups.clone();
        g.iter_mut().for_each(|g| g.train_curve.clear());
        let p = tmp.path().join("no_train.svg");
        attnlab_report::plots::loss_svg(&g, &p).unwrap();
        std::fs::read_to_string(p).unwrap().matches("<polyline").count()
    };
    assert!(loss.matches("<polyline").count() > without_train + 6 * 10, "training curves drawn");

    let pareto = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    let ticks: Vec<String> = svg_texts(&pareto).into_iter().map(|(_, t)| t).collect();
    for tick in ["200", "500", "1000", "2000", "5000"] {
        assert!(ticks.iter().any(|t| t == tick), "tick {tick}: {ticks:?}");
    }
    assert!(pareto.contains("best val loss (nats/token)"));

    // A task: the Pareto plot shows accuracy.
    for id in ["mha-0.001-0", "mqa-0.001-0"] {
        let path = store.join(id).join("summary.json");
        let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        s["final_test_accuracy"] = serde_json::json!(0.5);
        std::fs::write(path, s.to_string()).unwrap();
    }
    attnlab_report::write_report(&store, &out, None).unwrap();
    let pareto = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(pareto.contains("test accuracy (%)") && !pareto.contains("best val loss"), "a task's Pareto plot is on accuracy");
}

/// (x, text) of every `<text>` element of an SVG written by plotters.
fn svg_texts(svg: &str) -> Vec<(f64, String)> {
    svg.split("<text").skip(1)
        .filter_map(|t| {
            let x = t.split("x=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let body = t.split('>').nth(1)?.split('<').next()?.trim().to_string();
            Some((x, body))
        })
        .collect()
}

/// The keys-attended column appears only when some config attends to fewer than all keys, with
/// the fraction in percent and "—" where a run carries none (a recurrent state); the fill hook
/// sees every run's folder. Planted and seen to fail: the column shown for dense-only stores.
#[test]
fn keys_attended_column_shows_for_sparse_configs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    for i in 0..2 {
        fixture_run(&store, &format!("mha{i}"), "mha", 4096, i as u64, 2.0 + i as f64 / 10.0);
        fixture_run(&store, &format!("gqa{i}"), "gqa", 2048, i as u64, 2.1 + i as f64 / 10.0);
    }
    let fill = |value: Option<f64>| move |dir: &Path, run: &mut attnlab_report::RunRecord| {
        assert!(dir.join("summary.json").exists());
        let keys = if run.run_id.starts_with("gqa") { value } else { Some(1.0) };
        run.summary.as_object_mut().unwrap().insert("keys_attended".into(), serde_json::json!(keys));
    };
    let out = tmp.path().join("dense");
    attnlab_report::write_report_stores_with(&[store.clone()], &out, None, &fill(Some(1.0))).unwrap();
    assert!(!std::fs::read_to_string(out.join("README.md")).unwrap().contains("keys attended"));
    let out = tmp.path().join("sparse");
    attnlab_report::write_report_stores_with(&[store.clone()], &out, None, &fill(Some(0.234))).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| keys attended⁴") && md.contains("| 23.4% |") && md.contains("| 100.0% |"), "{md}");
    let out = tmp.path().join("none");
    attnlab_report::write_report_stores_with(&[store], &out, None, &|_, run: &mut attnlab_report::RunRecord| {
        let keys = if run.run_id.starts_with("gqa") { Some(0.5) } else { None };
        run.summary.as_object_mut().unwrap().insert("keys_attended".into(), serde_json::json!(keys));
    })
    .unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| 50.0% |") && md.contains("× | — |"), "{md}");
}

/// Dense `attnlab eval` records become the loss-by-position table (buckets 0, 1, 2–3, 4–7 of an
/// 8-token window, unscored NaN positions left out of a bucket's mean, mean ± std over seeds,
/// only each run's latest dense record) and its plot; a Star record is not a dense one.
/// Planted and seen to fail: buckets of equal width; NaN positions counted as 0; the first
/// record kept instead of the latest; Star records read as dense.
#[test]
fn dense_evaluations_give_a_loss_by_position_table() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs").join("fx");
    let record = |losses: [f64; 8], settings: &str| {
        let list: Vec<String> = losses.iter().map(|v| if v.is_nan() { "null".to_string() } else { v.to_string() }).collect();
        format!("{{\"run\":\"x\",\"attention\":\"mha\",\"split\":\"val\",\"block\":8,\"windows\":4,\"loss\":1.0,\"accuracy\":null,\"loss_by_position\":[{}],\"settings\":\"{settings}\"}}\n", list.join(","))
    };
    let nan = f64::NAN;
    for (seed, (older, latest)) in [
        ([9.0; 8], [4.0, 3.0, 2.0, nan, 1.0, 1.0, 1.0, 1.0]),
        ([9.0; 8], [4.0, 3.0, 2.5, 2.5, 1.5, 1.5, 1.5, 1.5]),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("mha{seed}");
        fixture_run(&store, &id, "mha", 4096, seed as u64, 2.0);
        let star = record([7.0; 8], "star block=4 anchor=4 hosts=2 query=2");
        std::fs::write(store.join(&id).join("evals.jsonl"), format!("{}{}{star}", record(older, "dense"), record(latest, "dense"))).unwrap();
    }
    let out = tmp.path().join("report");
    attnlab_report::write_report(&store, &out, None).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| config | split @ window | seeds | 0 | 1 | 2–3 | 4–7 |"), "{md}");
    // Bucket 2–3: seed 0 has 2.0 (the NaN left out), seed 1 2.5 → mean 2.25, std 0.3536.
    assert!(md.contains("| mha | val @ 8 | 2 | 4.0000 ± 0.0000 | 3.0000 ± 0.0000 | 2.2500 ± 0.3536 | 1.2500 ± 0.3536 |"), "{md}");
    assert!(md.contains("![loss by position](position_loss.svg)"), "{md}");
    let svg = std::fs::read_to_string(out.join("position_loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("mha"), "{svg}");
}
