//! `attnlab eval RUN`: a trained run scored again on its evaluation windows — the validation
//! windows training used (the same seed, so the number equals the run's last validation loss),
//! or a task's test set — optionally at another window length than it trained on (length
//! generalisation: `--block`), with the mean loss at each position of the window.

use std::path::Path;

use anyhow::Result;
use attnlab_data::Split;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::export::{load_run, LoadedRun};
use crate::trainer::{evaluate, EVAL_SEED};
use crate::SpecError;

/// What `attnlab eval` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub run: String,
    pub attention: String,
    pub split: String,
    /// Tokens per window (the training block unless `--block`).
    pub block: usize,
    pub windows: usize,
    pub loss: f64,
    pub accuracy: Option<f64>,
    /// Mean cross-entropy at each position of the window (over the scored tokens there; NaN
    /// where none is scored).
    pub loss_by_position: Vec<f64>,
}

/// Scores the run in `run_dir` on `split` (`val`, or `test` for a task), `batches` batches of its
/// `train.batch` windows (default: its `eval.batches`), windows of `block` tokens (default: its
/// `train.block`; text runs only, ≤ `model.max_seq`).
pub fn eval_run(run_dir: &Path, split: &str, block: Option<usize>, batches: Option<usize>, device: &Device) -> Result<EvalReport> {
    let LoadedRun { root, mut spec, model, .. } = load_run(run_dir, device)?;
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
    let run = spec.prepare(&source)?;
    let t = &run.spec.train;
    let scored = evaluate(&model, &run, split, device);
    let mut sums = vec![(0.0f64, 0.0f64); t.block];
    for eb in run.data.eval_batches(split, EVAL_SEED, run.spec.eval.batches, t.batch, t.block) {
        let (b, len) = (eb.batch.batch, eb.batch.block);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(eb.batch.inputs.clone(), [b, len]), device);
        let logits = model.forward(ids).cast(burn::tensor::DType::F32);
        let vocab = logits.dims()[2];
        let targets = Tensor::<2, Int>::from_data(TensorData::new(eb.batch.targets.clone(), [b * len, 1]), device);
        let ce: Vec<f32> = log_softmax(logits.reshape([b * len, vocab]), 1).gather(1, targets).neg().into_data().convert::<f32>().try_into_vec::<f32>().expect("losses");
        for (i, v) in ce.into_iter().enumerate() {
            let w = eb.batch.loss_mask.as_ref().map_or(1.0, |m| m[i] as f64);
            let p = i % len;
            sums[p] = (sums[p].0 + w * v as f64, sums[p].1 + w);
        }
    }
    Ok(EvalReport {
        run: root.display().to_string(),
        attention: run.spec.model.mixer_label(),
        split: format!("{split:?}").to_lowercase(),
        block: t.block,
        windows: run.spec.eval.batches * t.batch,
        loss: scored.loss,
        accuracy: scored.accuracy,
        loss_by_position: sums.into_iter().map(|(s, w)| if w > 0.0 { s / w } else { f64::NAN }).collect(),
    })
}
