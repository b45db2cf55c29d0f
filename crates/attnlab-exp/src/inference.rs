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
pub const EVAL_KEYS: &str = "eval.inference.kind (dense, star), eval.inference.block, eval.inference.anchor, eval.inference.hosts, eval.inference.query, eval.loops, eval.exit_q";

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
    /// window (default: a task's scored part and the token before it; text: ⌈T/8⌉).
    Star {
        block: usize,
        #[serde(default)]
        anchor: Option<usize>,
        #[serde(default = "two")]
        hosts: usize,
        #[serde(default)]
        query: Option<usize>,
    },
}

fn two() -> usize {
    2
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
        let settings: EvalSettings = table.try_into().map_err(|e: toml::de::Error| SpecError::new(format!("--set eval.…: {}; allowed: {EVAL_KEYS}", e.message())))?;
        if settings.loops == Some(0) {
            return Err(SpecError::new("eval.loops = 0: must be ≥ 1"));
        }
        if let Some(q) = settings.exit_q {
            if !(q > 0.0 && q <= 1.0) {
                return Err(SpecError::new(format!("eval.exit_q = {q}: must be in (0, 1]")));
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
    /// Mean cross-entropy over the scored query positions (a task's loss mask, or all).
    pub loss: f64,
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
    let query = match (query, first_scored) {
        (Some(q), _) => q,
        (None, Some(first)) => len - first.saturating_sub(1),
        (None, None) => len.div_ceil(8),
    };
    if query >= len {
        return Err(SpecError::new(format!("eval.inference.query = {query}: must be < the window's {len} tokens (the rest is the context)")));
    }
    if let Some(first) = first_scored.filter(|&f| f < len - query) {
        return Err(SpecError::new(format!("eval.inference.query = {query}: this task scores positions from {first} on; the query must hold them all (query ≥ {})", len - first)));
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
    let is_task = first_scored.is_some();
    let ratio = |a: f64, w: f64| if w > 0.0 { a / w } else { f64::NAN };
    Ok(StarScore {
        query,
        context,
        blocks: context.div_ceil(block),
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
