//! `experiments/mad.toml`: the baseline + one-at-a-time sweep expands to exactly MAD's 66
//! settings (11, 11, 14, 13, 11, 6 per task), each crossed with the 6 optimiser points, the 3
//! seeds and the kinds at their iso-state head counts; one run of every setting is valid and
//! prepares (steps derived from the epochs, the autoencoder head on compression only).
//!
//! Planted, and seen to fail: the baseline left out of its own settings (65 settings); a
//! one-at-a-time change applied on top of the previous change instead of the baseline (the
//! per-setting check of `data.train_samples`).

use std::collections::{BTreeMap, BTreeSet};

use attnlab_exp::sweep::{expand, inline, load_point};

fn mad() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/mad.toml")).unwrap()
}

#[test]
fn mad_toml_expands_to_the_66_settings() {
    let text = mad();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let points = expand(value.get("sweep").and_then(|s| s.as_table()), "mad.toml").unwrap();
    let kinds = 5;
    assert_eq!(points.len(), 66 * 6 * 3 * kinds);
    // A setting: the task and data paths of a point.
    let setting = |p: &attnlab_exp::sweep::SweepPoint| -> Vec<String> { p.sets.iter().filter(|(k, _)| k.starts_with("data.") || k == "model.head").map(|(k, v)| format!("{k}={}", inline(v))).collect() };
    let settings: BTreeSet<Vec<String>> = points.iter().map(setting).collect();
    assert_eq!(settings.len(), 66);
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for s in &settings {
        let kind = s[0].split("kind = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
        *per_task.entry(kind).or_default() += 1;
        // One change at a time: at most one path differs from its baseline value.
        let samples = s.iter().find(|x| x.starts_with("data.train_samples=")).unwrap();
        let changes = s.iter().filter(|x| x.starts_with("data.task.")).count() + usize::from(!samples.ends_with("=12800") && !samples.ends_with("=256"));
        assert!(changes <= 1, "{s:?}");
    }
    let want: BTreeMap<String, usize> = [("mad_recall", 11), ("mad_fuzzy_recall", 11), ("mad_noisy_recall", 14), ("mad_selective_copy", 13), ("mad_compression", 11), ("mad_memorization", 6)].into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    assert_eq!(per_task, want);
    // Each kind at its iso-state heads: 16 for attention, 8 for the fixed-state kinds.
    for p in &points {
        let get = |path: &str| p.sets.iter().find(|(k, _)| k == path).map(|(_, v)| inline(v)).unwrap();
        let linear_family = ["linear", "gated_deltanet", "kda"].iter().any(|k| get("model.attention").contains(&format!("\"{k}\"")));
        assert_eq!(get("model.heads"), if linear_family { "8" } else { "16" }, "{}", p.describe());
    }
}

#[test]
fn one_run_of_every_mad_setting_is_valid() {
    let text = mad();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let points = expand(value.get("sweep").and_then(|s| s.as_table()), "mad.toml").unwrap();
    let mut seen = BTreeSet::new();
    for p in &points {
        let key: Vec<String> = p.sets.iter().filter(|(k, _)| k.starts_with("data.")).map(|(k, v)| format!("{k}={}", inline(v))).collect();
        if !seen.insert(key) {
            continue;
        }
        let exp = load_point(&text, "mad.toml", &[], p.index).unwrap_or_else(|e| panic!("{}: {e}", p.describe()));
        let run = &exp.runs[0];
        let samples = run.spec.data.train_samples.unwrap();
        assert_eq!(run.spec.train.steps, 200 * samples.div_ceil(128), "{}", p.describe());
        let compression = matches!(run.spec.data.task, Some(attnlab_data::TaskConfig::MadCompression(_)));
        assert_eq!(run.spec.model.head == attnlab_model::Head::Autoencoder, compression);
    }
    assert_eq!(seen.len(), 66);
}

/// The one-at-a-time changes are MAD's grid (MAD.md §2.1), value by value.
/// Planted, and seen to fail: a wrong grid value in mad.toml (noisy recall's vocab 144 → 128).
#[test]
fn mad_toml_changes_are_mads_grid() {
    let text = mad();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let points = expand(value.get("sweep").and_then(|s| s.as_table()), "mad.toml").unwrap();
    let mut changes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &points {
        let get = |path: &str| p.sets.iter().find(|(k, _)| k == path).map(|(_, v)| inline(v));
        let task = get("data.task").unwrap();
        let kind = task.split("kind = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
        let entry = changes.entry(kind.clone()).or_default();
        let samples = get("data.train_samples").unwrap();
        if samples != "12800" && kind != "mad_memorization" {
            entry.insert(format!("train_samples={samples}"));
        }
        for (k, v) in p.sets.iter().filter(|(k, _)| k.starts_with("data.task.")) {
            entry.insert(format!("{}={}", &k["data.task.".len()..], inline(v)));
        }
    }
    let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    let samples = ["train_samples=6400", "train_samples=3200", "train_samples=1600", "train_samples=800"];
    let recall: Vec<&str> = ["vocab=32", "vocab=64", "vocab=128", "seq_len=256", "seq_len=512", "seq_len=1024"].into_iter().chain(samples).collect();
    assert_eq!(changes["mad_recall"], list(&recall));
    assert_eq!(changes["mad_fuzzy_recall"], list(&recall));
    let noisy: Vec<&str> = ["vocab=48", "vocab=80", "vocab=144", "seq_len=256", "seq_len=512", "seq_len=1024", "frac_noise=0.4", "frac_noise=0.6", "frac_noise=0.8"].into_iter().chain(samples).collect();
    assert_eq!(changes["mad_noisy_recall"], list(&noisy));
    let copy: Vec<&str> = ["vocab=32", "vocab=64", "vocab=128", "seq_len=512", "seq_len=1024", "num_tokens=32", "num_tokens=64", "num_tokens=96"].into_iter().chain(samples).collect();
    assert_eq!(changes["mad_selective_copy"], list(&copy));
    let compression: Vec<&str> = ["vocab=32", "vocab=64", "vocab=128", "seq_len=64", "seq_len=128", "seq_len=256"].into_iter().chain(samples).collect();
    assert_eq!(changes["mad_compression"], list(&compression));
    assert_eq!(changes["mad_memorization"], list(&["vocab=512", "vocab=1024", "vocab=2048", "vocab=4096", "vocab=8192"]));
}

/// A run's saved config (derived `train.steps` beside `train.epochs`) reads back as the same
/// spec, so `export` and `--extend` work on epoch runs.
/// Planted, and seen to fail: refusing any `train.steps` next to `train.epochs`.
#[test]
fn a_saved_epoch_config_reads_back() {
    let exp = load_point(&mad(), "mad.toml", &[], 0).unwrap();
    let spec = &exp.runs[0].spec;
    let saved = toml::to_string(spec).unwrap();
    let back = attnlab_exp::ExperimentSpec::from_toml_str(&saved, "config.toml", &[]).unwrap();
    assert_eq!(&back, spec);
}
