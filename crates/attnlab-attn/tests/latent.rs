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


fn reference(m: &LatentAttention, x: &[f64], b: usize, t: usize, d_model: usize) -> Vec<f64> {
    let (h, d, r) = (m.heads, m.head_dim, m.rope_dim);
    let w_out = to_vec(m.out.weight.val());
    let mut out = Vec::new();
    for s in 0..b {
        let heads = mla_heads(m, &x[s * t * d_model..(s + 1) * t * d_model], t, d_model);
        let mut concat = vec![0.0; t * h * d];
        for head in 0..h {
            for (p, o) in causal_head(&heads.q[head], &heads.k[head], &heads.v[head], 1.0 / ((d + r) as f64).sqrt()).into_iter().enumerate() {
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
