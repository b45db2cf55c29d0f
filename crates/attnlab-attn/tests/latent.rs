//! MLA against an independent reference built from its weights (DeepSeek-V2 equations: latent
//! RMSNorm, up-projections, decoupled RoPE on d_R dims, scale 1/√(d_h + d_R)), with peaked
//! attention, for the training forward and the absorbed decode; gradients against finite
//! differences of the reference.
//!
//! Mutations planted and seen to fail (see `tests/README.md`):
//! - scale 1/√d_h instead of 1/√(d_h + d_R) in the training form → `mla_forward_matches_the_reference_with_peaked_attention`
//!   (relative error ≈ 1e-1; at the old near-uniform weights it was 5e-5, under the old tolerance);
//! - the same in the absorbed decode → `mla_absorbed_decode_matches_the_reference`;
//! - RoPE off on k_R → both reference tests;
//! - the kv latent norm skipped → both reference tests;
//! - NoPE (`rope = false`) still rotating q_R (or k_R) → both reference tests (the `-nope`
//!   config; the reference does not rotate).

mod common;

use attnlab_attn::burn::tensor::Device;
use attnlab_attn::{Attention, AttentionConfig, LatentAttention};
use common::*;


const EPS: f64 = 1e-5;

fn reference(m: &LatentAttention, x: &[f64], b: usize, t: usize, d_model: usize) -> Vec<f64> {
    let (h, d, r, dc) = (m.heads, m.head_dim, m.rope_dim, m.kv_latent);
    let w_dkv = to_vec(m.kv_down.weight.val());
    let g_kv = to_vec(m.kv_norm.gamma.val());
    let w_ukv = to_vec(m.kv_up.weight.val());
    let w_uq = to_vec(m.q_up.weight.val());
    let w_out = to_vec(m.out.weight.val());
    let mut out = Vec::new();
    for s in 0..b {
        let xs = &x[s * t * d_model..(s + 1) * t * d_model];
        // Queries: optional latent c_q = RMSNorm(x W_dq).
        let (cq, q_in) = match &m.q_latent {
            Some(ql) => {
                let dq = ql.norm.gamma.dims()[0];
                let raw = matmul(xs, t, d_model, &to_vec(ql.down.weight.val()), dq);
                let g = to_vec(ql.norm.gamma.val());
                ((0..t).flat_map(|p| rms_norm(&cols(&raw, dq, p, 0, dq), &g, EPS)).collect::<Vec<_>>(), dq)
            }
            None => (xs.to_vec(), d_model),
        };
        let q_all = matmul(&cq, t, q_in, &w_uq, h * (d + r));
        let kv = matmul(xs, t, d_model, &w_dkv, dc + r);
        let c_kv: Vec<Vec<f64>> = (0..t).map(|p| rms_norm(&cols(&kv, dc + r, p, 0, dc), &g_kv, EPS)).collect();
        // NoPE (Kimi's MLA): the decoupled slices are used as they are.
        let rotate = |v: Vec<f64>, p: usize| if m.rope.is_some() { rope(&v, p, ROPE_BASE) } else { v };
        let k_rope: Vec<Vec<f64>> = (0..t).map(|p| rotate(cols(&kv, dc + r, p, dc, r), p)).collect();
        let up: Vec<Vec<f64>> = c_kv.iter().map(|c| matmul(c, 1, dc, &w_ukv, h * 2 * d)).collect();
        let mut concat = vec![0.0; t * h * d];
        for head in 0..h {
            let q: Vec<Vec<f64>> = (0..t)
                .map(|p| {
                    let mut v = cols(&q_all, h * (d + r), p, head * (d + r), d);
                    v.extend(rotate(cols(&q_all, h * (d + r), p, head * (d + r) + d, r), p));
                    v
                })
                .collect();
            let k: Vec<Vec<f64>> = (0..t)
                .map(|p| {
                    let mut v = up[p][head * 2 * d..head * 2 * d + d].to_vec();
                    v.extend(&k_rope[p]);
                    v
                })
                .collect();
            let v: Vec<Vec<f64>> = (0..t).map(|p| up[p][head * 2 * d + d..(head + 1) * 2 * d].to_vec()).collect();
            for (p, o) in causal_head(&q, &k, &v, 1.0 / ((d + r) as f64).sqrt()).into_iter().enumerate() {
                concat[p * h * d + head * d..p * h * d + (head + 1) * d].copy_from_slice(&o);
            }
        }
        out.extend(matmul(&concat, t, h * d, &w_out, d_model));
    }
    out
}

fn mla(config: &AttentionConfig, d_model: usize, heads: usize, seed: u64, dev: &Device) -> LatentAttention {
    let Attention::Latent(m) = seeded(dev, seed, || config.init(d_model, heads, 64, ROPE_BASE as f32, dev)) else { panic!("expected MLA") };
    // The reference rotates iff the module has a table: NoPE must have none.
    let nope = matches!(config, AttentionConfig::Mla { rope: false, .. });
    assert_eq!(m.rope.is_none(), nope, "{config:?}: a NoPE layer holds no rotary table");
    sharpen(m, SHARP)
}

/// Small latents with and without a query latent, and DeepSeek-V2's ratios (the defaults:
/// d_c = 4·d_h = 48, d_R = d_h / 2 = 6 at d_h = 12), and NoPE.
fn configs() -> [AttentionConfig; 4] {
    [
        AttentionConfig::Mla { kv_latent: Some(16), q_latent: None, rope_dim: Some(6), rope: false },
        AttentionConfig::Mla { kv_latent: Some(16), q_latent: None, rope_dim: Some(6), rope: true },
        AttentionConfig::Mla { kv_latent: Some(16), q_latent: Some(24), rope_dim: Some(6), rope: true },
        AttentionConfig::Mla { kv_latent: None, q_latent: Some(24), rope_dim: None, rope: true },
    ]
}

#[test]
fn mla_forward_matches_the_reference_with_peaked_attention() {
    let (d_model, heads) = (48, 4);
    for config in configs() {
        for t in [1, 7, 17] {
            let dev = cpu();
            let m = mla(&config, d_model, heads, 4, &dev);
            let x = random_input(2, t, d_model, 9, &dev);
            let got = to_vec(m.forward(x.clone()));
            assert_matches_reference(&format!("{config:?} t={t}"), &got, || reference(&m, &to_vec(x), 2, t, d_model));
        }
    }
}

/// The decode path attends in the absorbed-weight form (scores in latent space): a separate
/// formula from the training forward, checked against the same reference.
#[test]
fn mla_absorbed_decode_matches_the_reference() {
    let (d_model, heads, t) = (48, 4, 13);
    for config in configs() {
        let dev = cpu();
        let m = mla(&config, d_model, heads, 5, &dev);
        let x = random_input(2, t, d_model, 10, &dev);
        let want = reference(&m, &to_vec(x.clone()), 2, t, d_model);
        let m = Attention::Latent(m);
        for prefill in [1, 5] {
            let err = rel_err(&to_vec(decode(&m, &x, prefill)), &want);
            assert!(err < 1e-4, "{config:?} prefill {prefill}: relative error {err}");
        }
    }
}

#[test]
fn mla_gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    let (d_model, heads, t) = (32, 4, 9);
    for config in [
        AttentionConfig::Mla { kv_latent: Some(12), q_latent: Some(16), rope_dim: Some(4), rope: true },
        AttentionConfig::Mla { kv_latent: None, q_latent: None, rope_dim: None, rope: true },
        AttentionConfig::Mla { kv_latent: Some(12), q_latent: None, rope_dim: Some(4), rope: false },
    ] {
        let m = mla(&config, d_model, heads, 6, &dev);
        let x = random_input(1, t, d_model, 7, &dev);
        check_gradients(&format!("{config:?}"), &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, t, d_model));
    }
}

#[test]
fn mla_defaults_are_deepseek_v2_ratios() {
    let config = AttentionConfig::Mla { kv_latent: None, q_latent: None, rope_dim: None, rope: true };
    let Attention::Latent(m) = locked(|| config.init(64, 4, 16, 10_000.0, &cpu())) else { panic!() };
    assert_eq!((m.head_dim, m.kv_latent, m.rope_dim), (16, 64, 8));
    assert_eq!(config.label(), "mla");
    assert_eq!(AttentionConfig::Mla { kv_latent: Some(16), q_latent: None, rope_dim: Some(4), rope: true }.label(), "mla-c16-r4");
    assert_eq!(AttentionConfig::Mla { kv_latent: None, q_latent: None, rope_dim: None, rope: false }.label(), "mla-nope");
}

#[test]
fn mla_state_holds_only_the_latent_and_the_rope_key() {
    let dev = cpu();
    let (kv_latent, rope_dim) = (20, 8);
    let m = locked(|| AttentionConfig::Mla { kv_latent: Some(kv_latent), q_latent: None, rope_dim: Some(rope_dim), rope: true }.init(64, 4, 64, 10_000.0, &dev));
    let mut state = m.init_state(3, 40, &dev);
    assert_eq!(state.bytes(), (kv_latent + rope_dim) * 4 * 40);
    assert_eq!(m.state_bytes(40), state.bytes());
    let attnlab_attn::State::Latent(c) = &state else { panic!("expected a latent cache") };
    assert_eq!(c.c_kv.dims(), [3, 40, kv_latent]);
    assert_eq!(c.k_rope.dims(), [3, 40, rope_dim]);
    m.step(random_input(3, 5, 64, 1, &dev), &mut state);
    assert_eq!(state.len(), 5);
}
