//! The training loop: seeded random-window batches, AdamW with warm-up + cosine LR, evaluation
//! on fixed validation windows, checkpoints, and the run's metrics and summary.
//!
//! Timing is honest: the device is synced before every clock read, the first
//! [`TIMING_WARMUP_STEPS`] steps of a process and all evaluation time are excluded, and
//! tokens/s = batch·block·(timed steps) / (their synced wall time).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use attnlab_data::{Batch, Rng, Split};
use attnlab_model::Gpt;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::memory::peak_rss_bytes;
use crate::stages::Objective;
use attnlab_attn::AuxLoss;
use crate::schedule::lr_at;
use crate::spec::{PreparedRun, Precision};
use crate::checkpoint;
use crate::lock::RunLock;
use crate::store::{write_atomic, RunDir};
use crate::summary::{MetricLine, Summary};

/// Steps at the start of each process left out of throughput (allocator and kernel warm-up).
pub const TIMING_WARMUP_STEPS: usize = 5;
/// Seed of the evaluation windows: every run of every experiment is scored on the same ones.
pub const EVAL_SEED: u64 = 0xE7A1;

pub struct TrainOptions {
    pub out: PathBuf,
    /// The backend (not autodiff; the trainer adds it).
    pub device: Device,
    /// Its name for summaries (`cpu`, `wgpu`, ...).
    pub device_name: String,
    pub progress: bool,
    /// Stop (with a checkpoint) once this many steps are done, as if interrupted.
    pub stop_at: Option<usize>,
    /// Where to draw the run's progress bar when several bars share the terminal.
    pub multi: Option<indicatif::MultiProgress>,
}

/// What a call of [`train`] ended with.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    Finished(Summary),
    /// The run had finished before; its stored summary.
    AlreadyFinished(Summary),
    /// Stopped at `step` by `stop_at` or an interrupt, resumable from its checkpoint.
    Stopped { step: usize },
    /// Another live process holds the run's lock; nothing was done.
    Busy(String),
}

/// What a checkpoint holds besides model and optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    /// Steps completed.
    step: usize,
    rng: Rng,
    #[serde(with = "crate::summary::non_finite_as_null")]
    best_val_loss: f64,
    #[serde(with = "crate::summary::non_finite_as_null")]
    last_val_loss: f64,
    #[serde(with = "crate::summary::non_finite_as_null")]
    last_train_loss: f64,
    wall_seconds: f64,
    step_ms: Vec<f64>,
    /// Stopped by Ctrl-C / SIGTERM (or `stop_at`) rather than by a periodic checkpoint.
    #[serde(default)]
    interrupted: bool,
    #[serde(default)]
    best_val_accuracy: Option<f64>,
    #[serde(default)]
    last_val_accuracy: Option<f64>,
    #[serde(default)]
    last_val_accuracy_by_bucket: Option<Vec<f64>>,
    /// Test accuracy at the evaluation with the best validation accuracy, and its step.
    #[serde(default)]
    test_accuracy_at_best_val: Option<f64>,
    #[serde(default)]
    best_val_step: Option<usize>,
    #[serde(default)]
    test_macro_accuracy_at_best_val: Option<f64>,
    /// `eval.published_protocol`: MAD's selection on the test set.
    #[serde(default)]
    published: Option<Published>,
}

/// MAD's published protocol, followed on the side (`eval.published_protocol`): the test set
/// is scored at every evaluation; the reported figure is the macro test accuracy at the
/// evaluation with the lowest test loss, among the evaluations up to the first whose test
/// accuracy reaches 0.999 (MAD's early stop; attnlab trains on, for its own selection).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Published {
    test_loss: f64,
    macro_accuracy: Option<f64>,
    step: usize,
    /// The step at which MAD would have stopped.
    stopped_at: Option<usize>,
}

impl Published {
    /// Folds in the test evaluation at `step`.
    fn update(current: Option<Published>, test: &Evaluation, step: usize) -> Option<Published> {
        match current {
            Some(p) if p.stopped_at.is_some() => Some(p),
            Some(p) if p.test_loss <= test.loss => Some(Published { stopped_at: reached(test).then_some(step), ..p }),
            _ => Some(Published { test_loss: test.loss, macro_accuracy: test.macro_accuracy, step, stopped_at: reached(test).then_some(step) }),
        }
    }
}

/// MAD's early stop: Lightning's `EarlyStopping(stopping_threshold = 0.999, mode = "max")` on
/// its test accuracy, which is macro accuracy, compared strictly.
fn reached(test: &Evaluation) -> bool {
    test.macro_accuracy.is_some_and(|a| a > 0.999)
}

fn tokens_tensor(values: Vec<i64>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A new model whose initial weights depend only on `seed` ([`Gpt::seeded`]).
pub fn seeded_model(config: &attnlab_model::ModelConfig, seed: u64, device: &Device) -> Gpt {
    Gpt::seeded(config, seed, device)
}

/// `train.precision` on `device`: an error naming the field, value and what the device allows
/// (exit 2, before anything is written) where the device cannot compute in the type — bf16 on
/// Vulkan, where it is a storage type only.
pub fn check_precision(precision: Precision, device: &Device, device_name: &str) -> Result<(), crate::SpecError> {
    if device.supports_dtype(precision.dtype()) {
        return Ok(());
    }
    let allowed: Vec<&str> = Precision::ALL.into_iter().filter(|p| device.supports_dtype(p.dtype())).map(Precision::name).collect();
    Err(crate::SpecError::new(format!(
        "train.precision = {:?}: the {device_name} device does not compute in it (allowed on this device: {})",
        precision.name(),
        allowed.join(", ")
    )))
}

/// The model the training forward runs: `model` itself in f32, else a copy whose parameters
/// are cast to the compute type. The cast is part of the autodiff graph, so the backward pass
/// brings f32 gradients back to `model`'s f32 parameters (take them with `model`, not the copy).
pub fn compute_model(model: &Gpt, precision: Precision) -> Option<Gpt> {
    struct Cast(burn::tensor::DType);
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    (precision != Precision::F32).then(|| model.clone().map(&mut Cast(precision.dtype())))
}

/// Mean cross-entropy of `model` on a batch (over the positions of its loss mask, if any).
/// Returns the loss tensor `[1]`.
pub fn batch_loss(model: &Gpt, batch: Batch, device: &Device) -> Tensor<1> {
    batch_logits_loss(model, batch, device).1
}

/// The loss a training step minimises and the training loss it reports: [`batch_loss`] (both),
/// or for a looped model with a learned exit (`model.exit = "learned"`) Ouro's stage-I
/// objective over every loop's logits ([`attnlab_model::looped::exit_loss`], entropy weight
/// `beta`), reported as the last loop's cross-entropy (what evaluation measures, comparable with
/// other runs' training loss). A stage's `objective` adds its weighted auxiliary losses (and
/// may leave the cross-entropy out: it is still the reported loss); their values come back by name.
pub fn training_loss(model: &Gpt, batch: Batch, beta: f64, objective: &Objective, device: &Device) -> (Tensor<1>, f64, Vec<(AuxLoss, f64)>) {
    if !objective.is_plain() && model.exit_gate.is_none() {
        let (b, t) = (batch.batch, batch.block);
        let (logits, losses) = model.forward_aux(tokens_tensor(batch.inputs.clone(), [b, t], device), &objective.request());
        let ce = logits_loss(logits.cast(burn::tensor::DType::F32), &batch, device);
        let reported = ce.clone().into_scalar::<f32>() as f64;
        let mut total = if objective.lm { Some(ce) } else { None };
        let mut values = Vec::new();
        for (name, value) in losses {
            // Every value a layer returns is logged; those the stage weights enter the objective.
            let value = value.cast(burn::tensor::DType::F32);
            values.push((name, value.clone().into_scalar::<f32>() as f64));
            let Some((_, weight)) = objective.aux.iter().find(|(a, _)| *a == name) else { continue };
            let term = value * *weight as f32;
            total = Some(match total {
                Some(t) => t + term,
                None => term,
            });
        }
        let total = total.expect("validated: a stage without the LM loss has an auxiliary loss that a layer returns");
        return (total, reported, values);
    }
    if model.exit_gate.is_none() {
        let loss = batch_loss(model, batch, device);
        let reported = loss.clone().into_scalar::<f32>() as f64;
        return (loss, reported, Vec::new());
    }
    let (b, t) = (batch.batch, batch.block);
    let loops = model.forward_loops(tokens_tensor(batch.inputs, [b, t], device));
    let targets = Tensor::<2, Int>::from_data(TensorData::new(batch.targets, [b * t, 1]), device);
    let (ce, gates): (Vec<Tensor<2>>, Vec<Tensor<2>>) = loops
        .into_iter()
        .map(|(logits, gate)| {
            let vocab = logits.dims()[2];
            let flat = logits.cast(burn::tensor::DType::F32).reshape([b * t, vocab]);
            let ce = log_softmax(flat, 1).gather(1, targets.clone()).reshape([1, b * t]).neg();
            (ce, gate.cast(burn::tensor::DType::F32).reshape([1, b * t]))
        })
        .unzip();
    let weights = match batch.loss_mask {
        Some(mask) => Tensor::<1>::from_data(TensorData::new(mask, [b * t]), device),
        None => Tensor::ones([b * t], device),
    };
    let last = ce.last().expect("≥ 2 loops").clone().reshape([b * t]);
    let reported = ((last * weights.clone()).sum() / weights.clone().sum().clamp_min(1.0)).into_scalar::<f32>() as f64;
    let (ce, gates) = (Tensor::cat(ce, 0), Tensor::cat(gates, 0));
    // Stage I (the LM loss of a learned exit) and, when the stage asks, stage II.
    let stage_one = objective.lm.then(|| attnlab_model::looped::exit_loss(ce.clone(), gates.clone(), weights.clone(), beta));
    let stage_two = objective.aux.iter().find(|(a, _)| *a == AuxLoss::ExitImprovement).map(|(_, w)| {
        let loss = attnlab_model::looped::improvement_loss(ce, gates, weights);
        (loss.clone().into_scalar::<f32>() as f64, loss * *w as f32)
    });
    let values = stage_two.as_ref().map(|(v, _)| vec![(AuxLoss::ExitImprovement, *v)]).unwrap_or_default();
    let total = match (stage_one, stage_two) {
        (Some(a), Some((_, b))) => a + b,
        (Some(a), None) => a,
        (None, Some((_, b))) => b,
        (None, None) => unreachable!("validated: a stage without the LM loss has an auxiliary loss the model returns"),
    };
    (total, reported, values)
}

/// Logits `[batch, block, vocab]` and the mean cross-entropy `[1]`:
/// `−Σ mask·log p(target) / Σ mask`, or the plain mean without a mask.
fn batch_logits_loss(model: &Gpt, batch: Batch, device: &Device) -> (Tensor<3>, Tensor<1>) {
    let (b, t) = (batch.batch, batch.block);
    // The softmax and the loss in f32 whatever the compute type (a no-op in f32).
    let logits = model.forward(tokens_tensor(batch.inputs.clone(), [b, t], device)).cast(burn::tensor::DType::F32);
    let loss = logits_loss(logits.clone(), &batch, device);
    (logits, loss)
}

/// The mean cross-entropy `[1]` of f32 logits `[b, t, vocab]` on `batch`'s targets (over its
/// loss mask, if any).
fn logits_loss(logits: Tensor<3>, batch: &Batch, device: &Device) -> Tensor<1> {
    let (b, t) = (batch.batch, batch.block);
    let vocab = logits.dims()[2];
    let flat = logits.reshape([b * t, vocab]);
    match &batch.loss_mask {
        None => {
            let targets = Tensor::<1, Int>::from_data(TensorData::new(batch.targets.clone(), [b * t]), device);
            CrossEntropyLoss::new(None, device).forward(flat, targets)
        }
        Some(mask) => {
            let counted: f32 = mask.iter().sum();
            let targets = Tensor::<2, Int>::from_data(TensorData::new(batch.targets.clone(), [b * t, 1]), device);
            let mask = Tensor::<1>::from_data(TensorData::new(mask.clone(), [b * t]), device);
            let picked = log_softmax(flat, 1).gather(1, targets).reshape([b * t]);
            (picked * mask).sum().neg() / counted.max(1.0)
        }
    }
}

/// Loss and, for a task, exact-match accuracy on its answer positions (overall and per bucket).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: Option<f64>,
    /// Mean per-class recall (see [`crate::accuracy`]).
    pub macro_accuracy: Option<f64>,
    pub by_bucket: Option<Vec<f64>>,
}

/// Mean loss per scored token over the fixed evaluation batches of `split` (no gradients); for a
/// task also the fraction of answers whose argmax prediction is right, and macro accuracy.
pub fn evaluate(model: &Gpt, run: &PreparedRun, split: Split, device: &Device) -> Evaluation {
    evaluate_with(&|ids| model.forward(ids), run, split, device)
}

/// [`evaluate`] with logits `[b, t, vocab]` from `forward` (an inference-time variant of the
/// model's forward: another loop count, Q-exit).
pub fn evaluate_with(forward: &dyn Fn(Tensor<2, Int>) -> Tensor<3>, run: &PreparedRun, split: Split, device: &Device) -> Evaluation {
    let t = &run.spec.train;
    let batches = run.data.eval_batches(split, EVAL_SEED, run.spec.eval.batches, t.batch, t.block);
    let buckets = run.data.buckets();
    // The loss is weighted by scored tokens over the whole set (batches of a task score
    // different numbers of answers), as a token-level perplexity is.
    let (mut loss_sum, mut weight_sum) = (0.0, 0.0);
    let mut confusion = crate::accuracy::Confusion::default();
    let (mut bucket_right, mut bucket_total) = (vec![0usize; buckets], vec![0usize; buckets]);
    for eb in &batches {
        let (b, len) = (eb.batch.batch, eb.batch.block);
        let logits = forward(tokens_tensor(eb.batch.inputs.clone(), [b, len], device)).cast(burn::tensor::DType::F32);
        let loss = logits_loss(logits.clone(), &eb.batch, device);
        let weight = eb.batch.loss_mask.as_ref().map_or((eb.batch.batch * eb.batch.block) as f64, |m| m.iter().map(|&v| v as f64).sum());
        loss_sum += weight * loss.into_scalar::<f32>() as f64;
        weight_sum += weight;
        let Some(mask) = &eb.batch.loss_mask else { continue };
        let predicted: Vec<i64> = logits.argmax(2).into_data().convert::<i64>().try_into_vec::<i64>().expect("argmax ids");
        for (i, (&m, (&p, &y))) in mask.iter().zip(predicted.iter().zip(&eb.batch.targets)).enumerate() {
            if m > 0.0 {
                confusion.add(p, y);
                if let Some(bucket) = eb.buckets[i / eb.batch.block] {
                    bucket_total[bucket] += 1;
                    bucket_right[bucket] += usize::from(p == y);
                }
            }
        }
    }
    let ratio = |r: usize, n: usize| if n == 0 { f64::NAN } else { r as f64 / n as f64 };
    Evaluation {
        loss: if weight_sum > 0.0 { loss_sum / weight_sum } else { f64::NAN },
        accuracy: confusion.micro(),
        macro_accuracy: confusion.macro_accuracy(),
        by_bucket: (buckets > 0).then(|| bucket_right.iter().zip(&bucket_total).map(|(&r, &n)| ratio(r, n)).collect()),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Decode-state bytes per token of context at a full `max_seq` context, measured from real
/// state tensors (one sequence, all layers).
pub fn measured_state_bytes(model: &Gpt, device: &Device) -> usize {
    model.init_states(1, model.max_seq, device).iter().map(|s| s.bytes()).sum::<usize>() / model.max_seq
}

/// How many of the model's parameter tensors hold a NaN or an infinity (0 = all finite).
pub fn non_finite_params(model: &Gpt) -> usize {
    struct Check(usize);
    impl burn::module::ModuleVisitor for Check {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if !param.val().is_finite().all().into_scalar::<bool>() {
                self.0 += 1;
            }
        }
    }
    let mut check = Check(0);
    model.visit(&mut check);
    check.0
}

/// Leftover temp checkpoint folders of killed processes (`checkpoint.tmp*`, `.checkpoint.*.tmp`).
fn remove_temp_checkpoints(dir: &RunDir) {
    let Ok(entries) = fs::read_dir(&dir.root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint.tmp") || (name.starts_with(".checkpoint.") && name.ends_with(".tmp")) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Writes a checkpoint (into a per-process temp folder, then renamed into place), only while
/// this process still holds the run's lock. Never one with non-finite weights: then nothing is
/// written and the answer is `Ok(false)` (the last update overflowed them: the run diverged).
fn save_checkpoint(dir: &RunDir, model: &Gpt, optim: &ModuleOptimizer, state: &TrainerState, lock: &RunLock) -> Result<bool> {
    if non_finite_params(model) > 0 {
        return Ok(false);
    }
    lock.verify()?;
    remove_temp_checkpoints(dir);
    let tmp = crate::store::temp_path(&dir.checkpoint());
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    model.clone().save_file(tmp.join("model.bpk")).map_err(|e| anyhow::anyhow!("saving model: {e:?}"))?;
    optim.save(tmp.join("optim.bpk")).map_err(|e| anyhow::anyhow!("saving optimizer: {e:?}"))?;
    write_atomic(&tmp.join("state.json"), serde_json::to_string(state)?.as_bytes())?;
    checkpoint::seal(&tmp)?;
    lock.verify()?;
    checkpoint::install(&tmp, &dir.checkpoint())?;
    Ok(true)
}

/// Logs a line through `tracing`, so that it reaches a log file under a batch job or
/// `--quiet` (plain text when stderr is not a terminal); drawn above the progress bar when one
/// is shown.
fn say(pb: &ProgressBar, warn: bool, msg: String) {
    let emit = || if warn { tracing::warn!("{msg}") } else { tracing::info!("{msg}") };
    if pb.is_hidden() {
        emit()
    } else {
        pb.suspend(emit)
    }
}

/// Keeps the metric lines up to `step` (a resumed run redoes the rest).
fn truncate_metrics(path: &PathBuf, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: String = fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (the run's metrics; move the run folder away to start over)", path.display()))?
        .lines()
        .filter(|l| serde_json::from_str::<MetricLine>(l).map(|m| m.step() <= step).unwrap_or(false))
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

/// The gradients of one optimizer step and its mean loss: `train.accumulate` batches of
/// `train.batch`, each loss divided by their count, gradients summed (so the step sees the
/// gradient of the mean loss over all of them, as one batch of accumulate · batch would).
/// `step` places the micro-batches in a fixed training set's epochs (`data.train_samples`).
pub fn accumulated_grads(model: &Gpt, run: &PreparedRun, rng: &mut Rng, step: usize, device: &Device) -> (GradientsParams, f64) {
    let (grads, loss, _) = step_gradients(model, run, rng, step, device);
    (grads, loss)
}

/// [`accumulated_grads`] with the step's auxiliary losses (the stage's, averaged over the
/// micro-batches) by name.
pub fn step_gradients(model: &Gpt, run: &PreparedRun, rng: &mut Rng, step: usize, device: &Device) -> (GradientsParams, f64, Vec<(AuxLoss, f64)>) {
    let t = &run.spec.train;
    let k = t.accumulate.max(1);
    let objective = crate::stages::stage_at(&t.stages, step).map_or_else(Objective::plain, |(_, s, _)| s.objective());
    let mut accumulator = burn::optim::GradientsAccumulator::<Gpt>::new();
    let mut loss_sum = 0.0;
    let mut aux_sum: Vec<(AuxLoss, f64)> = Vec::new();
    let scale = t.precision.loss_scale();
    for i in 0..k {
        // A fresh cast per micro-batch: a backward pass consumes the graph through the cast
        // nodes (only the f32 leaves outlive it).
        let half = compute_model(model, t.precision);
        let batch = run.data.train_batch(rng, t.batch, t.block, step * k + i);
        let (loss, reported, aux) = training_loss(half.as_ref().unwrap_or(model), batch, run.spec.model.exit_entropy, &objective, device);
        for (name, v) in aux {
            match aux_sum.iter_mut().find(|(n, _)| *n == name) {
                Some((_, sum)) => *sum += v / k as f64,
                None => aux_sum.push((name, v / k as f64)),
            }
        }
        let loss = if k > 1 { loss / k as f32 } else { loss };
        // A non-finite objective must show in the reported loss too (the divergence check).
        let value = loss.clone().into_scalar::<f32>() as f64;
        loss_sum += if value.is_finite() { reported / k as f64 } else { value };
        let backward = if scale == 1.0 { loss.backward() } else { (loss * scale).backward() };
        let mut grads = GradientsParams::from_grads(backward, model);
        if scale != 1.0 {
            grads = crate::optim::scale_grads(grads, model, 1.0 / scale);
        }
        if k == 1 {
            return (grads, loss_sum, aux_sum);
        }
        accumulator.accumulate(model, grads);
    }
    (accumulator.grads(), loss_sum, aux_sum)
}

/// `history.jsonl` (W&B layout) and a TensorBoard event file beside `metrics.jsonl`; a
/// failure is a warning (they are derived files: `metrics.jsonl` holds everything).
fn export_metrics(dir: &RunDir) {
    if let Err(e) = crate::export_metrics::export(&dir.root) {
        tracing::warn!("{e:#}: history.jsonl / the TensorBoard file not written");
    }
}

/// A run's data fingerprint (`data.sha256`): written when the run starts, compared on every
/// resume, so a run never continues on other data than it began with (the run id hashes the
/// data too; this catches a store written before it did, or a hand-copied folder).
fn check_data_hash(run: &PreparedRun, dir: &RunDir) -> Result<()> {
    let Some(sha) = &run.data_sha256 else { return Ok(()) };
    let path = dir.root.join("data.sha256");
    match fs::read_to_string(&path) {
        Ok(stored) if stored.trim() == sha => Ok(()),
        Ok(stored) => Err(crate::SpecError::new(format!(
            "run {}: the data ({}) has sha256 {sha}, but the run started on data with sha256 {} ({}): \
             the corpus changed; restore it, or move {} away to start over",
            run.run_id,
            run.data_source,
            stored.trim(),
            path.display(),
            dir.root.display()
        ))
        .into()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("cannot read {}", path.display())),
        Err(_) if dir.checkpoint().exists() || crate::checkpoint::previous(&dir.checkpoint()).exists() => Err(crate::SpecError::new(format!(
            "run {}: has a checkpoint but no {}: cannot tell whether its data changed; move {} away to start over",
            run.run_id,
            path.display(),
            dir.root.display()
        ))
        .into()),
        Err(_) => write_atomic(&path, format!("{sha}\n").as_bytes()),
    }
}

/// Trains one prepared run into `opts.out/<experiment>/<run-id>/`. A finished run is not
/// touched; an interrupted one resumes from its last checkpoint.
pub fn train(run: &PreparedRun, opts: &TrainOptions) -> Result<RunOutcome> {
    let spec = &run.spec;
    let t = &spec.train;
    let dir = RunDir::new(&opts.out, &spec.name, &run.run_id);
    check_precision(t.precision, &opts.device, &opts.device_name)?;
    if let Ok(text) = fs::read_to_string(dir.summary()) {
        let summary: Summary = serde_json::from_str(&text).with_context(|| format!("reading {}", dir.summary().display()))?;
        return Ok(RunOutcome::AlreadyFinished(summary));
    }
    fs::create_dir_all(&dir.root).with_context(|| format!("cannot create the run folder {}", dir.root.display()))?;
    let _active = crate::interrupt::Active::new();
    let lock = match RunLock::acquire(&dir.root)? {
        Ok(lock) => lock,
        Err(holder) => return Ok(RunOutcome::Busy(holder)),
    };
    if let Ok(text) = fs::read_to_string(dir.summary()) {
        // Finished by another process while we waited for the lock.
        return Ok(RunOutcome::AlreadyFinished(serde_json::from_str(&text).with_context(|| format!("reading {}", dir.summary().display()))?));
    }
    check_data_hash(run, &dir)?;
    if let Ok(stored) = fs::read_to_string(dir.tokenizer()) {
        let stored: attnlab_data::Tokenizer = serde_json::from_str(&stored).with_context(|| format!("reading {}", dir.tokenizer().display()))?;
        if stored != run.tokenizer {
            return Err(crate::SpecError::new(format!(
                "run {}: the data's tokenizer ({} tokens) differs from the one this run started with ({} tokens, {}): \
                 the dataset changed; restore it, or move {} away to start over",
                run.run_id,
                run.tokenizer.vocab_size(),
                stored.vocab_size(),
                dir.tokenizer().display(),
                dir.root.display()
            ))
            .into());
        }
    }
    write_atomic(&dir.config(), toml::to_string(spec)?.as_bytes())?;
    write_atomic(&dir.tokenizer(), serde_json::to_string(&run.tokenizer)?.as_bytes())?;

    let device = opts.device.clone().autodiff();
    let mut model = seeded_model(&spec.model, t.seed, &device);
    let mut state = TrainerState {
        step: 0,
        rng: Rng::new(t.seed),
        best_val_loss: f64::INFINITY,
        last_val_loss: f64::NAN,
        last_train_loss: f64::NAN,
        wall_seconds: 0.0,
        step_ms: Vec::new(),
        interrupted: false,
        best_val_accuracy: None,
        last_val_accuracy: None,
        last_val_accuracy_by_bucket: None,
        test_accuracy_at_best_val: None,
        best_val_step: None,
        test_macro_accuracy_at_best_val: None,
        published: None,
    };
    let mut checkpoint = checkpoint::newest_valid(&dir.checkpoint());
    if let (None, Some(ext)) = (&checkpoint, &run.extends) {
        // A new extension: start from the extended run's final checkpoint and metrics.
        tracing::info!(run = %run.run_id, extends = %ext.from_run, step = ext.from_step, "extending");
        checkpoint = Some(ext.from_dir.join("checkpoint"));
        if !dir.metrics().exists() {
            let old = ext.from_dir.join("metrics.jsonl");
            fs::copy(&old, dir.metrics()).with_context(|| format!("cannot copy {}", old.display()))?;
        }
    }
    if let Some(ckpt) = &checkpoint {
        model = model.try_load_file(ckpt.join("model.bpk")).map_err(|e| anyhow::anyhow!("loading checkpoint model: {e:?}"))?;
    } else if let Some(from) = &t.init_from {
        // A new run started from a trained one (`attnlab linearize`): its weights, the new parts as initialised.
        let teacher = crate::stages::load_source_model(from, &device)?;
        model = model.with_source_weights(teacher).map_err(|e| anyhow::anyhow!("train.init_from = {}: {e}", from.display()))?;
        tracing::info!(run = %run.run_id, from = %from.display(), "starting from the weights of a trained run");
    }
    // Built from the (loaded) model: the weight-decay groups are parameter ids.
    let mut optim = crate::optim::optimizer(t, &model);
    if let Some(ckpt) = checkpoint {
        state = serde_json::from_str(&fs::read_to_string(ckpt.join("state.json"))?)?;
        optim = optim.load(ckpt.join("optim.bpk")).map_err(|e| anyhow::anyhow!("loading checkpoint optimizer: {e:?}"))?;
        state.interrupted = false;
        tracing::info!(run = %run.run_id, step = state.step, from = %ckpt.display(), "resuming from checkpoint");
    } else if dir.checkpoint().exists() || checkpoint::previous(&dir.checkpoint()).exists() {
        tracing::warn!(run = %run.run_id, "no usable checkpoint: training from scratch");
    }
    truncate_metrics(&dir.metrics(), state.step)?;
    let mut metrics = OpenOptions::new().create(true).append(true).open(dir.metrics())?;
    let mut log = |line: &MetricLine| -> Result<()> { Ok(writeln!(metrics, "{}", serde_json::to_string(line)?)?) };

    let pb = match (&opts.multi, opts.progress) {
        (_, false) => ProgressBar::hidden(),
        (Some(multi), true) => multi.add(ProgressBar::new(t.steps as u64)),
        (None, true) => ProgressBar::new(t.steps as u64),
    };
    pb.set_style(ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")?);
    pb.set_prefix(format!("{} {}", run.run_id, spec.model.mixer_label()));
    pb.set_position(state.step as u64);

    let tokens_per_step = (t.accumulate * t.batch * t.block) as f64;
    let started = Instant::now();
    let wall_before = state.wall_seconds;
    let mut timed_steps = 0usize;
    // Tokens and seconds of the training steps since the last evaluation (for its log line).
    let mut window = (0.0f64, 0.0f64);
    let mut diverged_at = None;
    let mut device_peak: Option<u64> = None;
    let mut current_stage: Option<usize> = None;
    device.sync().ok();
    while state.step < t.steps {
        if opts.stop_at.is_some_and(|s| state.step >= s) || crate::interrupt::requested() {
            if crate::interrupt::requested() {
                say(&pb, true, format!("run {}: interrupted: writing a checkpoint at step {} (a second Ctrl-C aborts)", run.run_id, state.step));
            }
            state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
            state.interrupted = true;
            if !save_checkpoint(&dir, &model, &optim, &state, &lock)? {
                say(&pb, true, format!("run {}: the weights are non-finite at step {}: stopping it as diverged", run.run_id, state.step));
                diverged_at = Some(state.step);
                break;
            }
            export_metrics(&dir);
            pb.finish_and_clear();
            return Ok(RunOutcome::Stopped { step: state.step });
        }
        let step = state.step;
        let stage = crate::stages::stage_at(&t.stages, step);
        let lr = match stage {
            Some((_, s, start)) => lr_at(step - start, s.steps, s.warmup, s.lr, s.min_lr()),
            None => lr_at(step, t.steps, t.warmup, t.lr, t.min_lr),
        };
        if let Some((i, s, _)) = stage.filter(|(i, _, _)| current_stage != Some(*i)) {
            // Entering a stage (or resuming inside one): its frozen set.
            model = crate::stages::freeze_for(model, s);
            current_stage = Some(i);
            let trainable = if s.trainable.is_empty() { "all parameters".to_string() } else { s.trainable.join(", ") };
            say(&pb, false, format!("run {}: stage {} {:?} from step {step}: {} steps, lr {}, training {trainable}", run.run_id, i + 1, s.name, s.steps, s.lr));
        }
        let t0 = Instant::now();
        // Dropout masks from (seed, step), so a resumed run draws the same masks. The device's
        // generator is global to the process: the step holds the init lock while it draws.
        let seeded = (spec.model.dropout > 0.0).then(|| {
            let guard = attnlab_model::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // A tag keeps the dropout stream apart from the initial weights' (seed, step 0).
            device.seed((t.seed ^ 0xD509_0F7A_5EED_0001).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step as u64));
            guard
        });
        // The loss is read every step (a host sync the step's own `device.sync()` pays
        // anyway), so a divergence is caught at the step it happens, not at the next log.
        let (grads, loss_now, aux_now) = step_gradients(&model, run, &mut state.rng, step, &device);
        drop(seeded);
        model = crate::optim::step(&mut optim, model, grads, lr, t.grad_clip, t.precision);
        let log_now = step % t.log_every == 0 || step + 1 == t.steps;
        let loss_value = log_now.then_some(loss_now);
        device.sync().ok();
        if lock.lost() {
            lock.verify()?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if let Some(bytes) = crate::memory::device_reserved_bytes(&device) {
            device_peak = Some(device_peak.map_or(bytes, |p: u64| p.max(bytes)));
        }
        timed_steps += 1;
        window = (window.0 + tokens_per_step, window.1 + ms / 1e3);
        if timed_steps > TIMING_WARMUP_STEPS {
            state.step_ms.push(ms);
        }
        state.step += 1;
        if !loss_now.is_finite() {
            say(&pb, true, format!("run {}: training loss is {loss_now} at step {}: stopping it as diverged", run.run_id, state.step));
            diverged_at = Some(state.step);
            break;
        }
        if let Some(l) = loss_value {
            state.last_train_loss = l;
            let aux = aux_now.iter().map(|(name, v)| (name.name().to_string(), *v)).collect();
            let stage = stage.map(|(_, s, _)| s.name.clone());
            log(&MetricLine::Train { step: state.step, loss: l, lr, tokens_per_sec: tokens_per_step / (ms / 1e3), stage, aux })?;
            pb.set_message(format!("loss {l:.4} val {:.4} lr {lr:.2e} {:.0} tok/s", state.last_val_loss, tokens_per_step / (ms / 1e3)));
        }
        if state.step % spec.eval.every == 0 || state.step == t.steps {
            let valid = model.valid();
            let inner = device.clone().inner();
            let eval = evaluate(&valid, run, Split::Val, &inner);
            let train_loss = evaluate(&valid, run, Split::Train, &inner).loss;
            let val = eval.loss;
            state.last_val_loss = val;
            state.best_val_loss = if state.best_val_loss.is_nan() { val } else { state.best_val_loss.min(val) };
            if let Some(acc) = eval.accuracy {
                state.last_val_accuracy = Some(acc);
                state.last_val_accuracy_by_bucket = eval.by_bucket.clone();
                if state.best_val_accuracy.is_none_or(|b| acc > b) {
                    // The model selected on validation is scored on test now, not kept.
                    state.best_val_accuracy = Some(acc);
                    state.best_val_step = Some(state.step);
                    let test = evaluate(&valid, run, Split::Test, &inner);
                    state.test_accuracy_at_best_val = test.accuracy;
                    state.test_macro_accuracy_at_best_val = test.macro_accuracy;
                }
            }
            if spec.eval.published_protocol && run.data.has_test() {
                let test = evaluate(&valid, run, Split::Test, &inner);
                state.published = Published::update(state.published.take(), &test, state.step);
            }
            log(&MetricLine::Eval { step: state.step, val_loss: val, train_loss, val_accuracy: eval.accuracy, val_accuracy_by_bucket: eval.by_bucket })?;
            let acc = eval.accuracy.map_or(String::new(), |a| format!(", val accuracy {:.1}%", 100.0 * a));
            let speed = if window.1 > 0.0 { format!(", {:.0} tok/s", window.0 / window.1) } else { String::new() };
            window = (0.0, 0.0);
            say(&pb, false, format!("run {} step {:>6}/{}: train loss {train_loss:.4}, val loss {val:.4}{acc}{speed}", run.run_id, state.step, t.steps));
        }
        if t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0 && state.step < t.steps {
            state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
            if !save_checkpoint(&dir, &model, &optim, &state, &lock)? {
                // The update of this step made the weights non-finite: diverged.
                say(&pb, true, format!("run {}: the weights are non-finite at step {}: stopping it as diverged", run.run_id, state.step));
                diverged_at = Some(state.step);
                break;
            }
        }
        pb.set_position(state.step as u64);
    }
    if diverged_at.is_none() && non_finite_params(&model) > 0 {
        // The last update made the weights non-finite (the loss before it was finite).
        diverged_at = Some(state.step);
        say(&pb, true, format!("run {}: the weights are non-finite after step {}: marking it diverged", run.run_id, state.step));
    }
    // The final model's test score (tasks only): reported, never used to select.
    let test = (run.data.has_test() && diverged_at.is_none()).then(|| evaluate(&model.valid(), run, Split::Test, &device.clone().inner()));
    if let Some(test) = &test {
        let acc = test.accuracy.map_or(String::new(), |a| format!(", test accuracy {:.1}%", 100.0 * a));
        say(&pb, false, format!("run {} final model: test loss {:.4}{acc}", run.run_id, test.loss));
    }
    pb.finish_and_clear();
    state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
    if diverged_at.is_none() {
        // A diverged run keeps its last good checkpoint.
        save_checkpoint(&dir, &model, &optim, &state, &lock)?;
    }

    let mut sorted = state.step_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let timed_ms: f64 = sorted.iter().sum();
    let counts = model.param_counts();
    let inner = device.clone().inner();
    let tokens_per_sec = if timed_ms > 0.0 { tokens_per_step * sorted.len() as f64 / (timed_ms / 1e3) } else { f64::NAN };
    let flops_per_token = model.flops_per_token(t.block);
    let peak = crate::peak::peak_flops(&inner, &opts.device_name, t.precision.dtype());
    let mfu = tokens_per_sec.is_finite().then(|| crate::peak::mfu(flops_per_token, tokens_per_sec, peak));
    if let Some(m) = mfu.filter(|m| m.exceeded) {
        tracing::warn!("achieved {:.1} GFLOP/s exceed the measured matmul peak {:.1} GFLOP/s: MFU taken against the achieved figure (100%)", m.peak / 1e9, peak / 1e9);
    }
    let summary = Summary {
        run_id: run.run_id.clone(),
        experiment: spec.name.clone(),
        status: if diverged_at.is_some() { "diverged".into() } else { "finished".into() },
        diverged_at_step: diverged_at,
        attention: spec.model.mixer_label(),
        steps: t.steps,
        seed: t.seed,
        best_val_loss: state.best_val_loss,
        final_val_loss: state.last_val_loss,
        best_val_bits_per_token: state.best_val_loss / std::f64::consts::LN_2,
        best_val_accuracy: state.best_val_accuracy,
        final_val_accuracy: state.last_val_accuracy,
        final_val_accuracy_by_bucket: state.last_val_accuracy_by_bucket.clone(),
        final_test_accuracy: test.as_ref().and_then(|t| t.accuracy),
        final_test_accuracy_by_bucket: test.as_ref().and_then(|t| t.by_bucket.clone()),
        test_accuracy_at_best_val: state.test_accuracy_at_best_val,
        test_macro_accuracy_at_best_val: state.test_macro_accuracy_at_best_val,
        final_test_macro_accuracy: test.as_ref().and_then(|t| t.macro_accuracy),
        published_test_macro_accuracy: state.published.as_ref().and_then(|p| p.macro_accuracy),
        published_step: state.published.as_ref().map(|p| p.step),
        best_val_step: state.best_val_step,
        final_train_loss: state.last_train_loss,
        train_tokens_per_sec: tokens_per_sec,
        ms_per_step_median: percentile(&sorted, 0.5),
        ms_per_step_p90: percentile(&sorted, 0.9),
        params: counts.total,
        mixer_params: counts.mixer,
        kv_bytes_per_token: model.state_bytes(model.max_seq) / model.max_seq,
        kv_bytes_per_token_measured: measured_state_bytes(&model.valid(), &inner),
        flops_per_token,
        keys_attended: model.keys_attended(t.block),
        mfu: mfu.map(|m| m.value),
        peak_flops: Some(mfu.map_or(peak, |m| m.peak)),
        peak_exceeded: mfu.is_some_and(|m| m.exceeded),
        peak_rss_bytes: peak_rss_bytes(),
        device_memory_peak_bytes: device_peak,
        wall_seconds: state.wall_seconds,
        device: opts.device_name.clone(),
        device_detail: crate::device::describe(&inner),
        data_source: run.data_source.clone(),
        vocab: spec.model.vocab,
        extended_from: run.extends.as_ref().map(|e| e.from_run.clone()),
        extended_from_step: run.extends.as_ref().map(|e| e.from_step),
    };
    lock.verify()?;
    export_metrics(&dir);
    write_atomic(&dir.summary(), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(RunOutcome::Finished(summary))
}

/// Where a run stands in its store: `done`, `running` (locked by a live process),
/// `interrupted@<step>` (stopped by a signal), `resume@<step>` (killed after a periodic
/// checkpoint) or `new`.
pub fn run_status(out: &std::path::Path, run: &PreparedRun) -> String {
    let dir = RunDir::new(out, &run.spec.name, &run.run_id);
    if dir.summary().exists() {
        return "done".into();
    }
    if crate::lock::live_holder(&dir.root).is_some() {
        return "running".into();
    }
    match fs::read_to_string(dir.checkpoint().join("state.json")).ok().and_then(|s| serde_json::from_str::<TrainerState>(&s).ok()) {
        Some(state) if state.interrupted => format!("interrupted@{}", state.step),
        Some(state) => format!("resume@{}", state.step),
        None => "new".into(),
    }
}
