//! Inference-time settings of `attnlab eval` (`--set eval.…`; not part of any run's config, so
//! they never change a run id) and the evaluations that need more than the model's forward:
//!
//! - `eval.inference = { kind = "star", block, anchor, hosts, query }`: Star Attention
//!   ([`attnlab_model::star`]) — each window's last `query` tokens are the query, the rest the
//!   context encoded block by block; the query positions are scored, next to global attention
//!   on the same positions, and phase 1 is timed against a global (cached) prefill;
//! - `eval.loops = R`: a looped model run with R loops instead of the trained count;
//! - `eval.exit_q = q`: Ouro's Q-exit (a learned exit): each token's logits from the first loop
//!   whose exit CDF reaches q.

use std::time::Instant;

use attnlab_data::Split;
use attnlab_attn::key_selection::Selector;
use attnlab_model::sparse_decode;
use attnlab_model::star::{self, StarSettings};
use attnlab_model::Gpt;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::overrides::apply_set;
use crate::spec::PreparedRun;
use crate::trainer::EVAL_SEED;
use crate::SpecError;

/// What `--set eval.…` may set.
pub const EVAL_KEYS: &str = "eval.inference.kind (dense, star, adamas, sink_window, pages, oracle); star: eval.inference.block, .anchor, .hosts, .query; adamas, sink_window, pages, oracle: eval.inference.budget, .prefill, .dense_layers, .tau (adamas), .sinks (sink_window), .page (pages); eval.loops, eval.exit_q";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    pub inference: Inference,
    /// Loops of a looped model at evaluation (default: the trained `model.loops`).
    pub loops: Option<usize>,
    /// Q-exit threshold in (0, 1] (a model with `model.exit = "learned"`).
    pub exit_q: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Inference {
    /// The model's own forward.
    #[default]
    Dense,
    /// Star Attention: `block` context tokens per block; `anchor` (default: `block`, as the
    /// reference; 0 = no anchor); `hosts` threads (default 2); `query` final tokens of each
    /// window, the only ones scored (default: a task's scored part and the token before it when
    /// that leaves half the window as context, else the last ⌈T/4⌉; text: the last ⌈T/8⌉).
    Star {
        block: usize,
        #[serde(default)]
        anchor: Option<usize>,
        #[serde(default = "two")]
        hosts: usize,
        #[serde(default)]
        query: Option<usize>,
    },
    /// Adamas at decode: each window's first `prefill` tokens (default: half) prefilled densely,
    /// the rest decoded one at a time attending `budget` keys (the current one included) chosen
    /// by 2-bit Hadamard codes; the first `dense_layers` (default 2) layers dense; `tau`
    /// (default: calibrated per layer on the prefill keys).
    Adamas {
        budget: usize,
        #[serde(default)]
        tau: Option<f32>,
        #[serde(default)]
        prefill: Option<usize>,
        #[serde(default = "two")]
        dense_layers: usize,
    },
    /// The sink + window baseline at the same protocol: the first `sinks` (default 4) and the
    /// most recent keys.
    SinkWindow {
        budget: usize,
        #[serde(default = "four")]
        sinks: usize,
        #[serde(default)]
        prefill: Option<usize>,
        #[serde(default = "two")]
        dense_layers: usize,
    },
    /// Quest-like page selection at the same protocol: pages of `page` keys (default 16).
    Pages {
        budget: usize,
        #[serde(default = "sixteen")]
        page: usize,
        #[serde(default)]
        prefill: Option<usize>,
        #[serde(default = "two")]
        dense_layers: usize,
    },
    /// The true top-`budget` keys by score (the bound every selector's recall is measured against).
    Oracle {
        budget: usize,
        #[serde(default)]
        prefill: Option<usize>,
        #[serde(default = "two")]
        dense_layers: usize,
    },
}

fn four() -> usize {
    4
}

fn sixteen() -> usize {
    16
}

/// A decode-time key selection: the selector, τ, prefill and dense layers.
pub struct Selection {
    pub selector: Selector,
    pub tau: Option<f32>,
    pub prefill: Option<usize>,
    pub dense_layers: usize,
}

impl Inference {
    /// The key selection this setting decodes with, if it is one.
    pub fn selection(&self) -> Option<Selection> {
        let s = |selector, tau, prefill: &Option<usize>, dense_layers: &usize| Some(Selection { selector, tau, prefill: *prefill, dense_layers: *dense_layers });
        match self {
            Inference::Dense | Inference::Star { .. } => None,
            Inference::Adamas { budget, tau, prefill, dense_layers } => s(Selector::Adamas { budget: *budget }, *tau, prefill, dense_layers),
            Inference::SinkWindow { budget, sinks, prefill, dense_layers } => s(Selector::SinkWindow { budget: *budget, sinks: *sinks }, None, prefill, dense_layers),
            Inference::Pages { budget, page, prefill, dense_layers } => s(Selector::Pages { budget: *budget, page: *page }, None, prefill, dense_layers),
            Inference::Oracle { budget, prefill, dense_layers } => s(Selector::Oracle { budget: *budget }, None, prefill, dense_layers),
        }
    }
}

fn two() -> usize {
    2
}

/// The fields of each `eval.inference.kind` (besides `kind`), and whether each is a whole number.
const KIND_FIELDS: &[(&str, &[&str])] = &[
    ("dense", &[]),
    ("star", &["block", "anchor", "hosts", "query"]),
    ("adamas", &["budget", "tau", "prefill", "dense_layers"]),
    ("sink_window", &["budget", "sinks", "prefill", "dense_layers"]),
    ("pages", &["budget", "page", "prefill", "dense_layers"]),
    ("oracle", &["budget", "prefill", "dense_layers"]),
];

/// Field names and value types before serde reads the table, so that a misspelt field is named
/// as such (serde would first report the required field it hides) and a value of the wrong type
/// names its field.
fn check_fields(eval: &toml::Value) -> Result<(), SpecError> {
    let number = |key: &str, v: &toml::Value, whole: bool| -> Result<(), SpecError> {
        let ok = if whole { v.as_integer().is_some_and(|i| i >= 0) } else { v.as_float().is_some() || v.as_integer().is_some() };
        if ok {
            Ok(())
        } else {
            Err(SpecError::new(format!("{key} = {v}: must be {}", if whole { "a whole number ≥ 0" } else { "a number" })))
        }
    };
    let Some(table) = eval.as_table() else { return Ok(()) };
    for (key, value) in table {
        match key.as_str() {
            "loops" => number("eval.loops", value, true)?,
            "exit_q" => number("eval.exit_q", value, false)?,
            "inference" => {}
            other => return Err(SpecError::new(format!("eval.{other}: unknown; allowed: {EVAL_KEYS}"))),
        }
    }
    let Some(inference) = table.get("inference").and_then(|v| v.as_table()) else { return Ok(()) };
    let kind = inference.get("kind").and_then(|k| k.as_str()).unwrap_or("dense");
    let kinds: Vec<&str> = KIND_FIELDS.iter().map(|(k, _)| *k).collect();
    let Some((_, fields)) = KIND_FIELDS.iter().find(|(k, _)| *k == kind) else {
        return Err(SpecError::new(format!("eval.inference.kind = {kind:?}: allowed: {}", kinds.join(", "))));
    };
    for (key, value) in inference.iter().filter(|(k, _)| k.as_str() != "kind") {
        if !fields.contains(&key.as_str()) {
            let allowed = if fields.is_empty() { "none".to_string() } else { fields.join(", ") };
            return Err(SpecError::new(format!("eval.inference.{key}: unknown for kind = {kind:?}; its fields: {allowed}")));
        }
        number(&format!("eval.inference.{key}"), value, key != "tau")?;
    }
    Ok(())
}

impl EvalSettings {
    /// Settings from `--set eval.KEY=VALUE` pairs, checked for what needs no model.
    pub fn from_sets(sets: &[String]) -> Result<Self, SpecError> {
        let mut root = toml::Value::Table(toml::Table::new());
        for set in sets {
            let key = set.split_once('=').map_or(set.as_str(), |(k, _)| k.trim());
            if !key.starts_with("eval.") {
                return Err(SpecError::new(format!("--set {key}: attnlab eval takes only inference-time settings: {EVAL_KEYS}")));
            }
            apply_set(&mut root, set).map_err(|e| SpecError::new(format!("--set {set}: {e}")))?;
        }
        let table = root.get("eval").cloned().unwrap_or(toml::Value::Table(toml::Table::new()));
        check_fields(&table)?;
        let settings: EvalSettings = table.try_into().map_err(|e: toml::de::Error| SpecError::new(format!("--set eval.…: {}; allowed: {EVAL_KEYS}", e.message())))?;
        if settings.loops == Some(0) {
            return Err(SpecError::new("eval.loops = 0: must be ≥ 1"));
        }
        if let Some(q) = settings.exit_q {
            if !(q > 0.0 && q <= 1.0) {
                return Err(SpecError::new(format!("eval.exit_q = {q}: must be in (0, 1]")));
            }
        }
        if settings.inference != Inference::Dense && (settings.loops.is_some() || settings.exit_q.is_some()) {
            return Err(SpecError::new("eval.loops / eval.exit_q: they change a looped model's own forward; allowed only with eval.inference.kind = \"dense\""));
        }
        if let Inference::Adamas { tau: Some(tau), .. } = settings.inference {
            if !(tau.is_finite() && tau > 0.0) {
                return Err(SpecError::new(format!("eval.inference.tau = {tau}: must be a finite number > 0 (or left out: calibrated per layer)")));
            }
        }
        if let Inference::Star { block, anchor, hosts, query } = settings.inference {
            if query == Some(0) {
                return Err(SpecError::new("eval.inference.query = 0: must be ≥ 1"));
            }
            star::check_settings(&StarSettings { block, anchor: anchor.unwrap_or(block), hosts }).map_err(SpecError::new)?;
        }
        Ok(settings)
    }

    /// A short label of every non-default setting (`dense` when none).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Inference::Star { block, anchor, hosts, query } = &self.inference {
            let anchor = anchor.unwrap_or(*block);
            parts.push(format!("star block={block} anchor={anchor} hosts={hosts}{}", query.map_or(String::new(), |q| format!(" query={q}"))));
        }
        if let Some(r) = self.loops {
            parts.push(format!("loops={r}"));
        }
        if let Some(q) = self.exit_q {
            parts.push(format!("exit_q={q}"));
        }
        if let Some(sel) = self.inference.selection() {
            let name = match sel.selector {
                Selector::Adamas { budget } => format!("adamas budget={budget}{}", sel.tau.map_or(String::new(), |t| format!(" tau={t}"))),
                Selector::SinkWindow { budget, sinks } => format!("sink_window budget={budget} sinks={sinks}"),
                Selector::Pages { budget, page } => format!("pages budget={budget} page={page}"),
                Selector::Oracle { budget } => format!("oracle budget={budget}"),
                Selector::Dense => "dense".into(),
            };
            parts.push(format!("{name} dense_layers={}{}", sel.dense_layers, sel.prefill.map_or(String::new(), |p| format!(" prefill={p}"))));
        }
        if parts.is_empty() {
            "dense".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Star Attention scored on the query positions of `split`'s evaluation windows, next to global
/// attention on the same positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StarScore {
    /// Query tokens per window (the last ones); the context is the rest.
    pub query: usize,
    pub context: usize,
    pub blocks: usize,
    /// Scored tokens in the query parts of all windows (a task's loss mask there, or all); the
    /// context's positions are not scored (phase 1 only encodes them).
    #[serde(default)]
    pub scored_tokens: usize,
    /// Mean cross-entropy over the scored query positions.
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub global_loss: f64,
    /// A task's token accuracy on the scored positions.
    pub accuracy: Option<f64>,
    pub global_accuracy: Option<f64>,
    /// Wall seconds of phase 1 (all windows) and of a global cached prefill of the same context.
    pub phase1_seconds: f64,
    pub prefill_seconds: f64,
    /// Bytes of the sharded KV cache after phase 1 (all windows of one batch), and the largest host's share.
    pub cache_bytes: usize,
    pub largest_host_bytes: usize,
}

/// Sums of masked cross-entropy, weights, right answers over query positions.
#[derive(Default)]
struct Tally {
    loss: f64,
    weight: f64,
    right: f64,
}

impl Tally {
    fn add(&mut self, logits: Tensor<3>, targets: &[i64], mask: &[f32], device: &Device) {
        let [b, q, vocab] = logits.dims();
        let flat = logits.reshape([b * q, vocab]);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [b * q, 1]), device);
        let ce: Vec<f32> = log_softmax(flat.clone(), 1).gather(1, ids).neg().into_data().convert::<f32>().try_into_vec::<f32>().expect("losses");
        let predicted: Vec<i64> = flat.argmax(1).into_data().convert::<i64>().try_into_vec::<i64>().expect("argmax");
        for i in 0..b * q {
            let w = mask[i] as f64;
            self.loss += w * ce[i] as f64;
            self.weight += w;
            self.right += w * f64::from(u8::from(predicted[i] == targets[i]));
        }
    }
}

/// Star Attention on `split` (see [`StarScore`]).
pub fn score_star(model: &Gpt, run: &PreparedRun, split: Split, settings: &EvalSettings, device: &Device) -> Result<StarScore, SpecError> {
    let Inference::Star { block, anchor, hosts, query } = settings.inference else { unreachable!("a star setting") };
    let star = StarSettings { block, anchor: anchor.unwrap_or(block), hosts };
    star::check(model, &star).map_err(SpecError::new)?;
    let t = &run.spec.train;
    let batches = run.data.eval_batches(split, EVAL_SEED, run.spec.eval.batches, t.batch, t.block);
    let len = t.block;
    // Where scoring starts in any window: the query must cover it.
    let first_scored = batches
        .iter()
        .filter_map(|eb| eb.batch.loss_mask.as_ref().map(|m| m.iter().enumerate().filter(|(_, &w)| w > 0.0).map(|(i, _)| i % len).min().unwrap_or(len)))
        .min();
    // Default: a task's scored part and the token before it when that leaves at least half the
    // window as context (the needle: its last 2 tokens), else the last quarter; text: the last eighth.
    let query = match (query, first_scored) {
        (Some(q), _) => q,
        (None, Some(first)) if len - first.saturating_sub(1) <= len / 2 => len - first.saturating_sub(1),
        (None, Some(_)) => len.div_ceil(4),
        (None, None) => len.div_ceil(8),
    };
    if query >= len {
        return Err(SpecError::new(format!("eval.inference.query = {query}: must be < the window's {len} tokens (the rest is the context)")));
    }
    let context = len - query;
    let (mut star_tally, mut global_tally) = (Tally::default(), Tally::default());
    let (mut phase1, mut prefill) = (0.0, 0.0);
    let (mut cache_bytes, mut largest) = (0, 0);
    for eb in &batches {
        let b = eb.batch.batch;
        let ids = Tensor::<2, Int>::from_data(TensorData::new(eb.batch.inputs.clone(), [b, len]), device);
        let (ctx, qry) = (ids.clone().narrow(1, 0, context), ids.narrow(1, context, query));
        let started = Instant::now();
        let mut cache = star::encode(model, ctx.clone(), &star);
        // Wait for the device (a GPU runs asynchronously): read the last layer's last shard back.
        if let Some((k, _)) = cache.layers.last().and_then(|l| l.iter().rev().find_map(|s| s.kv.clone())) {
            let _ = k.narrow(2, 0, 1).into_data();
        }
        phase1 += started.elapsed().as_secs_f64();
        cache_bytes = cache.bytes();
        largest = (0..star.hosts).map(|h| cache.layers.iter().map(|l| l[h].bytes()).sum::<usize>()).max().unwrap_or(0);
        let started = Instant::now();
        let mut states = model.init_states(b, len, device);
        let prefilled = model.step(ctx, &mut states);
        let _ = prefilled.narrow(1, context - 1, 1).into_data();
        prefill += started.elapsed().as_secs_f64();
        let star_logits = star::decode(model, &mut cache, qry.clone());
        let global_logits = model.step(qry, &mut states);
        let targets: Vec<i64> = (0..b).flat_map(|r| eb.batch.targets[r * len + context..(r + 1) * len].to_vec()).collect();
        let mask: Vec<f32> = match &eb.batch.loss_mask {
            Some(m) => (0..b).flat_map(|r| m[r * len + context..(r + 1) * len].to_vec()).collect(),
            None => vec![1.0; b * query],
        };
        star_tally.add(star_logits, &targets, &mask, device);
        global_tally.add(global_logits, &targets, &mask, device);
    }
    if global_tally.weight == 0.0 {
        return Err(SpecError::new(format!("eval.inference.query = {query}: no scored position of this task falls in the last {query} tokens; raise it")));
    }
    let is_task = first_scored.is_some();
    let ratio = |a: f64, w: f64| if w > 0.0 { a / w } else { f64::NAN };
    Ok(StarScore {
        query,
        context,
        blocks: context.div_ceil(block),
        scored_tokens: global_tally.weight as usize,
        loss: ratio(star_tally.loss, star_tally.weight),
        global_loss: ratio(global_tally.loss, global_tally.weight),
        accuracy: is_task.then(|| ratio(star_tally.right, star_tally.weight)),
        global_accuracy: is_task.then(|| ratio(global_tally.right, global_tally.weight)),
        phase1_seconds: phase1,
        prefill_seconds: prefill,
        cache_bytes,
        largest_host_bytes: largest,
    })
}

/// Decode-time key selection scored on the decoded positions of `split`'s windows, next to the
/// dense model on the same positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SparseScore {
    /// Tokens prefilled densely per window; the rest are decoded one at a time.
    pub prefill: usize,
    pub decoded: usize,
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub dense_loss: f64,
    pub accuracy: Option<f64>,
    pub dense_accuracy: Option<f64>,
    /// Mean fraction of the oracle's keys selected: the budget − 1 earlier keys of largest true
    /// score (the current token, always attended, left out), over the (sequence, head, step) rows
    /// of the selecting layers with more keys than the budget (NaN when none).
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub recall: f64,
    /// Adamas' threshold per layer (the last window's; calibrated on its prefill).
    pub taus: Vec<f32>,
    /// Wall seconds of the sparse decode (host-side selection and attention) and of the dense
    /// cached decode of the same tokens (Burn ops): not a speed comparison of the methods.
    pub decode_seconds: f64,
    pub dense_decode_seconds: f64,
    /// Bytes of Adamas' packed key codes per token (the selecting layers, one sequence).
    pub code_bytes_per_token: usize,
}

/// Key selection (Adamas or a baseline) on `split` (see [`SparseScore`]).
pub fn score_sparse(model: &Gpt, run: &PreparedRun, split: Split, settings: &EvalSettings, device: &Device) -> Result<SparseScore, SpecError> {
    let sel = settings.inference.selection().expect("a key-selection setting");
    sparse_decode::check(model, &sel.selector).map_err(SpecError::new)?;
    let layers = model.blocks.len();
    if sel.dense_layers >= layers {
        return Err(SpecError::new(format!("eval.inference.dense_layers = {}: the model has {layers} layers, so none would select keys; allowed: 0 to {}", sel.dense_layers, layers - 1)));
    }
    let t = &run.spec.train;
    let len = t.block;
    let prefill = sel.prefill.unwrap_or(len / 2);
    if prefill == 0 || prefill >= len {
        return Err(SpecError::new(format!("eval.inference.prefill = {prefill}: allowed: 1 to {} (the window has {len} tokens; at least one is decoded)", len - 1)));
    }
    let batches = run.data.eval_batches(split, EVAL_SEED, run.spec.eval.batches, t.batch, t.block);
    let decoded = len - prefill;
    let (mut sparse_tally, mut dense_tally) = (Tally::default(), Tally::default());
    let (mut recall_sum, mut recall_rows) = (0.0, 0usize);
    let (mut sparse_seconds, mut dense_seconds) = (0.0, 0.0);
    let mut taus = Vec::new();
    let mut code_bytes = 0;
    for eb in &batches {
        let b = eb.batch.batch;
        let ids = Tensor::<2, Int>::from_data(TensorData::new(eb.batch.inputs.clone(), [b, len]), device);
        let (_, mut decoder) = sparse_decode::prefill(model, ids.clone().narrow(1, 0, prefill), sel.selector, sel.dense_layers, sel.tau);
        let mut states = model.init_states(b, len, device);
        model.step(ids.clone().narrow(1, 0, prefill), &mut states);
        let (mut sparse, mut dense) = (Vec::with_capacity(decoded), Vec::with_capacity(decoded));
        for p in prefill..len {
            let token = ids.clone().narrow(1, p, 1);
            let started = Instant::now();
            let (logits, recall) = sparse_decode::step(model, &mut decoder, token.clone());
            sparse_seconds += started.elapsed().as_secs_f64();
            recall_sum += recall.sum;
            recall_rows += recall.rows;
            sparse.push(logits);
            let started = Instant::now();
            let logits = model.step(token, &mut states);
            let _ = logits.clone().narrow(2, 0, 1).into_data();
            dense_seconds += started.elapsed().as_secs_f64();
            dense.push(logits);
        }
        taus = decoder.taus();
        code_bytes = decoder.caches.iter().skip(sel.dense_layers).map(|c| c.code_bytes()).sum::<usize>() / (b * len);
        let targets: Vec<i64> = (0..b).flat_map(|r| eb.batch.targets[r * len + prefill..(r + 1) * len].to_vec()).collect();
        let mask: Vec<f32> = match &eb.batch.loss_mask {
            Some(m) => (0..b).flat_map(|r| m[r * len + prefill..(r + 1) * len].to_vec()).collect(),
            None => vec![1.0; b * decoded],
        };
        sparse_tally.add(Tensor::cat(sparse, 1), &targets, &mask, device);
        dense_tally.add(Tensor::cat(dense, 1), &targets, &mask, device);
    }
    if dense_tally.weight == 0.0 {
        return Err(SpecError::new(format!("eval.inference.prefill = {prefill}: this task scores no position after it; lower the prefill")));
    }
    let is_task = batches.iter().any(|eb| eb.batch.loss_mask.is_some());
    let ratio = |a: f64, w: f64| if w > 0.0 { a / w } else { f64::NAN };
    Ok(SparseScore {
        prefill,
        decoded,
        loss: ratio(sparse_tally.loss, sparse_tally.weight),
        dense_loss: ratio(dense_tally.loss, dense_tally.weight),
        accuracy: is_task.then(|| ratio(sparse_tally.right, sparse_tally.weight)),
        dense_accuracy: is_task.then(|| ratio(dense_tally.right, dense_tally.weight)),
        recall: if recall_rows > 0 { recall_sum / recall_rows as f64 } else { f64::NAN },
        taus,
        decode_seconds: sparse_seconds,
        dense_decode_seconds: dense_seconds,
        code_bytes_per_token: code_bytes,
    })
}
