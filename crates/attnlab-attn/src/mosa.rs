//! Mixture of Sparse Attention (Piękos et al. 2025, "Mixture of Sparse Attention: Content-Based
//! Learnable Sparse Attention via Expert-Choice Routing"; piotrpiekos/MoSA `mosa/MoSA.py`,
//! `hybrid.py`).
//!
//! A layer of `dense_heads` causal softmax heads ([`GroupedQuery`], head width h′) beside E MoSA
//! heads, outputs summed. MoSA head e has a sigmoid router `r_e = σ(x W_r)_e` (W_r `[d, E]`,
//! U(±1/√d), no bias) and chooses a set I_e of tokens; it attends among I_e only, at their
//! original positions (RoPE on the first half of h′, rotate-half, positions of the original
//! sequence), with the causal mask `j ≤ i`:
//! `y_i += r_e(x_i) · (softmax_{j ∈ I_e, j ≤ i}(q_i k_jᵀ/√h′) V) W_{O,e}` for i ∈ I_e; tokens
//! outside I_e get nothing from head e. Q, K, V = X[I_e] W_{QKV,e} (`[E, d, 3h′]`,
//! U(±1/√(3h′))), W_{O,e} `[E, h′, d]` (U(±1/√(d·E))). The router learns only through r.
//!
//! Routing (`routing`):
//! - `expert_choice` — the paper's: I_e = the top k = min(max(⌊T/ρ⌋, 2), T) tokens of the
//!   sequence by r_e (ties to the lower index). **Not causal**: whether token t is chosen depends
//!   on the scores of later tokens, a channel for future information; no decode. Labelled
//!   `noncausal` in every table.
//! - `prefix` (attnlab's causal variant, the default) — token t is chosen iff its score ranks
//!   among the top ⌈(t + 1)/ρ⌉ of r_e(x_0..x_t) (ties to the lower index) and fewer than
//!   ⌈(t + 1)/ρ⌉ tokens were chosen before it: a decision from the prefix alone, so training and
//!   decode route identically. At most ⌈T/ρ⌉ tokens are chosen (the budget), as expert choice;
//!   under i.i.d. scores about T/ρ. Token 0 is always chosen and tokens 1..ρ − 1 never are
//!   (the budget is spent on token 0): a start-of-sequence asymmetry expert choice does not
//!   have. Decode keeps the router scores of every past token (4·E bytes per token) to rank the
//!   new one, and K/V of the chosen tokens only.
//!
//! Gather and scatter are index operations on the flattened input (`select`, and
//! `select_assign` with `Add` for the scatter, whose backward is again a `select`): each head's
//! chosen rows are read and written in place, O(k·d) per head, exact autodiff on every backend
//! (a token chosen by several heads is summed in an unspecified order on GPUs).
//! Prefix ranking keeps each head's prefix scores sorted on the host (a binary search and an
//! insertion per token). FLOPs per token (forward): the dense heads' plus, per MoSA head, 2dE for
//! the router and, for the 1/ρ of tokens it chooses, 8dh′ + 4h′·(context/ρ).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Bool, Device, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::config::MosaRouting;
use crate::grouped_query::GroupedQuery;
use crate::linear::{apply, linear};
use crate::rope::Rope;
use crate::state::{write_in_place, KvCache, MosaState};
use crate::F32_BYTES;

/// Mixture of Sparse Attention: dense heads plus routed heads.
#[derive(Module, Debug)]
pub struct Mosa {
    /// The dense heads (`None` when `dense_heads = 0`).
    pub dense: Option<GroupedQuery>,
    /// Router `d → E`.
    pub router: Linear,
    /// W_QKV per MoSA head `[E, d, 3h′]`.
    pub qkv: Param<Tensor<3>>,
    /// W_O per MoSA head `[E, h′, d]`.
    pub out: Param<Tensor<3>>,
    /// RoPE of the first `rope.dim()` dims of each MoSA head.
    pub rope: Rope,
    pub heads: usize,
    pub head_dim: usize,
    #[module(skip)]
    pub rho: usize,
    #[module(skip)]
    pub routing: MosaRouting,
}

/// Rotated dims of a head of width h′: half of them, even.
pub fn rope_dims(head_dim: usize) -> usize {
    2 * (head_dim / 4)
}

fn uniform<const D: usize>(shape: [usize; D], bound: f64, device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::random(shape, Distribution::Uniform(-bound, bound), device))
}

impl Mosa {
    #[allow(clippy::too_many_arguments)]
    pub fn new(d_model: usize, dense_heads: usize, heads: usize, head_dim: usize, rho: usize, routing: MosaRouting, max_seq: usize, rope_base: f32, device: &Device) -> Self {
        let rd = rope_dims(head_dim);
        let dense = (dense_heads > 0).then(|| GroupedQuery {
            qkv: linear(d_model, 3 * dense_heads * head_dim, device),
            out: linear(dense_heads * head_dim, d_model, device),
            gate: None,
            gate_bias: None,
            q_norm: None,
            k_norm: None,
            rope: Some(Rope::new(rd, max_seq, rope_base, device)),
            heads: dense_heads,
            kv_heads: dense_heads,
            head_dim,
            pattern: crate::mask::Pattern::Causal,
            kernel: crate::grouped_query::Kernel::Naive,
        });
        let mut router = linear(d_model, heads, device);
        router.weight = uniform([d_model, heads], 1.0 / (d_model as f64).sqrt(), device);
        Self {
            dense,
            router,
            qkv: uniform([heads, d_model, 3 * head_dim], 1.0 / ((3 * head_dim) as f64).sqrt(), device),
            out: uniform([heads, head_dim, d_model], 1.0 / ((d_model * heads) as f64).sqrt(), device),
            rope: Rope::new(rd, max_seq, rope_base, device),
            heads,
            head_dim,
            rho,
            routing,
        }
    }

    /// Tokens expert choice picks from a sequence of `t`: min(max(⌊t/ρ⌋, 2), t).
    pub fn expert_k(&self, t: usize) -> usize {
        (t / self.rho).max(2).min(t)
    }

    /// The chosen positions (ascending) of every (sequence, head) from the scores `r`
    /// `[b, t, E]` (row-major).
    pub fn select(&self, r: &[f32], b: usize, t: usize) -> Vec<Vec<usize>> {
        let e_n = self.heads;
        let mut out = Vec::with_capacity(b * e_n);
        for n in 0..b {
            for e in 0..e_n {
                let score = |p: usize| r[(n * t + p) * e_n + e];
                let chosen = match self.routing {
                    MosaRouting::ExpertChoice => {
                        let mut order: Vec<usize> = (0..t).collect();
                        order.sort_by(|&a, &c| score(c).total_cmp(&score(a)).then(a.cmp(&c)));
                        let mut top = order[..self.expert_k(t)].to_vec();
                        top.sort_unstable();
                        top
                    }
                    MosaRouting::Prefix => {
                        // The prefix's scores kept sorted (descending): the rank of token p is
                        // the number of earlier scores ≥ its own (ties to the earlier token).
                        let (mut chosen, mut sorted) = (Vec::new(), Vec::<f32>::with_capacity(t));
                        for p in 0..t {
                            let rank = sorted.partition_point(|&s| s >= score(p));
                            if prefix_chooses(rank, chosen.len(), p, self.rho) {
                                chosen.push(p);
                            }
                            sorted.insert(rank, score(p));
                        }
                        chosen
                    }
                };
                out.push(chosen);
            }
        }
        out
    }

    /// q, k, v `[b, E, n, h′]` of inputs x `[b, E, n, d]` (already gathered), RoPE'd with
    /// per-row tables cos, sin `[b, E, n, r/2]`.
    fn project(&self, xs: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, e, _, d] = xs.dims();
        let h = self.head_dim;
        let qkv = xs.matmul(self.qkv.val().unsqueeze::<4>().expand([b, e, d, 3 * h]));
        let rotate = |x: Tensor<4>| {
            let r = self.rope.dim();
            let half = r / 2;
            let (x1, x2, rest) = (x.clone().narrow(3, 0, half), x.clone().narrow(3, half, half), x.narrow(3, r, h - r));
            let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
            let r2 = x2 * cos.clone() + x1 * sin.clone();
            Tensor::cat(vec![r1, r2, rest], 3)
        };
        (rotate(qkv.clone().narrow(3, 0, h)), rotate(qkv.clone().narrow(3, h, h)), qkv.narrow(3, 2 * h, h))
    }

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (e_n, h) = (self.heads, self.head_dim);
        let device = x.device();
        let r = sigmoid(apply(&self.router, x.clone())); // [b, t, E]
        let scores: Vec<f32> = r.clone().into_data().convert::<f32>().try_into_vec::<f32>().expect("router scores");
        let chosen = self.select(&scores, b, t);
        let k = chosen.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let sel = Selection::new(&chosen, b, t, e_n, k);
        let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [b * e_n * k]), &device);
        let (rows, positions) = (index(sel.rows), index(sel.positions));
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(sel.mask, [b, e_n, k, k]), &device);
        let keep = Tensor::<4>::from_data(TensorData::new(sel.keep, [b, e_n, k, 1]), &device).cast(x.dtype());
        let xs = x.clone().reshape([b * t, d]).select(0, rows.clone()).reshape([b, e_n, k, d]);
        let (cos, sin) = self.rope.tables();
        let half = self.rope.dim() / 2;
        let table = |tab: Tensor<2>| tab.narrow(0, 0, t).cast(x.dtype()).select(0, positions.clone()).reshape([b, e_n, k, half]);
        let (q, kk, v) = self.project(xs, table(cos), table(sin));
        let att = softmax((q * (1.0 / (h as f32).sqrt())).matmul(kk.swap_dims(2, 3)).mask_fill(mask, f32::NEG_INFINITY), 3);
        let y = att.matmul(v).matmul(self.out.val().unsqueeze::<4>().expand([b, e_n, h, d])); // [b, E, k, d]
        let gate = r.reshape([b * t * e_n]).select(0, index(sel.scores)).reshape([b, e_n, k, 1]) * keep;
        let routed = Tensor::<2>::zeros([b * t, d], &device)
            .cast(x.dtype())
            .select_assign(0, rows, (y * gate).reshape([b * e_n * k, d]), IndexingUpdateOp::Add)
            .reshape([b, t, d]);
        match &self.dense {
            Some(dense) => dense.forward(x) + routed,
            None => routed,
        }
    }

    /// Empty state: the dense heads' KV cache, K/V slots for ⌈capacity/ρ⌉ chosen tokens per
    /// MoSA head, room for every token's router scores. With expert choice the state exists
    /// (its bytes are reported) but [`Mosa::step`] refuses to run.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> MosaState {
        let slots = capacity.div_ceil(self.rho).max(1);
        let shape = [batch, self.heads, slots, self.head_dim];
        MosaState {
            dense: self.dense.as_ref().map(|m| KvCache {
                k: Tensor::zeros([batch, m.kv_heads, capacity, m.head_dim], device),
                v: Tensor::zeros([batch, m.kv_heads, capacity, m.head_dim], device),
                len: 0,
            }),
            k: Tensor::zeros(shape, device),
            v: Tensor::zeros(shape, device),
            chosen: vec![0; batch * self.heads],
            scores: Vec::with_capacity(batch * self.heads * capacity),
            capacity,
            len: 0,
        }
    }

    /// Feeds x: `[batch, new, d_model]` one token at a time.
    pub fn step(&self, x: Tensor<3>, state: &mut MosaState) -> Tensor<3> {
        assert_eq!(self.routing, MosaRouting::Prefix, "mosa: routing = \"expert_choice\" is not causal and has no decode (MECHANISMS.md §6); use routing = \"prefix\"");
        let [b, new, _] = x.dims();
        let parts: Vec<Tensor<3>> = (0..new).map(|p| self.step_one(x.clone().narrow(1, p, 1), b, state)).collect();
        Tensor::cat(parts, 1)
    }

    fn step_one(&self, x: Tensor<3>, b: usize, state: &mut MosaState) -> Tensor<3> {
        let (e_n, h) = (self.heads, self.head_dim);
        let d = x.dims()[2];
        let t = state.len;
        assert!(t < state.capacity, "MoSA cache full: {} tokens > capacity {}", t + 1, state.capacity);
        let device = x.device();
        let r = sigmoid(apply(&self.router, x.clone())); // [b, 1, E]
        let rv: Vec<f32> = r.clone().into_data().convert::<f32>().try_into_vec::<f32>().expect("router scores");
        let mut take = vec![0f32; b * e_n];
        for n in 0..b {
            for e in 0..e_n {
                let be = n * e_n + e;
                let past = &state.scores[..];
                let s_new = rv[be];
                let rank = (0..t).filter(|&s| past[s * b * e_n + be] >= s_new).count();
                if prefix_chooses(rank, state.chosen[be], t, self.rho) {
                    take[be] = 1.0;
                }
            }
        }
        state.scores.extend_from_slice(&rv);
        // q, k, v of the new token for every head, RoPE at position t.
        let xs = x.clone().unsqueeze_dim::<4>(1).expand([b, e_n, 1, d]);
        let (cos, sin) = self.rope.tables();
        let half = self.rope.dim() / 2;
        let row = |tab: Tensor<2>| tab.narrow(0, t, 1).cast(x.dtype()).unsqueeze::<4>().expand([b, e_n, 1, half]);
        let (q, k, v) = self.project(xs, row(cos), row(sin));
        let slots = state.k.dims()[2];
        for n in 0..b {
            for e in 0..e_n {
                let be = n * e_n + e;
                if take[be] == 1.0 {
                    let c = state.chosen[be];
                    let range = [n..n + 1, e..e + 1, c..c + 1, 0..h];
                    write_in_place(&mut state.k, range.clone(), k.clone().slice([n..n + 1, e..e + 1, 0..1, 0..h]));
                    write_in_place(&mut state.v, range, v.clone().slice([n..n + 1, e..e + 1, 0..1, 0..h]));
                    state.chosen[be] += 1;
                }
            }
        }
        // Attention over each head's chosen slots (slot 0 left visible when none, its output
        // multiplied by 0).
        let mask: Vec<bool> = (0..b * e_n).flat_map(|be| (0..slots).map(move |s| (be, s))).map(|(be, s)| s >= state.chosen[be].max(1)).collect();
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(mask, [b, e_n, 1, slots]), &device);
        let att = softmax((q * (1.0 / (h as f32).sqrt())).matmul(state.k.clone().swap_dims(2, 3)).mask_fill(mask, f32::NEG_INFINITY), 3);
        let y = att.matmul(state.v.clone()).matmul(self.out.val().unsqueeze::<4>().expand([b, e_n, h, d])); // [b, E, 1, d]
        let take = Tensor::<4>::from_data(TensorData::new(take, [b, e_n, 1, 1]), &device).cast(x.dtype());
        let gate = r.swap_dims(1, 2).unsqueeze_dim::<4>(3) * take; // [b, E, 1, 1]
        let routed = (y * gate).sum_dim(1).reshape([b, 1, d]);
        state.len += 1;
        match (&self.dense, &mut state.dense) {
            (Some(dense), Some(cache)) => dense.step_kv(x, cache) + routed,
            _ => routed,
        }
    }

    /// The dense heads' K/V for `context` tokens, the chosen tokens' K/V (⌈context/ρ⌉ per MoSA
    /// head) and every token's router scores (E floats).
    pub fn state_bytes(&self, context: usize) -> usize {
        let dense = self.dense.as_ref().map_or(0, |m| m.state_bytes(context));
        dense + (2 * self.heads * self.head_dim * context.div_ceil(self.rho).max(1) + self.heads * context) * F32_BYTES
    }

    /// The dense heads' FLOPs plus, per MoSA head, the router (2d) and, for the 1/ρ of tokens it
    /// chooses, the projections (8dh′) and attention over the chosen keys (4h′·context/ρ).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let dense = self.dense.as_ref().map_or(0, |m| m.flops_per_token(context));
        let d = self.router.weight.dims()[0];
        let per_chosen = 8 * d * self.head_dim + 4 * self.head_dim * context.div_ceil(self.rho);
        dense + (self.heads * (2 * d + per_chosen / self.rho)) as u64
    }
}

/// Where the rows of the routed heads come from: for (sequence n, head e, slot a), flattened
/// row-major `[b, E, k]`, the row `n·t + p` of the flattened input (p the slot's token), the
/// position p (RoPE), the router score's flat index `(n·t + p)·E + e`, whether the slot holds a
/// chosen token (`keep`; padding slots read token 0 and are multiplied by 0), and the mask
/// `[b, E, k, k]` (true = not allowed): slot a sees slot c iff c holds a chosen token no later
/// than a's; padding slots see themselves only.
struct Selection {
    rows: Vec<i64>,
    positions: Vec<i64>,
    scores: Vec<i64>,
    keep: Vec<f32>,
    mask: Vec<bool>,
}

impl Selection {
    fn new(chosen: &[Vec<usize>], b: usize, t: usize, e_n: usize, k: usize) -> Self {
        let n_slots = b * e_n * k;
        let mut s = Selection { rows: vec![0; n_slots], positions: vec![0; n_slots], scores: vec![0; n_slots], keep: vec![0.0; n_slots], mask: vec![true; n_slots * k] };
        for (be, set) in chosen.iter().enumerate() {
            let (n, e) = (be / e_n, be % e_n);
            for a in 0..k {
                let slot = be * k + a;
                let p = set.get(a).copied();
                let row = n * t + p.unwrap_or(0);
                s.rows[slot] = row as i64;
                s.positions[slot] = p.unwrap_or(0) as i64;
                s.scores[slot] = (row * e_n + e) as i64;
                s.keep[slot] = if p.is_some() { 1.0 } else { 0.0 };
                let seen = if p.is_some() { 0..=a } else { a..=a };
                for c in seen {
                    s.mask[slot * k + c] = false;
                }
            }
        }
        s
    }
}

/// Prefix routing: token `p` with score rank `rank` among tokens 0..=p (0 = best, ties to the
/// earlier token), `chosen` tokens chosen before it, is chosen iff both are below ⌈(p + 1)/ρ⌉.
pub fn prefix_chooses(rank: usize, chosen: usize, p: usize, rho: usize) -> bool {
    let budget = (p + 1).div_ceil(rho);
    rank < budget && chosen < budget
}
