//! `attnlab eval RUN`: a trained run scored again on its evaluation windows — the validation
//! windows training used (the same seed, so the number equals the run's last validation loss),
//! or a task's test set — optionally at another window length than it trained on (length
//! generalisation: `--block`), with the mean loss at each position of the window; with the
//! inference-time settings of [`crate::inference`] (`--set eval.…`: Star Attention, another loop
//! count, Q-exit). Every evaluation is appended to the run's `evals.jsonl` (the run store), where
//! `attnlab report` finds it.

use std::path::Path;

use anyhow::Result;
use attnlab_data::Split;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::export::{load_run, LoadedRun};
use crate::inference::{score_sparse, score_star, EvalSettings, Inference, SparseScore, StarScore};
use crate::trainer::{evaluate, evaluate_with, EVAL_SEED};
use crate::SpecError;

/// What `attnlab eval` measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub run: String,
    pub attention: String,
    pub split: String,
    /// Tokens per window (the training block unless `--block`).
    pub block: usize,
    pub windows: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub accuracy: Option<f64>,
    /// Mean cross-entropy at each position of the window (over the scored tokens there; NaN
    /// where none is scored). Empty under Star Attention (it scores the query positions only).
    #[serde(deserialize_with = "nans_if_null")]
    pub loss_by_position: Vec<f64>,
    /// The inference-time settings ([`EvalSettings::label`]; `dense` when none).
    #[serde(default)]
    pub settings: String,
    /// Star Attention: the query positions under star and under global attention, timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub star: Option<StarScore>,
    /// Key selection at decode (Adamas, sink + window, pages, oracle): the decoded positions
    /// against the dense model, recall, τ, timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseScore>,
    /// Q-exit: the mean loop (1-based) the tokens exit at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_exit_loop: Option<f64>,
    /// When it was measured (UTC, RFC 3339).
    #[serde(default)]
    pub time: String,
}

/// Scores the run in `run_dir` on `split` (`val`, or `test` for a task), `batches` batches of its
/// `train.batch` windows (default: its `eval.batches`), windows of `block` tokens (default: its
/// `train.block`; text runs only, ≤ `model.max_seq`).
pub fn eval_run(run_dir: &Path, split: &str, block: Option<usize>, batches: Option<usize>, settings: &EvalSettings, device: &Device) -> Result<EvalReport> {
    let LoadedRun { root, mut spec, mut model, .. } = load_run(run_dir, device)?;
    let source = root.display().to_string();
    let split = match split {
        "val" => Split::Val,
        "test" if spec.data.task.is_some() => Split::Test,
        other => return Err(SpecError::new(format!("--split = {other:?}: allowed: val{}", if spec.data.task.is_some() { ", test" } else { " (a text run has no test set)" })).into()),
    };
    if let Some(b) = block {
        if spec.data.task.is_some() {
            return Err(SpecError::new(format!("--block = {b}: {source} is a synthetic task, whose sequences have a fixed length; leave --block out")).into());
        }
        if b == 0 || b > spec.model.max_seq {
            return Err(SpecError::new(format!("--block = {b}: must be in 1..={} (the run's model.max_seq)", spec.model.max_seq)).into());
        }
        spec.train.block = b;
    }
    if let Some(n) = batches {
        if n == 0 {
            return Err(SpecError::new("--batches = 0: must be ≥ 1").into());
        }
        spec.eval.batches = n;
    }
    // Scoring needs the data, not the run it started from.
    spec.train.init_from = None;
    if let Some(r) = settings.loops {
        if spec.model.loops == 1 {
            return Err(SpecError::new(format!("eval.loops = {r}: {source} is not a looped model (model.loops = 1)")).into());
        }
        model.loops = r;
    }
    if settings.exit_q.is_some() && model.exit_gate.is_none() {
        return Err(SpecError::new(format!("eval.exit_q: {source} has no learned exit (model.exit = \"none\")")).into());
    }
    let run = spec.prepare(&source)?;
    let t = &run.spec.train;
    let time = chrono_now();
    // The shared fields; a method-specific record fills loss, accuracy and its own part.
    let report = EvalReport {
        run: root.display().to_string(),
        attention: run.spec.model.mixer_label(),
        split: format!("{split:?}").to_lowercase(),
        block: t.block,
        windows: run.spec.eval.batches * t.batch,
        loss: f64::NAN,
        accuracy: None,
        loss_by_position: Vec::new(),
        settings: settings.label(),
        star: None,
        sparse: None,
        mean_exit_loop: None,
        time,
    };
    if let Inference::Star { .. } = settings.inference {
        let star = score_star(&model, &run, split, settings, device)?;
        let report = EvalReport { loss: star.loss, accuracy: star.accuracy, star: Some(star), ..report };
        store_eval(&root, &report)?;
        return Ok(report);
    }
    if settings.inference.selection().is_some() {
        let sparse = score_sparse(&model, &run, split, settings, device)?;
        let report = EvalReport { loss: sparse.loss, accuracy: sparse.accuracy, sparse: Some(sparse), ..report };
        store_eval(&root, &report)?;
        return Ok(report);
    }
    let exits = std::cell::RefCell::new((0usize, 0usize));
    let scored = match settings.exit_q {
        None => evaluate(&model, &run, split, device),
        Some(q) => evaluate_with(
            &|ids| {
                let (logits, chosen) = model.forward_q_exit(ids, q);
                let mut e = exits.borrow_mut();
                e.0 += chosen.iter().sum::<usize>();
                e.1 += chosen.len();
                logits
            },
            &run,
            split,
            device,
        ),
    };
    let mut sums = vec![(0.0f64, 0.0f64); t.block];
    for eb in run.data.eval_batches(split, EVAL_SEED, run.spec.eval.batches, t.batch, t.block) {
        let (b, len) = (eb.batch.batch, eb.batch.block);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(eb.batch.inputs.clone(), [b, len]), device);
        let logits = match settings.exit_q {
            Some(q) => model.forward_q_exit(ids, q).0,
            None => model.forward(ids),
        }
        .cast(burn::tensor::DType::F32);
        let vocab = logits.dims()[2];
        let targets = Tensor::<2, Int>::from_data(TensorData::new(eb.batch.targets.clone(), [b * len, 1]), device);
        let ce: Vec<f32> = log_softmax(logits.reshape([b * len, vocab]), 1).gather(1, targets).neg().into_data().convert::<f32>().try_into_vec::<f32>().expect("losses");
        for (i, v) in ce.into_iter().enumerate() {
            let w = eb.batch.loss_mask.as_ref().map_or(1.0, |m| m[i] as f64);
            let p = i % len;
            sums[p] = (sums[p].0 + w * v as f64, sums[p].1 + w);
        }
    }
    let (exit_sum, exit_count) = *exits.borrow();
    let report = EvalReport {
        loss: scored.loss,
        accuracy: scored.accuracy,
        loss_by_position: sums.into_iter().map(|(s, w)| if w > 0.0 { s / w } else { f64::NAN }).collect(),
        mean_exit_loop: (exit_count > 0).then(|| exit_sum as f64 / exit_count as f64),
        ..report
    };
    store_eval(&root, &report)?;
    Ok(report)
}

/// JSON writes NaN as `null`: read it back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_if_null`] for every element.
fn nans_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    Ok(<Vec<Option<f64>> as serde::Deserialize>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// The run store's record of evaluations: one JSON object a line.
pub const EVALS_FILE: &str = "evals.jsonl";

/// Appends `report` to the run's [`EVALS_FILE`].
fn store_eval(root: &Path, report: &EvalReport) -> Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_string(report)?;
    line.push('\n');
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(root.join(EVALS_FILE))?;
    file.write_all(line.as_bytes())?;
    Ok(())
}

/// Every evaluation stored in the run folder `root` (none when the file is absent; a line
/// that does not parse is skipped).
pub fn stored_evals(root: &Path) -> Vec<EvalReport> {
    std::fs::read_to_string(root.join(EVALS_FILE)).map_or_else(|_| Vec::new(), |text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC), from the system clock.
fn chrono_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
