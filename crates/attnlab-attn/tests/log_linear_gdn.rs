//! Log-linear Gated DeltaNet against an independent f64 reference written from GDN's effective
//! attention, `o_t = Σ_s λ_t^{bucket(t,s)} P_ts v_s`, `P_ts = β_s q_tᵀ(A_t ⋯ A_{s+1})k_s`,
//! `A = α(I − β k kᵀ)`, built token by token from q_t backwards (neither the WY inverse of the
//! training forms nor the per-level recurrence of decode), with the layer's conv, SiLU, L2
//! norms, gates, output norm and gate. The layer's three paths are checked against it: the
//! chunked training form (the forward: chunks 1–64, one-hot λ, gradients against finite
//! differences), the dense form (the same) and the Fenwick recurrence (decode across powers of
//! two, one-hot λ); λ all equal gives Gated DeltaNet itself (its chunked WY form) on all three.
//!
//! Mutations planted and seen to fail:
//! - chunked form (forward test at chunks 8, 4, 2, 1; one-hot λ in chunks of 4; gradients in
//!   chunks of 2): the buckets read from level 0 up (levels shifted by one); the chunk-level binary
//!   carry skipped; the chunks' transition M_i skipped, or applied after inserting the chunk's
//!   writes; the level mask inside a chunk dropped; λ of the levels across chunks read one level
//!   low (`log₂C + ℓ' − 1`); the chunk not capped at the sequence's next power of two
//!   (`a_chunk_longer_than_the_levels_cover_is_fine`: an out-of-range level);
//! - recurrence (decode and one-hot tests): the transition applied to level 0 only (higher levels
//!   left undecayed); the transition skipped; S^(0) = k vᵀ without β;
//! - dense form (forward, one-hot and gradient tests): V without the β factor; the level mask
//!   applied to the scores before the WY inverse, `((QKᵀ ⊙ Γ) ⊙ M)(I + A)⁻¹`; the exclusive
//!   cumsum of the log-decays in Γ; across chunks (forward test at chunks 5, 8, 1): the carry
//!   M_i skipped, M without its decay e^{G_C}, the writes F_j without the decay to the chunk's end.

mod common;

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::config::LogLinearBase;
use attnlab_attn::recurrent::log_linear::level;
use attnlab_attn::{Attention, AttentionConfig, FeatureMap, LogLinearGdn, Recurrent};
use common::recurrent::*;
use common::*;

const D_MODEL: usize = 16;
const HEADS: usize = 2;

fn layer(seed: u64, dev: &Device) -> LogLinearGdn {
    layer_with_levels(seed, None, dev)
}

/// [`layer`] with `levels` (None: those of 64 positions, 7).
fn layer_with_levels(seed: u64, levels: Option<usize>, dev: &Device) -> LogLinearGdn {
    let config = AttentionConfig::LogLinear { base: LogLinearBase::GatedDeltanet, feature_map: FeatureMap::Elu1, levels, chunk: 64 };
    let Attention::LogLinearGdn(m) = seeded(dev, seed, || config.init(D_MODEL, HEADS, 64, 10_000.0, dev)) else { panic!("expected log-linear GDN") };
    let mut m = sharpen(m, 4.0);
    // Decays of order 0.3–0.97 (A = 0.05 and 1.2), Λ = 4 so that λ varies.
    m.base.a_log = Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.05f32.ln(), 1.2f32.ln()], [2]), dev).set_require_grad(dev.is_autodiff()));
    m.level_scale = Param::from_tensor((m.level_scale.val() * 4.0).detach().set_require_grad(dev.is_autodiff()));
    m
}

/// λ `[t][h][L]` of one sequence.
fn reference_lambda(m: &LogLinearGdn, xs: &[f64], t: usize) -> Vec<Vec<Vec<f64>>> {
    let (h, l) = (m.base.heads, m.levels);
    let z = matmul(xs, t, D_MODEL, &to_vec(m.level_proj.weight.val()), h * l);
    let scale = to_vec(m.level_scale.val());
    (0..t).map(|i| (0..h).map(|j| (0..l).map(|k| softplus(scale[j * l + k] * z[i * h * l + j * l + k])).collect()).collect()).collect()
}

/// One sequence x `[t][d]` through the layer, by GDN's effective attention.
fn reference(m: &LogLinearGdn, xs: &[f64], t: usize, lambda: &[Vec<Vec<f64>>]) -> Vec<f64> {
    let g = &m.base;
    let (h, dk, dv) = (g.heads, g.key_dim, g.value_dim);
    let width = 2 * h * dk + h * dv;
    let pw = g.proj.weight.dims()[1];
    let p = rows(&matmul(xs, t, D_MODEL, &to_vec(g.proj.weight.val()), pw), t, pw);
    let conv = short_conv(&take(&p, 0, width), &to_vec(g.conv.as_ref().unwrap().weight.val()), 4);
    let act: Vec<Vec<f64>> = conv.iter().map(|r| r.iter().map(|x| silu(*x)).collect()).collect();
    let (a_log, dt_bias) = (to_vec(g.a_log.val()), to_vec(g.dt_bias.val()));
    let gamma = to_vec(g.norm.gamma.val());
    let mut concat = vec![0.0; t * h * dv];
    for j in 0..h {
        let q: Vec<Vec<f64>> = (0..t).map(|i| l2(&act[i][j * dk..(j + 1) * dk]).iter().map(|x| x / (dk as f64).sqrt()).collect()).collect();
        let k: Vec<Vec<f64>> = (0..t).map(|i| l2(&act[i][h * dk + j * dk..h * dk + (j + 1) * dk])).collect();
        let v: Vec<Vec<f64>> = (0..t).map(|i| act[i][2 * h * dk + j * dv..2 * h * dk + (j + 1) * dv].to_vec()).collect();
        let beta: Vec<f64> = (0..t).map(|i| sigmoid(p[i][width + j])).collect();
        let alpha: Vec<f64> = (0..t).map(|i| (-a_log[j].exp() * softplus(p[i][width + h + j] + dt_bias[j])).exp()).collect();
        for ti in 0..t {
            // w = q_tᵀ A_t ⋯ A_{s+1}, built from s = t down.
            let mut w = q[ti].clone();
            let mut o = vec![0.0; dv];
            for s in (0..=ti).rev() {
                let wk: f64 = w.iter().zip(&k[s]).map(|(a, b)| a * b).sum();
                let weight = lambda[ti][j][level(ti, s)] * beta[s] * wk;
                for (o, vv) in o.iter_mut().zip(&v[s]) {
                    *o += weight * vv;
                }
                // w ← w A_s = α_s (w − β_s (w·k_s) k_s).
                w = w.iter().zip(&k[s]).map(|(wi, ki)| alpha[s] * (wi - beta[s] * wk * ki)).collect();
            }
            let normed = rms_norm(&o, &gamma, 1e-5);
            for c in 0..dv {
                let gate = silu(p[ti][width + 2 * h + j * dv + c]);
                concat[ti * h * dv + j * dv + c] = normed[c] * gate;
            }
        }
    }
    matmul(&concat, t, h * dv, &to_vec(g.out.weight.val()), D_MODEL)
}

#[test]
fn forward_matches_the_effective_attention_reference() {
    let dev = cpu();
    let dense = |m: &LogLinearGdn, x: Tensor<3>| m.forward_dense(x.clone(), m.lambda(x));
    // The chunked form (the forward): one chunk, and chunks of 8, 4, 2, 1 with ragged last ones
    // and up to 5 levels across chunks (t = 64 in chunks of 2: 32 chunks); the dense form over
    // WY blocks of any length.
    let chunked: [(usize, usize); 9] = [(1, 64), (6, 64), (19, 64), (40, 64), (19, 4), (40, 8), (37, 2), (40, 1), (64, 2)];
    let cases = chunked.iter().map(|&c| ("chunked", c)).chain([(19, 64), (19, 5), (40, 8), (40, 1)].map(|c| ("dense", c)));
    for (form, (t, chunk)) in cases {
        let mut m = layer(3, &dev);
        m.base.chunk = chunk;
        let x = random_input(1, t, D_MODEL, 4, &dev);
        let xs = to_vec(x.clone());
        let want = reference(&m, &xs, t, &reference_lambda(&m, &xs, t));
        let got = if form == "dense" { dense(&m, x) } else { m.forward(x) };
        let err = rel_err(&to_vec(got), &want);
        assert!(err < 1e-4, "{form} form, t = {t}, chunk {chunk}: relative error {err}");
    }
}

/// A batch of three sequences with their own λ, in GDN's chunk (32: two chunks at t = 64) and in
/// chunks of 16 (four, the last ragged at t = 50).
#[test]
fn a_batch_matches_the_reference_per_sequence() {
    let dev = cpu();
    for (t, chunk) in [(64, 32), (50, 16)] {
        let mut m = layer(13, &dev);
        m.base.chunk = chunk;
        let x = random_input(3, t, D_MODEL, 14, &dev);
        let xs = to_vec(x.clone());
        let want: Vec<f64> = xs.chunks(t * D_MODEL).flat_map(|seq| reference(&m, seq, t, &reference_lambda(&m, seq, t))).collect();
        let err = rel_err(&to_vec(m.forward(x)), &want);
        assert!(err < 1e-4, "t = {t}, chunk {chunk}: relative error {err}");
    }
}

/// Levels for 4 positions (L = 3) and GDN's chunk of 32: the chunk is capped at the sequence's
/// next power of two (else its padded rows would read levels up to 5).
#[test]
fn a_chunk_longer_than_the_levels_cover_is_fine() {
    let dev = cpu();
    let m = layer_with_levels(15, Some(3), &dev);
    for t in [1, 3, 4] {
        let x = random_input(1, t, D_MODEL, 16, &dev);
        let xs = to_vec(x.clone());
        let err = rel_err(&to_vec(m.forward(x)), &reference(&m, &xs, t, &reference_lambda(&m, &xs, t)));
        assert!(err < 1e-4, "t = {t}: relative error {err}");
    }
}

#[test]
fn decode_equals_the_reference_across_powers_of_two() {
    let dev = cpu();
    let t = 21;
    let m = layer(5, &dev);
    let x = random_input(1, t, D_MODEL, 6, &dev);
    let xs = to_vec(x.clone());
    let want = reference(&m, &xs, t, &reference_lambda(&m, &xs, t));
    let m = Attention::LogLinearGdn(m);
    for prefill in [1, 3, 8] {
        let err = rel_err(&to_vec(decode(&m, &x, prefill)), &want);
        assert!(err < 1e-4, "prefill {prefill}: relative error {err}");
    }
}

/// Every level alone (t = 13 uses levels 0..=4; in chunks of 4, levels 0–2 lie inside a chunk
/// and 3–4 across chunks).
#[test]
fn one_hot_lambda_keeps_one_bucket() {
    let dev = cpu();
    let t = 13;
    let mut m = layer(7, &dev);
    m.base.chunk = 4;
    let x = random_input(1, t, D_MODEL, 8, &dev);
    let xs = to_vec(x.clone());
    for keep in 0..5 {
        let one_hot: Vec<Vec<Vec<f64>>> = vec![vec![(0..m.levels).map(|l| f64::from(u8::from(l == keep))).collect(); HEADS]; t];
        let flat: Vec<f32> = (0..HEADS * t).flat_map(|_| (0..m.levels).map(|l| if l == keep { 1.0 } else { 0.0 })).collect();
        let lambda = Tensor::<1>::from_data(TensorData::new(flat, [HEADS * t * m.levels]), &dev).reshape([1, HEADS, t, m.levels]);
        let want = reference(&m, &xs, t, &one_hot);
        let mut state = m.init_state(1, t, &dev);
        let err = rel_err(&to_vec(m.step_with_lambda(x.clone(), lambda.clone(), &mut state)), &want);
        assert!(err < 1e-4, "recurrence, bucket {keep}: relative error {err}");
        let err = rel_err(&to_vec(m.forward_chunked(x.clone(), lambda.clone(), 4)), &want);
        assert!(err < 1e-4, "chunked form, bucket {keep}: relative error {err}");
        let err = rel_err(&to_vec(m.forward_dense(x.clone(), lambda)), &want);
        assert!(err < 1e-4, "dense form, bucket {keep}: relative error {err}");
    }
}

/// λ forced to 1: the levels sum to GDN's state — the layer is Gated DeltaNet, computed by its
/// own chunked WY form (a separate code path). (λ = ln 2 everywhere, the level head at zero,
/// differs by the output RMSNorm's ε: ≈ 3% here, where GDN's outputs are small.)
#[test]
fn equal_lambda_is_gated_deltanet() {
    let dev = cpu();
    let m = layer(9, &dev);
    let (b, t) = (2, 23);
    let x = random_input(b, t, D_MODEL, 10, &dev);
    let ones = Tensor::<4>::ones([b, HEADS, t, m.levels], &dev);
    let want = to_vec(m.base.forward(x.clone()));
    let mut state = m.init_state(b, t, &dev);
    let err = rel_err(&to_vec(m.step_with_lambda(x.clone(), ones.clone(), &mut state)), &want);
    assert!(err < 1e-4, "recurrence: relative error {err}");
    let err = rel_err(&to_vec(m.forward_chunked(x.clone(), ones.clone(), 4)), &want);
    assert!(err < 1e-4, "chunked form: relative error {err}");
    let err = rel_err(&to_vec(m.forward_dense(x, ones)), &want);
    assert!(err < 1e-4, "dense form: relative error {err}");
}

#[test]
fn gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    let mut m = layer(11, &dev);
    let t = 7;
    let x = random_input(1, t, D_MODEL, 12, &dev);
    let reference = |m: &LogLinearGdn, x: &[f64]| reference(m, x, t, &reference_lambda(m, x, t));
    // The chunked form in chunks of 2: four chunks, two levels across them.
    m.base.chunk = 2;
    check_gradients("log_linear gdn, chunked", &m, x.clone(), &|m, x| m.forward(x), &reference);
    // The dense form over three WY chunks: the blocks below the diagonal carry gradients too.
    m.base.chunk = 3;
    check_gradients("log_linear gdn, dense", &m, x, &|m, x| m.forward_dense(x.clone(), m.lambda(x)), &reference);
}
