//! Memory estimates from a config, checked before anything is allocated or written, so an
//! impossible size (`model.d_model = 1e9`, `train.batch = 2^62`, `bench decode --contexts 1e12`)
//! is a one-line error (exit 2) naming its largest term, not an allocator abort.
//!
//! The estimates are meant as lower bounds (f64, so no product can wrap): weights, gradients
//! and the two AdamW moments; the activations a step keeps for its backward (without
//! attention's T × T scores); evaluation batches; the decode state and RoPE tables at
//! `max_seq`. The bound they are checked against is the machine's memory (`MemTotal`, or the
//! root cgroup's `memory.max` when smaller; nested cgroup v2 and cgroup v1 limits are not
//! read), or `--max-memory`. On an accelerator only the host-side terms are checked.

use std::sync::atomic::{AtomicU64, Ordering};

use attnlab_attn::AttentionConfig;
use attnlab_model::{MlpKind, ModelConfig};

use crate::error::SpecError;
use crate::spec::ExperimentSpec;

/// Bytes of one f32.
const F32: f64 = 4.0;

static MAX_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Sets the bound (`--max-memory`), replacing the machine's memory.
pub fn set_max_memory(bytes: u64) {
    MAX_MEMORY.store(bytes, Ordering::SeqCst);
}

/// Parses `--max-memory`: bytes, or a number with K, M, G or T (powers of 1024, `iB` optional).
pub fn parse_bytes(s: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::new(format!("--max-memory = {s:?}: expected a size such as 8G, 512MiB or 1000000 (bytes), > 0"));
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c @ ('K' | 'k' | 'M' | 'm' | 'G' | 'g' | 'T' | 't')) => {
            let p = "kmgt".find(c.to_ascii_lowercase()).expect("listed") as i32 + 1;
            (&t[..t.len() - 1], 1024f64.powi(p))
        }
        _ => (t, 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = v * mult;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cgroup_limit() -> Option<u64> {
    std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?.trim().parse().ok()
}

/// The bound estimates are checked against, and where it comes from.
pub fn limit() -> (f64, &'static str) {
    match MAX_MEMORY.load(Ordering::SeqCst) {
        0 => match (meminfo_total(), cgroup_limit()) {
            (Some(m), Some(c)) if c < m => (c as f64, "this machine's memory (cgroup limit; --max-memory sets another bound)"),
            (Some(m), _) => (m as f64, "this machine's memory (--max-memory sets another bound)"),
            (None, _) => (f64::INFINITY, "unknown"),
        },
        b => (b as f64, "--max-memory"),
    }
}

/// Named lower-bound terms, in bytes.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    pub terms: Vec<(String, f64)>,
}

impl Estimate {
    fn add(&mut self, name: impl Into<String>, bytes: f64) {
        self.terms.push((name.into(), bytes));
    }
    pub fn total(&self) -> f64 {
        self.terms.iter().map(|(_, b)| b).sum()
    }
    /// The largest term.
    pub fn dominant(&self) -> Option<&(String, f64)> {
        self.terms.iter().max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Human bytes: `1.5 GiB`.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{v:.0} B") } else if v.is_finite() { format!("{v:.1} {}", units[i]) } else { "∞".into() }
}

/// A lower bound of the model's parameters.
pub fn params(m: &ModelConfig) -> f64 {
    let d = m.d_model as f64;
    let (heads, layers) = (m.heads.max(1) as f64, m.layers as f64);
    let hidden = match (m.mlp_hidden, m.mlp) {
        (0, MlpKind::Gelu) => 4.0 * d,
        (0, MlpKind::Swiglu) => 8.0 * d / 3.0,
        (h, _) => h as f64,
    };
    let mlp = hidden * d * if m.mlp == MlpKind::Swiglu { 3.0 } else { 2.0 };
    // Every mixer has at least an output projection of d × d; delta kinds' head widths may be set.
    let mixers: f64 = m
        .layer_attentions()
        .map(|a| match (a.delta_dims(m.d_model, m.heads.max(1)), a) {
            (Some((dk, dv)), AttentionConfig::GatedDeltanet { value_heads: Some(hv), .. }) => 2.0 * d * (heads * dk as f64 + *hv as f64 * dv as f64),
            (Some((dk, dv)), _) => 2.0 * d * heads * (dk as f64 + dv as f64),
            (None, _) => d * d,
        })
        .sum();
    let positions = if m.positions == attnlab_model::Positions::Learned { m.max_seq as f64 * d } else { 0.0 };
    m.vocab as f64 * d + positions + mixers + layers * (mlp + 2.0 * d) + d
}

/// Decode-state bytes of one sequence at `capacity` tokens, all layers (a lower bound: the
/// KV cache of softmax kinds, a sliding window's ring buffer, MLA's latents, and at least
/// `d_model` floats a layer for the fixed-size state of a recurrent kind).
pub fn state_bytes(m: &ModelConfig, capacity: usize) -> f64 {
    m.loops as f64 * m.layer_attentions().map(|a| layer_state_bytes(m, a, capacity)).sum::<f64>()
}

/// [`state_bytes`] of one layer with mixer `a`.
fn layer_state_bytes(m: &ModelConfig, a: &AttentionConfig, capacity: usize) -> f64 {
    let heads = m.heads.max(1);
    let (d, head_dim) = (m.d_model as f64, (m.d_model / heads) as f64);
    let tokens = match a {
        AttentionConfig::SlidingWindow { window, global_tokens, .. } => window.saturating_add(*global_tokens).min(capacity),
        // A ring of the last two window blocks (the linear state is not counted: a lower bound).
        AttentionConfig::Lolcats { window, .. } => window.saturating_mul(2).min(capacity),
        _ => capacity,
    } as f64;
    if let (AttentionConfig::Mosa { rho, dense_heads, .. }, Some((routed, h))) = (a, a.mosa_dims(m.d_model, heads)) {
        // Dense heads' K/V, routed heads' K/V for ⌈tokens/ρ⌉ chosen tokens, router scores.
        let chosen = capacity.div_ceil((*rho).max(1)) as f64;
        (2.0 * (*dense_heads * h) as f64 * tokens + 2.0 * (routed * h) as f64 * chosen + routed as f64 * tokens) * F32
    } else if let Some(kv) = a.kv_heads(heads) {
        2.0 * kv as f64 * head_dim * F32 * tokens
    } else if let Some((latent, rope)) = a.mla_dims(m.d_model / heads) {
        (latent + rope) as f64 * F32 * tokens
    } else if matches!(a, AttentionConfig::Differential {}) {
        2.0 * d * F32 * tokens
    } else {
        d * F32
    }
}

/// RoPE tables: every softmax layer holds cos and sin for `max_seq` positions (recurrent kinds
/// and NoPE MLA have none; a partial RoPE's smaller table is counted at full head width).
fn rope_bytes(m: &ModelConfig) -> f64 {
    let no_table = |a: &AttentionConfig| {
        matches!(
            a,
            AttentionConfig::Linear { .. } | AttentionConfig::LogLinear { .. } | AttentionConfig::GatedDeltanet { .. } | AttentionConfig::Kda { .. } | AttentionConfig::Mla { rope: false, .. }
        )
    };
    let softmax_layers = m.layer_attentions().filter(|a| !no_table(a)).count();
    softmax_layers as f64 * m.max_seq as f64 * (m.d_model / m.heads.max(1)) as f64 * F32
}

/// The model at rest: weights (with gradients and AdamW moments when training) and its RoPE
/// tables.
fn model_terms(e: &mut Estimate, m: &ModelConfig, optimizer: bool) {
    let p = params(m);
    if optimizer {
        e.add(format!("weights, gradients and AdamW moments ({p:.3e} parameters × 16 bytes)"), 16.0 * p);
    } else {
        e.add(format!("weights ({p:.3e} parameters × 4 bytes)"), F32 * p);
    }
    e.add(format!("RoPE tables for model.max_seq = {} positions", m.max_seq), rope_bytes(m));
}

/// Whether the run's device is an accelerator, whose memory this check does not know.
static ACCELERATOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Declares the device of the runs checked from now on: on an accelerator (wgpu, cuda) the
/// model and activations live in its memory, which is not known here, so only host-side terms
/// are checked.
pub fn set_accelerator(on: bool) {
    ACCELERATOR.store(on, Ordering::SeqCst);
}

/// Training memory of one run.
pub fn training(spec: &ExperimentSpec) -> Estimate {
    let (m, t) = (&spec.model, &spec.train);
    let mut e = Estimate::default();
    let tokens = t.batch as f64 * t.block as f64;
    let sets = if spec.data.task.is_some() { 2.0 } else { 1.0 };
    e.add(
        format!("evaluation batches (eval.batches × train.batch × train.block = {:.3e} tokens)", spec.eval.batches as f64 * tokens * sets),
        spec.eval.batches as f64 * tokens * sets * 16.0,
    );
    if ACCELERATOR.load(Ordering::SeqCst) {
        return e;
    }
    model_terms(&mut e, m, true);
    // The summary measures the decode state of one sequence at max_seq.
    e.add(format!("decode state at model.max_seq = {}", m.max_seq), state_bytes(m, m.max_seq));
    let tokens = t.batch as f64 * t.block as f64;
    let d = m.d_model as f64;
    let hidden = if m.mlp_hidden == 0 { 2.0 * d } else { m.mlp_hidden as f64 };
    e.add(
        format!("activations (train.batch × train.block = {tokens:.3e} tokens × {} layers × {} loops)", m.layers, m.loops),
        // A learned exit keeps every loop's logits.
        tokens * F32 * ((m.layers * m.loops) as f64 * (6.0 * d + 2.0 * hidden) + 3.0 * m.vocab as f64 * if m.exit == attnlab_model::Exit::Learned { m.loops as f64 } else { 1.0 }),
    );
    e
}

/// Cached decode of `batch` sequences up to `capacity` tokens.
pub fn decode(m: &ModelConfig, batch: usize, capacity: usize) -> Estimate {
    let mut e = Estimate::default();
    let mut m = m.clone();
    m.max_seq = capacity;
    if ACCELERATOR.load(Ordering::SeqCst) {
        return e;
    }
    model_terms(&mut e, &m, false);
    e.add(format!("decode state of {batch} sequences × {capacity} tokens"), batch as f64 * state_bytes(&m, capacity));
    e
}

/// One attention layer over `batch × seq` tokens of width `d_model` (`bench scaling`).
pub fn layer(d_model: usize, batch: usize, seq: usize) -> Estimate {
    let mut e = Estimate::default();
    e.add(format!("activations of one layer ({batch} × {seq} tokens × {d_model} wide)"), batch as f64 * seq as f64 * d_model as f64 * F32 * 4.0);
    e
}

/// A square f32 matmul of side `n` (`bench peak`): three n × n matrices.
pub fn matmul(n: usize) -> Estimate {
    let mut e = Estimate::default();
    e.add(format!("three {n} × {n} f32 matrices"), 3.0 * n as f64 * n as f64 * F32);
    e
}

/// Errors (exit 2) when the estimate exceeds the bound, naming its largest term.
pub fn check(e: &Estimate, source: &str) -> Result<(), SpecError> {
    let (bound, from) = limit();
    let total = e.total();
    if total <= bound {
        return Ok(());
    }
    let (name, bytes) = e.dominant().cloned().unwrap_or_default();
    Err(SpecError::new(format!(
        "{source}: needs at least {} of memory, more than {} ({from}); the largest part: {name}: {}",
        human(total),
        human(bound),
        human(bytes)
    )))
}
