//! Ouro's learned exit for looped depth (Zhu et al. 2025, "Scaling Latent Reasoning via Looped
//! Language Models"; `../shared/MECHANISMS.md` §12; HF `modeling_ouro.py`).
//!
//! After loop r (of R), on the final-normed state n_r: exit probability `λ_r = σ(w·n_r + b)`
//! (`Linear(d, 1)` with bias, shared by loops) and logits `ℓ_r = lm_head(n_r)`. The exit
//! distribution over loops is `p(r) = λ_r Π_{j<r}(1 − λ_j)` for r < R and `p(R) = Π_{j<R}(1 − λ_j)`
//! (λ_R is not used). Stage-I objective per token: `Σ_r p(r)·CE(ℓ_r) − β·H(p)` (an ELBO with a
//! uniform prior over depth), backpropagated through all loops.
//!
//! Stage II ([`improvement_loss`], a third-party reading of the paper's Eqs. 4–5, as
//! MECHANISMS.md §12): the LM frozen, the gate alone learns from the per-token loss improvement
//! of each loop, `I_r = max(0, CE_{r−1} − CE_r)` (detached), target `w_r = σ(50·(I_r − 0.005))`,
//! loss `BCE(1 − λ_r, w_r)` averaged over r = 2..R and the tokens (λ_r paired with loop r's own
//! improvement): a loop that still improves the loss should not be exited before.
//!
//! Q-exit at inference ([`q_exit`], `attnlab eval --set eval.exit_q=q`): per token, the first
//! loop r whose exit CDF `Σ_{s≤r} p(s) = 1 − Π_{j≤r}(1 − λ_j)` reaches q, else the last loop.
//! All loops are computed (as HF's `OuroModel.forward` does); the loops a token would use are
//! reported, not saved. Decode reads the last loop.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::Tensor;

/// The stage-I loss from per-token cross-entropies `ce` `[R, n]` and gate logits `[R, n]`
/// (row R − 1 unused), each token weighted by `weights` `[n]` (a task's loss mask, or ones):
/// `Σ_i w_i (Σ_r p_ir CE_ir − β H(p_i)) / max(Σ_i w_i, 1)`. Log-probabilities from log σ, so
/// saturated gates stay finite.
pub fn exit_loss(ce: Tensor<2>, gate_logits: Tensor<2>, weights: Tensor<1>, beta: f64) -> Tensor<1> {
    let [r, n] = ce.dims();
    let log_p = exit_log_probs(gate_logits, r, n);
    let p = log_p.clone().exp();
    let expected = (p.clone() * ce).sum_dim(0).reshape([n]);
    let entropy = (p * log_p).sum_dim(0).reshape([n]).neg();
    let per_token = expected - entropy * beta;
    let total = weights.clone().sum();
    (per_token * weights).sum() / total.clamp_min(1.0)
}

/// `log p(r)` `[R, n]` of the exit distribution from gate logits `[R, n]`.
pub fn exit_log_probs(gate_logits: Tensor<2>, r: usize, n: usize) -> Tensor<2> {
    let log_stay = log_sigmoid(gate_logits.clone().neg()); // log(1 − λ)
    let log_exit = log_sigmoid(gate_logits); // log λ
    // Survival before loop r: Σ_{j<r} log(1 − λ_j) (exclusive prefix sum).
    let survived = Tensor::cat(vec![Tensor::zeros([1, n], &log_stay.device()), log_stay.narrow(0, 0, r - 1).cumsum(0)], 0);
    let last = survived.clone().narrow(0, r - 1, 1);
    Tensor::cat(vec![survived.narrow(0, 0, r - 1) + log_exit.narrow(0, 0, r - 1), last], 0)
}

/// Q-exit: for gate logits `[R][n]` (loop-major), the loop (0-based) each of the n tokens exits
/// at: the first r < R − 1 with `1 − Π_{j≤r}(1 − σ(g_j)) ≥ q`, else R − 1. In f64, so a gate of
/// λ ≈ 1 reaches q = 1 only when it does in f64 (σ(g) rounds to 1 in f32 for g ≳ 17).
pub fn q_exit(gate_logits: &[Vec<f32>], q: f64) -> Vec<usize> {
    let r = gate_logits.len();
    let n = gate_logits.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            let mut stay = 1.0f64;
            for (loop_index, g) in gate_logits.iter().take(r - 1).enumerate() {
                // 1 − σ(g) = σ(−g), without the cancellation of 1 − σ(g) at large g.
                stay *= 1.0 / (1.0 + (g[i] as f64).exp());
                if 1.0 - stay >= q {
                    return loop_index;
                }
            }
            r - 1
        })
        .collect()
}

/// Ouro's stage-II loss from per-token cross-entropies `ce` `[R, n]` (detached here) and gate
/// logits `[R, n]` (row 0 unused), each token weighted by `weights` `[n]`:
/// `Σ_i w_i · mean_{r ≥ 2} BCE(1 − λ_ir, t_ir) / max(Σ_i w_i, 1)`, `t = σ(50·(max(0, CE_{r−1} − CE_r) − 0.005))`,
/// `BCE(p, t) = −t·log p − (1 − t)·log(1 − p)` with `log(1 − λ) = log σ(−g)`, `log λ = log σ(g)`.
pub fn improvement_loss(ce: Tensor<2>, gate_logits: Tensor<2>, weights: Tensor<1>) -> Tensor<1> {
    let [r, n] = ce.dims();
    let ce = ce.detach();
    let improvement = (ce.clone().narrow(0, 0, r - 1) - ce.narrow(0, 1, r - 1)).clamp_min(0.0);
    let target = burn::tensor::activation::sigmoid((improvement - 0.005) * 50.0);
    let g = gate_logits.narrow(0, 1, r - 1);
    let bce = (target.clone() * log_sigmoid(g.clone().neg()) + (target.neg() + 1.0) * log_sigmoid(g)).neg();
    let per_token = bce.mean_dim(0).reshape([n]);
    let total = weights.clone().sum();
    (per_token * weights).sum() / total.clamp_min(1.0)
}
