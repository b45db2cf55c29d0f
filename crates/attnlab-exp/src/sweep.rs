//! Sweeps: the `[sweep]` table of an experiment file expands into a run list.
//!
//! ```toml
//! [sweep]
//! seeds = [0, 1, 2]                                    # → train.seed
//! "model.heads" = [4, 8]                               # any dotted config path → list
//! "model.attention" = [{kind = "mha"}, {kind = "gqa", kv_heads = 2}]
//! [[sweep.include]]                                    # extra hand-picked points
//! "model.attention" = {kind = "mla", kv_latent = 32}
//! [[sweep.exclude]]                                    # drop points matching all of these
//! "model.heads" = 4
//! "model.attention" = {kind = "gqa", kv_heads = 2}
//! ```
//! The run list is the cartesian product of the lists (in file order, seeds innermost), minus
//! excluded points (rules may name `train.seed`; every path they name must be swept), plus
//! included points (each crossed with the seeds).
//!
//! Not every study is a product. `[[sweep.baseline]]` entries give settings as a baseline and
//! its changes one factor at a time (MAD's difficulty grid); each setting is then crossed with
//! the lists and the seeds:
//! ```toml
//! [[sweep.baseline]]
//! "data.task" = {kind = "mad_recall", vocab = 16, seq_len = 128}
//! "data.train_samples" = 12800
//! [sweep.baseline.one_at_a_time]          # → 1 + 3 + 2 settings
//! "data.task.vocab" = [32, 64, 128]
//! "data.train_samples" = [6400, 800]
//! ```

use toml::{Table, Value};

use crate::error::SpecError;
use crate::overrides::{apply_set, get_path, parse_toml, set_path};
use crate::spec::{ExperimentSpec, PreparedRun};

/// One point of a sweep: the dotted paths it sets.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub index: usize,
    pub sets: Vec<(String, Value)>,
}

impl SweepPoint {
    /// `path=value, ...` for tables and errors.
    pub fn describe(&self) -> String {
        self.sets.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect::<Vec<_>>().join(", ")
    }

    /// [`Self::describe`] with a swept layer schedule (`model.pattern`, `model.overrides`)
    /// shown as the run's mixer label (`kda×3+mla-nope`) instead of its tables.
    pub fn describe_mixers(&self, mixer_label: &str) -> String {
        let schedule = |k: &str| k == "model.pattern" || k.starts_with("model.overrides");
        let mut parts: Vec<String> = self.sets.iter().filter(|(k, _)| !schedule(k)).map(|(k, v)| format!("{k}={}", inline(v))).collect();
        if self.sets.iter().any(|(k, _)| schedule(k)) {
            parts.insert(0, format!("mixers={mixer_label}"));
        }
        parts.join(", ")
    }
}

/// A value as one line of TOML.
pub fn inline(v: &Value) -> String {
    match v {
        Value::Table(t) => {
            let fields: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {}", inline(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        other => other.to_string(),
    }
}

fn as_point(v: &Value, what: &str) -> Result<Vec<(String, Value)>, SpecError> {
    let t = v.as_table().ok_or_else(|| SpecError::new(format!("{what}: must be a table of dotted paths")))?;
    Ok(t.iter().map(|(k, v)| (if k == "seeds" { "train.seed".to_string() } else { k.clone() }, v.clone())).collect())
}

/// Expands the `[sweep]` table into points (no sweep = one point).
pub fn expand(sweep: Option<&Table>, source: &str) -> Result<Vec<SweepPoint>, SpecError> {
    let Some(sweep) = sweep else { return Ok(vec![SweepPoint { index: 0, sets: vec![] }]) };
    let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
    let mut seeds: Option<Vec<Value>> = None;
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let mut settings: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (key, value) in sweep {
        let list = |v: &Value| -> Result<Vec<Value>, SpecError> {
            match v.as_array() {
                Some(a) if !a.is_empty() => Ok(a.clone()),
                Some(_) => Err(SpecError::new(format!("{source}: sweep.\"{key}\" = []: an empty list gives no runs; give at least one value"))),
                None => Err(SpecError::new(format!("{source}: sweep.\"{key}\" = {}: must be a list of values", inline(v)))),
            }
        };
        match key.as_str() {
            "seeds" => seeds = Some(list(value)?),
            "include" => include = list(value)?,
            "exclude" => exclude = list(value)?,
            "baseline" => settings = baselines(&list(value)?, source)?,
            path => axes.push((path.to_string(), list(value)?)),
        }
    }
    // Paths the baselines set count as swept (an exclusion may name them).
    let settings_paths: Vec<String> = settings.iter().flatten().map(|(k, _)| k.clone()).collect();
    let mut points = settings;
    for (path, values) in &axes {
        points = points
            .into_iter()
            .flat_map(|p| values.iter().map(move |v| {
                let mut p = p.clone();
                p.push((path.clone(), v.clone()));
                p
            }))
            .collect();
    }
    let with_seeds = |points: Vec<Vec<(String, Value)>>| -> Vec<Vec<(String, Value)>> {
        match &seeds {
            None => points,
            Some(seeds) => points
                .into_iter()
                .flat_map(|p| seeds.iter().map(move |s| {
                    let mut p = p.clone();
                    p.push(("train.seed".into(), s.clone()));
                    p
                }))
                .collect(),
        }
    };
    let mut points = with_seeds(points);
    // Exclusions apply after the seeds, so a rule may name `train.seed`; every path a rule
    // names must be swept, or the rule could never match.
    let mut swept: Vec<&str> = axes.iter().map(|(k, _)| k.as_str()).chain(seeds.as_ref().map(|_| "train.seed")).collect();
    for setting in &settings_paths {
        if !swept.contains(&setting.as_str()) {
            swept.push(setting);
        }
    }
    let excluded: Vec<Vec<(String, Value)>> = exclude.iter().enumerate().map(|(i, e)| as_point(e, &format!("{source}: sweep.exclude[{i}]"))).collect::<Result<_, _>>()?;
    for (i, rule) in excluded.iter().enumerate() {
        if rule.is_empty() {
            return Err(SpecError::new(format!("{source}: sweep.exclude[{i}] is empty: a rule with no paths would drop every run; name the swept values to drop")));
        }
        if let Some((k, _)) = rule.iter().find(|(k, _)| !swept.contains(&k.as_str())) {
            return Err(SpecError::new(format!("{source}: sweep.exclude[{i}]: \"{k}\" is not swept (swept: {}), so this rule never matches", swept.join(", "))));
        }
    }
    let matches = |rule: &[(String, Value)], p: &[(String, Value)]| rule.iter().all(|(k, v)| p.iter().any(|(pk, pv)| pk == k && pv == v));
    for (i, rule) in excluded.iter().enumerate() {
        if !points.iter().any(|p| matches(rule, p)) {
            let values: Vec<String> = rule.iter().map(|(k, v)| format!("{k} = {}", inline(v))).collect();
            return Err(SpecError::new(format!(
                "{source}: sweep.exclude[{i}] ({}) matches no run: each value must equal a swept value exactly (same type: 4 is not 4.0)",
                values.join(", ")
            )));
        }
    }
    points.retain(|p| !excluded.iter().any(|e| matches(e, p)));
    let included: Vec<Vec<(String, Value)>> = include.iter().enumerate().map(|(i, inc)| as_point(inc, &format!("{source}: sweep.include[{i}]"))).collect::<Result<_, _>>()?;
    points.extend(with_seeds(included));
    Ok(points.into_iter().enumerate().map(|(index, sets)| SweepPoint { index, sets }).collect())
}

/// The settings of `[[sweep.baseline]]` entries: each baseline, then for each path of its
/// `one_at_a_time` table and each of its values, the baseline with that one path changed.
fn baselines(entries: &[Value], source: &str) -> Result<Vec<Vec<(String, Value)>>, SpecError> {
    let mut settings = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{source}: sweep.baseline[{i}]");
        let mut table = entry.as_table().cloned().ok_or_else(|| SpecError::new(format!("{at}: must be a table of dotted paths")))?;
        let changes = match table.remove("one_at_a_time") {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(other) => return Err(SpecError::new(format!("{at}.one_at_a_time = {}: must be a table of path = [values]", inline(&other)))),
        };
        let base = as_point(&Value::Table(table), &at)?;
        settings.push(base.clone());
        for (path, values) in &changes {
            let values = match values.as_array() {
                Some(a) if !a.is_empty() => a,
                _ => return Err(SpecError::new(format!("{at}.one_at_a_time.\"{path}\" = {}: must be a non-empty list of values", inline(values)))),
            };
            for v in values {
                let mut setting = base.clone();
                match setting.iter_mut().find(|(k, _)| k == path) {
                    Some(slot) => slot.1 = v.clone(),
                    None => setting.push((path.clone(), v.clone())),
                }
                settings.push(setting);
            }
        }
    }
    if settings.is_empty() {
        return Err(SpecError::new(format!("{source}: sweep.baseline = []: give at least one baseline")));
    }
    Ok(settings)
}

/// A whole experiment file: its base config and its expanded, validated runs.
#[derive(Debug)]
pub struct Experiment {
    pub name: String,
    pub points: Vec<SweepPoint>,
    pub runs: Vec<PreparedRun>,
}

/// Reads an experiment file, applies `--set` overrides to the base, expands the sweep and
/// validates and prepares **every** run before returning, so nothing starts on a bad point.
pub fn load_experiment(text: &str, source: &str, sets: &[String]) -> Result<Experiment, SpecError> {
    load(text, source, sets, None)
}

/// Only run `point` of the file's sweep (`train --point N`), with the `--set` overrides applied
/// over the point's own values: on one point an override of a swept field is unambiguous.
pub fn load_point(text: &str, source: &str, sets: &[String], point: usize) -> Result<Experiment, SpecError> {
    load(text, source, sets, Some(point))
}

fn load(text: &str, source: &str, sets: &[String], only: Option<usize>) -> Result<Experiment, SpecError> {
    let mut base = parse_toml(text).map_err(|e| SpecError::new(format!("{source}: {}", crate::spec::one_line(&e))))?;
    let sweep = match base.as_table_mut().and_then(|t| t.remove("sweep")) {
        None => None,
        Some(Value::Table(t)) => Some(t),
        Some(other) => return Err(SpecError::new(format!("{source}: sweep = {}: must be a table", inline(&other)))),
    };
    for set in sets {
        apply_set(&mut base, set).map_err(|e| SpecError::new(format!("{source}: --set {set}: {e}")))?;
    }
    let mut points = expand(sweep.as_ref(), source)?;
    if let Some(i) = only {
        let n = points.len();
        points = vec![points.into_iter().nth(i).ok_or_else(|| SpecError::new(format!("--point = {i}: {source} has {n} runs (0 to {})", n - 1)))?];
    } else {
        refuse_sets_on_swept_paths(&points, sets, source)?;
    }
    let mut runs = Vec::with_capacity(points.len());
    for point in &points {
        let mut value = base.clone();
        // A file without a sweep is named alone; a sweep's errors name the run and its point.
        let at = if point.sets.is_empty() { source.to_string() } else { format!("{source}: run {} ({})", point.index, point.describe()) };
        for (path, v) in &point.sets {
            if get_path(&value, path).is_none() && !known_path(path) {
                return Err(SpecError::new(format!("{at}: sweep path \"{path}\" is not a config field")));
            }
            set_path(&mut value, path, v.clone()).map_err(|e| SpecError::new(format!("{at}: {e}")))?;
        }
        if only.is_some() {
            for set in sets.iter().filter(|set| point.sets.iter().any(|(k, _)| overlaps(set.split_once('=').map_or(set.as_str(), |(k, _)| k).trim(), k))) {
                apply_set(&mut value, set).map_err(|e| SpecError::new(format!("{at}: --set {set}: {e}")))?;
            }
        }
        let spec = ExperimentSpec::from_value(value, &at)?;
        // Before the data is loaded or the task's evaluation sets are generated.
        crate::budget::check(&crate::budget::training(&spec), &at)?;
        let run = spec.prepare(&at)?;
        if let Some(j) = runs.iter().position(|r: &PreparedRun| r.run_id == run.run_id) {
            return Err(SpecError::new(format!(
                "{at}: is the same run (id {}) as run {j} ({}): they differ only in bookkeeping fields (train.checkpoint_every, train.log_every, eval.every), which do not make a run",
                run.run_id,
                points[j].describe()
            )));
        }
        runs.push(run);
    }
    if runs.is_empty() {
        return Err(SpecError::new(format!("{source}: the sweep's exclusions drop every run")));
    }
    let name = runs.first().map(|r| r.spec.name.clone()).unwrap_or_default();
    Ok(Experiment { name, points, runs })
}

/// A `--set` on a swept path (or on a table above or below one) would be replaced by the
/// sweep's values without a word: it is an error naming both.
fn refuse_sets_on_swept_paths(points: &[SweepPoint], sets: &[String], source: &str) -> Result<(), SpecError> {
    for set in sets {
        let key = set.split_once('=').map_or(set.as_str(), |(k, _)| k).trim();
        if let Some((swept, _)) = points.iter().flat_map(|p| &p.sets).find(|(k, _)| overlaps(key, k)) {
            return Err(SpecError::new(format!(
                "{source}: --set {set}: \"{key}\" is swept (sweep \"{swept}\"), so the sweep's values would replace it; \
                 change the [sweep] instead, or pick one point with `attnlab train --point N`"
            )));
        }
    }
    Ok(())
}

/// Whether two dotted paths are the same field, or one is a table above the other.
fn overlaps(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}

/// Paths that may be absent from a file because they have defaults.
fn known_path(path: &str) -> bool {
    // Fields left out of a saved config at their defaults are set off-default here so that
    // they are listed too.
    let mut spec = ExperimentSpec::defaults();
    spec.model.dropout = 0.5;
    spec.model.loops = 2;
    spec.model.exit = attnlab_model::Exit::Learned;
    spec.model.exit_entropy = 0.1;
    spec.model.head = attnlab_model::Head::Autoencoder;
    spec.model.positions = attnlab_model::Positions::Learned;
    spec.train.accumulate = 2;
    spec.train.epochs = Some(1);
    spec.data.train_samples = Some(1);
    spec.eval.published_protocol = true;
    spec.train.init_from = Some("run".into());
    let defaults = toml::Value::try_from(spec).expect("defaults serialise");
    let mixer = |p: &str| p == "model.pattern" || p == "model.overrides" || p.starts_with("model.overrides.");
    get_path(&defaults, path).is_some()
        || path.starts_with("model.attention.")
        || mixer(path)
        || path == "data.task"
        || path.starts_with("data.task.")
        || path == "train.stages"
}

/// `i/n`: this shard's runs are those with `index % n == i`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), SpecError> {
    let bad = || SpecError::new(format!("--shard = {s:?}: expected i/n with 0 ≤ i < n, e.g. 0/4"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Whether run `index` belongs to shard `(i, n)`.
pub fn in_shard(index: usize, shard: Option<(usize, usize)>) -> bool {
    shard.is_none_or(|(i, n)| index % n == i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> Vec<SweepPoint> {
        let v = parse_toml(text).unwrap();
        expand(v.get("sweep").and_then(|s| s.as_table()), "t").unwrap()
    }

    /// Baselines expand to themselves plus one change at a time (each change on the baseline,
    /// not on the previous change), crossed with the lists and seeds; an exclusion may name a
    /// baseline path. Planted, and seen to fail: changes applied cumulatively.
    #[test]
    fn baselines_one_at_a_time_crossed_with_lists() {
        let pts = sweep(
            "[sweep]\nseeds = [0, 1]\n\"train.lr\" = [1e-3, 1e-4]\n\
             [[sweep.baseline]]\n\"data.task\" = {kind = \"mad_recall\"}\n\"data.train_samples\" = 100\n\
             [sweep.baseline.one_at_a_time]\n\"data.task.vocab\" = [32, 64]\n\"data.train_samples\" = [50]\n\
             [[sweep.baseline]]\n\"data.task\" = {kind = \"mad_compression\"}\n\
             [[sweep.exclude]]\n\"data.train_samples\" = 50\n\"train.lr\" = 1e-4\n",
        );
        // (1 + 2 + 1) + 1 settings × 2 rates × 2 seeds, minus the 2 runs of (samples 50, lr 1e-4).
        assert_eq!(pts.len(), 5 * 2 * 2 - 2);
        let described: Vec<String> = pts.iter().map(SweepPoint::describe).collect();
        assert!(described[4].starts_with("data.task={kind = \"mad_recall\"}, data.train_samples=100, data.task.vocab=32, train.lr=0.001"), "{described:?}");
        assert!(described.iter().any(|d| d.contains("data.train_samples=50") && !d.contains("vocab")), "the samples change is on the baseline: {described:?}");
        assert!(!described.iter().any(|d| d.contains("data.train_samples=50") && d.contains("train.lr=0.0001")));
    }

    #[test]
    fn product_in_file_order_with_seeds_innermost() {
        let pts = sweep("[sweep]\nseeds = [0, 1]\n\"model.heads\" = [4, 8]\n\"train.lr\" = [1e-3, 3e-4, 1e-4]\n");
        assert_eq!(pts.len(), 12);
        assert_eq!(pts[0].describe(), "model.heads=4, train.lr=0.001, train.seed=0");
        assert_eq!(pts[1].describe(), "model.heads=4, train.lr=0.001, train.seed=1");
        assert_eq!(pts[11].describe(), "model.heads=8, train.lr=0.0001, train.seed=1");
        assert_eq!(pts.iter().map(|p| p.index).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn include_and_exclude() {
        let pts = sweep(
            "[sweep]\n\"model.heads\" = [4, 8]\n\"model.attention\" = [{kind = \"mha\"}, {kind = \"mqa\"}]\n\
             [[sweep.exclude]]\n\"model.heads\" = 8\n\"model.attention\" = {kind = \"mqa\"}\n\
             [[sweep.include]]\n\"model.attention\" = {kind = \"mla\", kv_latent = 16}\n",
        );
        let d: Vec<String> = pts.iter().map(|p| p.describe()).collect();
        assert_eq!(d, vec![
            "model.heads=4, model.attention={kind = \"mha\"}",
            "model.heads=4, model.attention={kind = \"mqa\"}",
            "model.heads=8, model.attention={kind = \"mha\"}",
            "model.attention={kind = \"mla\", kv_latent = 16}",
        ]);
    }

    #[test]
    fn exclusions_may_name_a_seed_and_must_name_swept_paths() {
        let pts = sweep(
            "[sweep]\nseeds = [0, 1]\n\"model.heads\" = [4, 8]\n\
             [[sweep.exclude]]\n\"model.heads\" = 8\n\"train.seed\" = 1\n",
        );
        let d: Vec<String> = pts.iter().map(|p| p.describe()).collect();
        assert_eq!(d, vec!["model.heads=4, train.seed=0", "model.heads=4, train.seed=1", "model.heads=8, train.seed=0"]);
        let v = parse_toml("[sweep]\n\"model.heads\" = [4, 8]\n[[sweep.exclude]]\n\"train.seed\" = 1\n").unwrap();
        let err = expand(v.get("sweep").and_then(|s| s.as_table()), "t").unwrap_err().to_string();
        assert!(err.contains("sweep.exclude[0]") && err.contains("train.seed") && err.contains("not swept"), "{err}");
    }

    /// Planted, and seen to fail, each alone: the empty-rule check removed (an empty rule
    /// dropped every run); the no-match check removed (4.0 against swept 4 was accepted).
    #[test]
    fn empty_and_unmatched_exclusions_are_errors() {
        let err = |text: &str| {
            let v = parse_toml(text).unwrap();
            expand(v.get("sweep").and_then(|s| s.as_table()), "t").unwrap_err().to_string()
        };
        let e = err("[sweep]\n\"model.heads\" = [4, 8]\n[[sweep.exclude]]\n");
        assert!(e.contains("sweep.exclude[0] is empty"), "{e}");
        let e = err("[sweep]\n\"model.heads\" = [4, 8]\n[[sweep.exclude]]\n\"model.heads\" = 4.0\n");
        assert!(e.contains("sweep.exclude[0]") && e.contains("matches no run"), "{e}");
    }

    #[test]
    fn shards_cover_every_run_exactly_once() {
        for n in 1..6 {
            let mut seen = vec![0; 17];
            for i in 0..n {
                for (idx, s) in seen.iter_mut().enumerate() {
                    if in_shard(idx, Some((i, n))) {
                        *s += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "n = {n}: {seen:?}");
        }
        assert!(parse_shard("2/2").is_err() && parse_shard("x").is_err() && parse_shard("0/0").is_err());
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
    }
}
