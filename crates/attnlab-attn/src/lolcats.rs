//! LoLCATs linearisation (Zhang et al. 2024, "LoLCATs: On Low-Rank Linearizing of Large Language
//! Models"; HazyResearch/lolcats `linear_window_attention_tk.py`, `feature_map.py`). A trained
//! softmax layer keeps W_qkv, W_o and RoPE ([`GroupedQuery`] as `base`) and gains:
//!
//! - a learned feature map per *query* head on the post-RoPE q and k (after the K/V heads are
//!   repeated to the query heads): `φ(x) = [softmax(x W_h), softmax(−x W_h)] ∈ R^{2f}`,
//!   W `[H, d_h, f]` U(±√(6/(d_h·f))) (PyTorch's `kaiming_uniform_`), q and k unscaled, φ clamped
//!   ≥ 1e-12; the k map starts as a copy of the q map. `feature_map = "elu1"`: `elu(x) + 1`
//!   (d_φ = d_h), nothing learned (the paper's ablation);
//! - the sliding-window + linear hybrid ("TK"): with blocks of `window` = W tokens, query i sees
//!   by softmax the whole previous block and its own block up to i (keys
//!   `W·(⌊i/W⌋ − 1) ≤ j ≤ i`, clipped at 0: W + (i mod W) + 1 keys for i ≥ W), and by linear
//!   attention every earlier key (`j < W·(⌊i/W⌋ − 1)`). Blocks start at position 0 (as a
//!   streaming decode does; the reference aligns them to the sequence *end* when T mod W ≠ 0):
//!
//!   `y_i = (γ_h Σ_{j∈W_i} e^{s_ij − m_i} v_j + Σ_{j∈L_i} φ(q_i)ᵀφ(k_j) v_j) /
//!          (γ_h Σ_{j∈W_i} e^{s_ij − m_i} + Σ_{j∈L_i} φ(q_i)ᵀφ(k_j))`,
//!   `s_ij = q_i·k_j / √d_h`, `m_i = max_{j∈W_i} s_ij`, `γ_h = σ(w_h)`, w_h = logit(0.1) at init.
//!   As the reference, the row maximum shifts the softmax term only (its real weight is
//!   γ·e^{−m_i}). `window = 0`: no window, plain causal linear attention with the learned map
//!   (`j ≤ i`; the paper's "no sliding window" ablation);
//! - optional LoRA adapters (rank r, α) on W_q, W_k, W_v and W_o: `W + (α/r)·A B`, A `[d_in, r]`
//!   kaiming-uniform(a = √5) = U(±1/√d_in), B `[r, d_out]` = 0 (PEFT), so a new adapter is the
//!   identity; [`Lolcats::merge_lora`] folds them into the weights.
//!
//! Stage 1 (attention transfer, [`Lolcats::forward_transfer`]): the layer computes both its own
//! output and the softmax teacher's (per-head outputs before W_o), returns the MSE between them
//! as its auxiliary loss and passes the *teacher's* output on, so every layer trains on teacher
//! inputs and the logits are the teacher's.
//!
//! Training here uses the quadratic form (`[T, T]` score and mask matrices per head: O(T²)
//! time and memory, as the reference's training path). Decode is the exact TK rule: a ring of
//! the last ≤ 2W keys and values at `kv_heads`, plus a linear state `S = Σ φ(k)vᵀ` `[H, d_φ,
//! d_h]` and `z = Σ φ(k)` `[H, d_φ]`; entering block b moves block b − 2's W keys into the linear
//! state at once. Fixed size: `2·min(2W, capacity)·g·d_h + H·d_φ·(d_h + 1)` floats.
//! (The reference decodes a different rule, a 64-token sliding window folding one key per step.)

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};

use crate::config::LolcatsMap;
use crate::grouped_query::{merge_heads, repeat_heads, GroupedQuery};
use crate::linear::apply;
use crate::softmax_attention::causal_softmax_attention;
use crate::state::{write_in_place, LolcatsState};
use crate::F32_BYTES;

/// Lower clamp of the softmax feature map (the reference's `clamp(min=1e-12)`).
const PHI_MIN: f64 = 1e-12;
/// γ_h = σ(w_h) starts at 0.1.
pub const GAMMA_INIT: f64 = 0.1;

/// One LoRA adapter `(α/r)·A B`: A `[d_in, r]`, B `[r, d_out]`.
#[derive(Module, Debug)]
pub struct LoraPair {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
}

impl LoraPair {
    fn new(d_in: usize, d_out: usize, rank: usize, device: &Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Param::from_tensor(Tensor::random([d_in, rank], Distribution::Uniform(-bound, bound), device)),
            b: Param::from_tensor(Tensor::zeros([rank, d_out], device)),
        }
    }

    /// `x A B` (unscaled), x `[.., d_in]`.
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        attnlab_kernels::linear(attnlab_kernels::linear(x, self.a.val()), self.b.val())
    }

    /// `A B` `[d_in, d_out]`.
    fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val())
    }
}

/// LoRA adapters on W_q, W_k, W_v (column blocks of the fused W_qkv) and W_o.
#[derive(Module, Debug)]
pub struct LoraAdapters {
    pub q: LoraPair,
    pub k: LoraPair,
    pub v: LoraPair,
    pub out: LoraPair,
    /// α / r.
    pub scale: f64,
}

/// Shape and options of a [`Lolcats`] layer beyond its softmax base.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LolcatsOptions {
    /// Block size W of the TK window (0 = no window).
    pub window: usize,
    /// f of the softmax feature map (d_φ = 2f).
    pub feature_dim: usize,
    pub map: LolcatsMap,
    /// LoRA rank (0 = no adapters) and α.
    pub lora_rank: usize,
    pub lora_alpha: f64,
}

/// A linearised softmax layer (see the module doc).
#[derive(Module, Debug)]
pub struct Lolcats {
    /// The softmax layer's W_qkv, W_o and RoPE (the stage-1 teacher).
    pub base: GroupedQuery,
    /// `[H, d_h, f]` feature maps of q and k (`None` for `elu1`).
    pub q_map: Option<Param<Tensor<3>>>,
    pub k_map: Option<Param<Tensor<3>>>,
    /// w_h `[H]`, γ_h = σ(w_h) (`None` without a window).
    pub window_logit: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraAdapters>,
    pub window: usize,
}

impl Lolcats {
    /// A new layer around `base` (fresh maps, γ = 0.1, LoRA B = 0).
    pub fn new(base: GroupedQuery, options: LolcatsOptions, device: &Device) -> Self {
        let (h, d) = (base.heads, base.head_dim);
        let f = options.feature_dim;
        let q_map = (options.map == LolcatsMap::Softmax).then(|| {
            let bound = (6.0 / (d * f) as f64).sqrt();
            Tensor::<3>::random([h, d, f], Distribution::Uniform(-bound, bound), device)
        });
        let w0 = (GAMMA_INIT / (1.0 - GAMMA_INIT)).ln() as f32;
        let d_model = base.out.weight.dims()[1];
        let g = base.kv_heads;
        let lora = (options.lora_rank > 0).then(|| LoraAdapters {
            q: LoraPair::new(d_model, h * d, options.lora_rank, device),
            k: LoraPair::new(d_model, g * d, options.lora_rank, device),
            v: LoraPair::new(d_model, g * d, options.lora_rank, device),
            out: LoraPair::new(h * d, d_model, options.lora_rank, device),
            scale: options.lora_alpha / options.lora_rank as f64,
        });
        Self {
            // A copy with its own storage: a clone would share the autodiff leaf, and the
            // gradients of both maps would land on one parameter.
            k_map: q_map.as_ref().map(|q| Param::from_tensor(Tensor::from_data(q.to_data(), device))),
            q_map: q_map.map(Param::from_tensor),
            window_logit: (options.window > 0).then(|| Param::from_tensor(Tensor::full([h], w0, device))),
            lora,
            window: options.window,
            base,
        }
    }

    /// Width of φ.
    pub fn feature_width(&self) -> usize {
        self.q_map.as_ref().map_or(self.base.head_dim, |m| 2 * m.dims()[2])
    }

    /// The QKV projection with its adapters, `[b, t, (H + 2g)·d_h]`.
    fn qkv(&self, x: Tensor<3>) -> Tensor<3> {
        let y = apply(&self.base.qkv, x.clone());
        match &self.lora {
            None => y,
            Some(l) => y + Tensor::cat(vec![l.q.apply(x.clone()), l.k.apply(x.clone()), l.v.apply(x)], 2) * l.scale,
        }
    }

    /// The output projection with its adapter, o `[b, t, H·d_h]` → `[b, t, d_model]`.
    fn out(&self, o: Tensor<3>) -> Tensor<3> {
        let y = apply(&self.base.out, o.clone());
        match &self.lora {
            None => y,
            Some(l) => y + l.out.apply(o) * l.scale,
        }
    }

    /// q `[b, H, t, d]` and k, v repeated to the query heads `[b, H, t, d]`, rotated for `start..`.
    fn project(&self, x: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let (q, k, v) = self.base.split_rotate(self.qkv(x), start);
        let r = self.base.heads / self.base.kv_heads;
        (q, repeat_heads(k, r), repeat_heads(v, r))
    }

    /// φ of x `[b, H, t, d]` with the q map or the k map → `[b, H, t, d_φ]`.
    fn phi(&self, x: Tensor<4>, map: Option<&Param<Tensor<3>>>) -> Tensor<4> {
        match map {
            None => relu(x.clone()) + x.clamp_max(0.0).exp(),
            Some(w) => {
                let [h, d, f] = w.dims();
                let z = x.matmul(w.val().reshape([1, h, d, f]));
                Tensor::cat(vec![softmax(z.clone(), 3), softmax(z.neg(), 3)], 3).clamp_min(PHI_MIN)
            }
        }
    }

    /// γ_h `[1, H, 1, 1]`.
    fn gamma(&self) -> Tensor<4> {
        let w = self.window_logit.as_ref().expect("γ exists with a window");
        sigmoid(w.val()).reshape([1, self.base.heads, 1, 1])
    }

    /// Whether key j is in the softmax window of query i (TK blocks of `window`).
    pub fn in_window(window: usize, i: usize, j: usize) -> bool {
        window > 0 && j <= i && j >= (window * (i / window)).saturating_sub(window)
    }

    /// Whether key j reaches query i through the linear part.
    pub fn in_linear(window: usize, i: usize, j: usize) -> bool {
        j <= i && !Self::in_window(window, i, j)
    }

    /// The hybrid per-head outputs `[b, H, t, d]` of queries at positions `start..start + t`
    /// over keys at positions `0..s` (the quadratic form).
    fn hybrid(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, start: usize) -> Tensor<4> {
        let [_, _, t, d] = q.dims();
        let s = k.dims()[2];
        let device = q.device();
        let masks = |rule: fn(usize, usize, usize) -> bool| {
            let w = self.window;
            let data: Vec<bool> = (start..start + t).flat_map(|i| (0..s).map(move |j| rule(w, i, j))).collect();
            Tensor::<2, Bool>::from_data(TensorData::new(data, [t, s]), &device).unsqueeze::<4>()
        };
        let lin_mask = masks(Self::in_linear).float().cast(q.dtype());
        let lin = self.phi(q.clone(), self.q_map.as_ref()).matmul(self.phi(k.clone(), self.k_map.as_ref()).swap_dims(2, 3)) * lin_mask;
        let weights = if self.window == 0 {
            lin
        } else {
            let scores = (q * (1.0 / (d as f32).sqrt())).matmul(k.swap_dims(2, 3));
            let outside = masks(Self::in_window).bool_not();
            let scores = scores.clone().mask_fill(outside.clone().expand(scores.dims()), f32::NEG_INFINITY);
            let m = scores.clone().max_dim(3);
            let a = (scores - m).exp();
            a * self.gamma() + lin
        };
        let den = weights.clone().sum_dim(3);
        weights.matmul(v) / den
    }

    /// Causal training forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = self.project(x, 0);
        self.out(merge_heads(self.hybrid(q, k, v, 0)))
    }

    /// Stage 1 (attention transfer): the teacher's output (causal softmax of the same q, k, v,
    /// then W_o) and `mean((o_student − o_teacher)²)` over the per-head outputs `[1]`.
    pub fn forward_transfer(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        let (q, k, v) = self.project(x, 0);
        let t = q.dims()[2];
        let scale = 1.0 / (self.base.head_dim as f32).sqrt();
        let teacher = causal_softmax_attention(q.clone(), k.clone(), v.clone(), t, 0, scale).detach();
        let student = self.hybrid(q, k, v, 0);
        let mse = (student - teacher.clone()).powi_scalar(2).mean();
        (self.out(merge_heads(teacher)), mse)
    }

    /// W_qkv and W_o with the adapters folded in (`W + (α/r)·A B`) and no adapters left.
    pub fn merge_lora(mut self) -> Self {
        if let Some(l) = self.lora.take() {
            let qkv = Tensor::cat(vec![l.q.delta(), l.k.delta(), l.v.delta()], 1) * l.scale;
            let w = self.base.qkv.weight.val();
            self.base.qkv.weight = Param::from_tensor(w + qkv);
            let w = self.base.out.weight.val();
            self.base.out.weight = Param::from_tensor(w + l.out.delta() * l.scale);
        }
        self
    }

    /// Ring slots of the decode state: the window's last 2W keys (none without a window).
    fn slots(&self, capacity: usize) -> usize {
        (2 * self.window).min(capacity)
    }

    /// Empty decode state for `batch` sequences of up to `capacity` tokens.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> LolcatsState {
        let (h, g, d, dphi) = (self.base.heads, self.base.kv_heads, self.base.head_dim, self.feature_width());
        let slots = self.slots(capacity);
        LolcatsState {
            k: Tensor::zeros([batch, g, slots, d], device),
            v: Tensor::zeros([batch, g, slots, d], device),
            positions: vec![None; slots],
            s: Tensor::zeros([batch, h, dphi, d], device),
            z: Tensor::zeros([batch, h, dphi, 1], device),
            len: 0,
            capacity,
        }
    }

    /// Feeds x `[batch, new, d_model]` token by token (exact TK decode).
    pub fn step(&self, x: Tensor<3>, state: &mut LolcatsState) -> Tensor<3> {
        let new = x.dims()[1];
        let outs: Vec<Tensor<3>> = (0..new).map(|i| self.step_one(x.clone().narrow(1, i, 1), state)).collect();
        Tensor::cat(outs, 1)
    }

    fn step_one(&self, x: Tensor<3>, st: &mut LolcatsState) -> Tensor<3> {
        let p = st.len;
        assert!(p < st.capacity, "LoLCATs decode state: {} tokens > capacity {}", p + 1, st.capacity);
        let (q, k_new, v_new) = self.base.split_rotate(self.qkv(x), p);
        let (h, g, d) = (self.base.heads, self.base.kv_heads, self.base.head_dim);
        let r = h / g;
        let w = self.window;
        if w == 0 {
            self.fold(st, repeat_heads(k_new, r), repeat_heads(v_new, r));
        } else {
            // Entering block b ≥ 2 moves block b − 2 (slots (b − 2)·W mod 2W ..) into the linear state.
            if p % w == 0 && p >= 2 * w && st.positions.len() == 2 * w {
                let first = (p - 2 * w) % (2 * w);
                let k_old = st.k.clone().narrow(2, first, w);
                let v_old = st.v.clone().narrow(2, first, w);
                self.fold(st, repeat_heads(k_old, r), repeat_heads(v_old, r));
                for slot in first..first + w {
                    st.positions[slot] = None;
                }
            }
            let slot = p % (2 * w);
            let b = q.dims()[0];
            write_in_place(&mut st.k, [0..b, 0..g, slot..slot + 1, 0..d], k_new);
            write_in_place(&mut st.v, [0..b, 0..g, slot..slot + 1, 0..d], v_new);
            st.positions[slot] = Some(p);
        }
        st.len = p + 1;
        let phi_q = self.phi(q.clone(), self.q_map.as_ref());
        let mut num = phi_q.clone().matmul(st.s.clone());
        let mut den = phi_q.matmul(st.z.clone());
        if w > 0 {
            let (keys, values) = (repeat_heads(st.k.clone(), r), repeat_heads(st.v.clone(), r));
            let scores = (q * (1.0 / (d as f32).sqrt())).matmul(keys.swap_dims(2, 3));
            let empty: Vec<bool> = st.positions.iter().map(|p| p.is_none()).collect();
            let slots = empty.len();
            let outside = Tensor::<1, Bool>::from_data(TensorData::new(empty, [slots]), &scores.device()).reshape([1, 1, 1, slots]);
            let scores = scores.clone().mask_fill(outside.expand(scores.dims()), f32::NEG_INFINITY);
            let m = scores.clone().max_dim(3);
            let a = (scores - m).exp() * self.gamma();
            num = num + a.clone().matmul(values);
            den = den + a.sum_dim(3);
        }
        self.out(merge_heads(num / den))
    }

    /// `S += φ(k)ᵀ v`, `z += Σ φ(k)` for keys k, v `[b, H, n, d]`.
    fn fold(&self, st: &mut LolcatsState, k: Tensor<4>, v: Tensor<4>) {
        let phi_k = self.phi(k, self.k_map.as_ref()).swap_dims(2, 3);
        st.z = st.z.clone() + phi_k.clone().sum_dim(3);
        st.s = st.s.clone() + phi_k.matmul(v);
    }

    /// Bytes of the decode state of one sequence at `context` tokens (fixed beyond 2W).
    pub fn state_bytes(&self, context: usize) -> usize {
        let (h, g, d, dphi) = (self.base.heads, self.base.kv_heads, self.base.head_dim, self.feature_width());
        (2 * self.slots(context) * g * d + h * dphi * (d + 1)) * F32_BYTES
    }

    /// Forward FLOPs per token at `context` (decode rule): projections and adapters, φ of q and
    /// k, the window's scores and values, the linear state's read and update.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let (h, d, dphi) = (self.base.heads, self.base.head_dim, self.feature_width());
        let proj = self.base.qkv.weight.shape().num_elements() + self.base.out.weight.shape().num_elements();
        let lora = self.lora.as_ref().map_or(0, |l| [&l.q, &l.k, &l.v, &l.out].iter().map(|p| p.a.shape().num_elements() + p.b.shape().num_elements()).sum());
        let maps = self.q_map.as_ref().map_or(0, |m| 2 * m.shape().num_elements());
        let visible = context.min(2 * self.window);
        (2 * (proj + lora + maps) + 4 * h * d * visible + 4 * h * dphi * (d + 1)) as u64
    }
}
