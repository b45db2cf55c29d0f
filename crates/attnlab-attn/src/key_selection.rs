//! Decode-time key selection over a trained grouped-query attention layer: each new token's
//! query heads attend exactly to a `budget` of the cached keys, chosen by
//!
//! - **Adamas** ([`crate::adamas`]): the smallest L1 distance between 2-bit Hadamard codes;
//! - **sink + window**: the first `sinks` positions and the most recent ones;
//! - **pages** (Quest-like, Tang et al. 2024): pages of `page` positions ranked by the upper
//!   bound `Σ_i max(q_i·min_i, q_i·max_i)` over the page's per-dimension key range, whole pages
//!   taken while they fit, the slots left filled with the most recent keys of the best page
//!   that did not fit;
//! - **oracle**: the true top scores `q·k_j` (the target whose recall the others are scored by).
//!
//! Conventions (MECHANISMS.md §8): the budget counts the current token, which is always
//! attended (Adamas' CUDA path); at `t ≤ budget` keys the layer is exactly dense; ties go to
//! the most recent key; each query head selects for itself (a GQA group's heads may pick
//! different keys). The cache lives on the host (keys after RoPE, values, packed codes); the
//! selected keys get an exact softmax in f32.
//!
//! Shapes: keys/values per (sequence, KV head) `[len, d_h]`; queries `[d_h]` after RoPE.

use burn::tensor::{Tensor, TensorData};

use crate::adamas;
use crate::grouped_query::GroupedQuery;

/// How a query picks its keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selector {
    Dense,
    Adamas { budget: usize },
    SinkWindow { budget: usize, sinks: usize },
    Pages { budget: usize, page: usize },
    Oracle { budget: usize },
}

impl Selector {
    /// The key budget (`None`: dense).
    pub fn budget(&self) -> Option<usize> {
        match *self {
            Selector::Dense => None,
            Selector::Adamas { budget } | Selector::SinkWindow { budget, .. } | Selector::Pages { budget, .. } | Selector::Oracle { budget } => Some(budget),
        }
    }
}

/// One layer's decode cache on the host, per (sequence, KV head) `s = b·g + γ`: keys after RoPE,
/// values, and Adamas' packed codes of the transformed keys under threshold `tau`.
#[derive(Debug, Clone)]
pub struct HostCache {
    pub batch: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tau: f32,
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    pub codes: Vec<Vec<u8>>,
    pub len: usize,
}

impl HostCache {
    pub fn new(batch: usize, kv_heads: usize, head_dim: usize, tau: f32) -> Self {
        assert!(head_dim.is_power_of_two() && head_dim >= 4, "Adamas codes need a power-of-two head_dim ≥ 4, got {head_dim}");
        let n = batch * kv_heads;
        Self { batch, kv_heads, head_dim, tau, keys: vec![Vec::new(); n], values: vec![Vec::new(); n], codes: vec![Vec::new(); n], len: 0 }
    }

    /// Appends keys and values `[b, g, n, d_h]` (n new tokens), coding each key.
    pub fn push(&mut self, k: Tensor<4>, v: Tensor<4>) {
        let [b, g, n, d] = k.dims();
        assert_eq!((b, g, d), (self.batch, self.kv_heads, self.head_dim), "host cache shape");
        let (k, v) = (host(k), host(v));
        for s in 0..b * g {
            for p in 0..n {
                let row = (s * n + p) * d;
                let mut key = k[row..row + d].to_vec();
                self.keys[s].extend_from_slice(&key);
                self.values[s].extend_from_slice(&v[row..row + d]);
                self.codes[s].extend(adamas::encode(&mut key, self.tau));
            }
        }
        self.len += n;
    }

    /// Key `j` of slot `s`.
    pub fn key(&self, s: usize, j: usize) -> &[f32] {
        &self.keys[s][j * self.head_dim..(j + 1) * self.head_dim]
    }

    /// Packed codes of key `j` of slot `s`.
    pub fn code(&self, s: usize, j: usize) -> &[u8] {
        let w = self.head_dim / 4;
        &self.codes[s][j * w..(j + 1) * w]
    }

    /// Bytes of the packed codes (all sequences): d_h/4 per token and KV head.
    pub fn code_bytes(&self) -> usize {
        self.codes.iter().map(Vec::len).sum()
    }
}

/// A tensor's values on the host (f32).
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 values")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The earliest `k` of `candidates` by `key` ascending, ties to the most recent position.
fn smallest(mut candidates: Vec<(f64, usize)>, k: usize) -> Vec<usize> {
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    candidates.into_iter().take(k).map(|(_, j)| j).collect()
}

/// The positions (ascending) query `q` (after RoPE, `[d_h]`) of slot `s` attends, the newest
/// cached token being the current one.
pub fn select(selector: &Selector, cache: &HostCache, s: usize, q: &[f32]) -> Vec<usize> {
    let t = cache.len;
    let Some(budget) = selector.budget().filter(|&b| t > b) else { return (0..t).collect() };
    let earlier = t - 1;
    let mut chosen = match *selector {
        Selector::Dense => unreachable!("no budget"),
        Selector::Adamas { .. } => {
            let mut qt = q.to_vec();
            let qc = adamas::encode(&mut qt, cache.tau);
            smallest((0..earlier).map(|j| (f64::from(adamas::l1_packed(&qc, cache.code(s, j))), j)).collect(), budget - 1)
        }
        Selector::Oracle { .. } => smallest((0..earlier).map(|j| (-f64::from(dot(q, cache.key(s, j))), j)).collect(), budget - 1),
        Selector::SinkWindow { sinks, .. } => (0..sinks.min(budget - 1)).chain(t - (budget - sinks.min(budget - 1))..earlier).collect(),
        Selector::Pages { page, .. } => {
            let d = cache.head_dim;
            let pages: Vec<(f64, usize)> = (0..earlier.div_ceil(page))
                .map(|p| {
                    let bound: f32 = (0..d)
                        .map(|i| {
                            let column = (p * page..((p + 1) * page).min(earlier)).map(|j| cache.key(s, j)[i]);
                            let (lo, hi) = column.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
                            (q[i] * lo).max(q[i] * hi)
                        })
                        .sum();
                    (-f64::from(bound), p)
                })
                .collect();
            // Whole pages by bound while they fit; the slots left go to the most recent keys of
            // the best page that did not fit, so every selector attends exactly `budget` keys.
            let mut keys = Vec::new();
            let mut partial = None;
            for p in smallest(pages, usize::MAX) {
                let span = p * page..((p + 1) * page).min(earlier);
                if keys.len() + span.len() <= budget - 1 {
                    keys.extend(span);
                } else if partial.is_none() {
                    partial = Some(span);
                }
            }
            if let Some(span) = partial {
                let room = budget - 1 - keys.len();
                keys.extend(span.rev().take(room));
            }
            keys
        }
    };
    chosen.push(t - 1);
    chosen.sort_unstable();
    chosen
}

/// Exact softmax attention of `q` `[d_h]` over the keys `keys` of slot `s` → `[d_h]`.
pub fn attend(cache: &HostCache, s: usize, q: &[f32], keys: &[usize]) -> Vec<f32> {
    let scale = 1.0 / (cache.head_dim as f32).sqrt();
    let scores: Vec<f32> = keys.iter().map(|&j| dot(q, cache.key(s, j)) * scale).collect();
    let top = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f32> = scores.iter().map(|x| (x - top).exp()).collect();
    let z: f32 = w.iter().sum();
    let d = cache.head_dim;
    let mut o = vec![0.0; d];
    for (&j, wj) in keys.iter().zip(&w) {
        let v = &cache.values[s][j * d..(j + 1) * d];
        for c in 0..d {
            o[c] += wj / z * v[c];
        }
    }
    o
}

/// What one decode step of a layer selected, for scoring: Σ recall of the oracle's earlier keys
/// (the budget − 1 largest true scores before the current token, which every selector attends
/// and which is left out of the count) and how many (sequence, head) rows had more keys than
/// the budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recall {
    pub sum: f64,
    pub rows: usize,
}

/// One decode step of a grouped-query layer over a host cache: the new token x `[b, 1, d_model]`
/// (normed) is projected at position `cache.len`, its K/V appended, each query head attends its
/// selected keys; → `[b, 1, d_model]`, with the recall of the oracle's keys when over budget.
pub fn step_layer(layer: &GroupedQuery, x: Tensor<3>, cache: &mut HostCache, selector: &Selector) -> (Tensor<3>, Recall) {
    let [b, new, _] = x.dims();
    assert_eq!(new, 1, "key selection decodes one token at a time");
    let (q, k, v, gate) = layer.project_at(x, cache.len);
    cache.push(k, v);
    let (h, d) = (layer.heads, layer.head_dim);
    let r = h / layer.kv_heads;
    let qs = host(q.clone());
    let mut out = Vec::with_capacity(b * h * d);
    let mut recall = Recall::default();
    for bi in 0..b {
        for head in 0..h {
            let s = bi * layer.kv_heads + head / r;
            let qv = &qs[(bi * h + head) * d..][..d];
            let keys = select(selector, cache, s, qv);
            if let Some(budget) = selector.budget().filter(|&bud| cache.len > bud) {
                // Over the earlier keys: the current token, which every selector attends, is
                // left out of both sets.
                let oracle = select(&Selector::Oracle { budget }, cache, s, qv);
                let current = cache.len - 1;
                recall.sum += keys.iter().filter(|&&j| j != current && oracle.binary_search(&j).is_ok()).count() as f64 / (budget - 1) as f64;
                recall.rows += 1;
            }
            out.extend(attend(cache, s, qv, &keys));
        }
    }
    let o = Tensor::<4>::from_data(TensorData::new(out, [b, h, 1, d]), &q.device());
    (layer.finish(o, gate), recall)
}
