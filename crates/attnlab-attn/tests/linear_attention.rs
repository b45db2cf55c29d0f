//! Linear attention against two independent f64 references built from its weights: the
//! quadratic masked form `(φ(Q)φ(K)ᵀ ⊙ causal) V` (with its row-sum normaliser) for the training
//! forward, and the token-by-token recurrence for cached decode; every feature map, with and
//! without the normaliser; gradients against finite differences of the reference.
//!
//! Mutations planted and seen to fail (see `tests/README.md`):
//! - the current token excluded (strict causal mask) → all three tests;
//! - Hedgehog as two softmaxes (one per half) instead of one over [2z, −2z] → all three tests;
//! - a ragged chunk padded with ones (what φ applied to zero padding gives for elu+1) →
//!   `linear_decode_matches_the_recurrence` (the state handed to decode).
//! Not testable by design: Hedgehog's scale d_h^−½ vs d_φ^−½ cancels under the RMSNorm up to eps.

mod common;

use attnlab_attn::burn::tensor::Device;
use attnlab_attn::{Attention, AttentionConfig, FeatureMap, LinearAttention, Recurrent};
use common::recurrent::*;
use common::*;

/// φ of one head's vector, with the module's Hedgehog map `(W, b)` when it has one.
fn phi(map: FeatureMap, x: &[f64], hedgehog: Option<(&[f64], &[f64])>) -> Vec<f64> {
    match map {
        FeatureMap::Elu1 => x.iter().map(|v| if *v > 0.0 { v + 1.0 } else { v.exp() }).collect(),
        FeatureMap::Relu => x.iter().map(|v| v.max(0.0)).collect(),
        FeatureMap::Identity => x.to_vec(),
        FeatureMap::Hedgehog => {
            let (w, b) = hedgehog.expect("hedgehog weights");
            let d = x.len();
            let z: Vec<f64> = (0..d).map(|j| (0..d).map(|i| x[i] * w[i * d + j]).sum::<f64>() + b[j]).collect();
            let both: Vec<f64> = z.iter().map(|v| 2.0 * v).chain(z.iter().map(|v| -2.0 * v)).collect();
            let max = both.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = both.iter().map(|v| (v - max).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        }
    }
}

/// Per head: φ(q) (scaled by d_φ^−½), φ(k), v, `[t][·]`.
type Heads = Vec<(Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>)>;

fn project(m: &LinearAttention, xs: &[f64], t: usize, d_model: usize) -> Heads {
    let (h, d) = (m.heads, m.head_dim);
    let qkv = rows(&matmul(xs, t, d_model, &to_vec(m.qkv.weight.val()), 3 * h * d), t, 3 * h * d);
    let maps = m.hedgehog.as_ref().map(|hh| [(to_vec(hh.q.weight.val()), to_vec(hh.q.bias.val())), (to_vec(hh.k.weight.val()), to_vec(hh.k.bias.val()))]);
    let map = |which: usize, v: &[f64]| phi(m.map, v, maps.as_ref().map(|mm| (mm[which].0.as_slice(), mm[which].1.as_slice())));
    let scale = 1.0 / (m.feature_dim() as f64).sqrt();
    (0..h)
        .map(|j| {
            let q = (0..t).map(|i| map(0, &qkv[i][j * d..(j + 1) * d]).iter().map(|x| x * scale).collect()).collect();
            let k = (0..t).map(|i| map(1, &qkv[i][h * d + j * d..h * d + (j + 1) * d])).collect();
            let v = (0..t).map(|i| qkv[i][2 * h * d + j * d..2 * h * d + (j + 1) * d].to_vec()).collect();
            (q, k, v)
        })
        .collect()
}

/// Either the quadratic form or the recurrence (`memoryless`: S, z reset every token), then the
/// output normaliser or RMSNorm and W_o.
fn reference(m: &LinearAttention, x: &[f64], b: usize, t: usize, d_model: usize, quadratic: bool, memoryless: bool) -> Vec<f64> {
    let (h, d) = (m.heads, m.head_dim);
    let gamma = m.norm.as_ref().map(|n| to_vec(n.gamma.val()));
    let mut out = Vec::new();
    for s in 0..b {
        let heads = project(m, &x[s * t * d_model..(s + 1) * t * d_model], t, d_model);
        let mut concat = vec![0.0; t * h * d];
        for (j, (q, k, v)) in heads.into_iter().enumerate() {
            // Numerator φ(q)ᵀS and denominator φ(q)ᵀz per position.
            let (num, den): (Vec<Vec<f64>>, Vec<f64>) = if quadratic {
                let dot = |i: usize, l: usize| q[i].iter().zip(&k[l]).map(|(a, b)| a * b).sum::<f64>();
                (0..t).map(|i| ((0..d).map(|c| (0..=i).map(|l| dot(i, l) * v[l][c]).sum()).collect(), (0..=i).map(|l| dot(i, l)).sum::<f64>())).unzip()
            } else {
                let ones: Vec<Vec<f64>> = v.iter().map(|r| r.iter().cloned().chain([1.0]).collect()).collect();
                let (o, _) = rule_loop(&HeadSeq { q, k, v: ones, beta: None, g: None }, memoryless);
                o.into_iter().map(|r| (r[..d].to_vec(), r[d])).unzip()
            };
            for i in 0..t {
                let o: Vec<f64> = match &gamma {
                    Some(g) => rms_norm(&num[i], g, 1e-5),
                    None => num[i].iter().map(|x| x / (den[i] + 1e-6)).collect(),
                };
                concat[i * h * d + j * d..i * h * d + (j + 1) * d].copy_from_slice(&o);
            }
        }
        out.extend(matmul(&concat, t, h * d, &to_vec(m.out.weight.val()), d_model));
    }
    out
}

fn configs() -> Vec<AttentionConfig> {
    let mut v = Vec::new();
    for map in [FeatureMap::Elu1, FeatureMap::Relu, FeatureMap::Identity, FeatureMap::Hedgehog] {
        for normalize in [false, true] {
            if !(normalize && map == FeatureMap::Identity) {
                v.push(AttentionConfig::Linear { feature_map: map, normalize, chunk: 4 });
            }
        }
    }
    v.push(AttentionConfig::Linear { feature_map: FeatureMap::Hedgehog, normalize: false, chunk: 1 });
    v.push(AttentionConfig::Linear { feature_map: FeatureMap::Elu1, normalize: false, chunk: 64 });
    v
}

fn linear(config: &AttentionConfig, seed: u64, dev: &Device) -> LinearAttention {
    let Attention::Linear(m) = seeded(dev, seed, || config.init(D_MODEL, HEADS, 64, 10_000.0, dev)) else { panic!("expected linear attention") };
    sharpen(m, 4.0)
}

const D_MODEL: usize = 16;
const HEADS: usize = 2;
const T: usize = 13;

#[test]
fn linear_forward_matches_the_quadratic_form() {
    let dev = cpu();
    for (i, config) in configs().iter().enumerate() {
        let m = linear(config, 3 + i as u64, &dev);
        let x = random_input(2, T, D_MODEL, 5, &dev);
        let xv = to_vec(x.clone());
        let want = reference(&m, &xv, 2, T, D_MODEL, true, false);
        let lost = reference(&m, &xv, 2, T, D_MODEL, false, true);
        assert!(rel_err(&lost, &want) > 0.3, "{}: outputs barely depend on the state", config.label());
        let err = rel_err(&to_vec(m.forward(x)), &want);
        assert!(err < 1e-4, "{}: forward relative error {err}", config.label());
    }
}

#[test]
fn linear_decode_matches_the_recurrence() {
    let dev = cpu();
    for (i, config) in configs().iter().enumerate() {
        let m = linear(config, 3 + i as u64, &dev);
        let x = random_input(2, T, D_MODEL, 6, &dev);
        let want = reference(&m, &to_vec(x.clone()), 2, T, D_MODEL, false, false);
        for prefill in [1, 6] {
            let err = rel_err(&to_vec(decode(&Attention::Linear(m.clone()), &x, prefill)), &want);
            assert!(err < 1e-4, "{} prefill {prefill}: decode relative error {err}", config.label());
        }
    }
}

#[test]
fn linear_gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    for config in [
        AttentionConfig::Linear { feature_map: FeatureMap::Hedgehog, normalize: false, chunk: 4 },
        AttentionConfig::Linear { feature_map: FeatureMap::Elu1, normalize: true, chunk: 4 },
    ] {
        let m = linear(&config, 2, &dev);
        let x = random_input(1, 11, D_MODEL, 4, &dev);
        check_gradients(&config.label(), &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, 11, D_MODEL, true, false));
    }
}

#[test]
fn the_normaliser_with_identity_is_rejected_and_hedgehog_doubles_the_state() {
    let err = AttentionConfig::Linear { feature_map: FeatureMap::Identity, normalize: true, chunk: 64 }.validate(16, 2).unwrap_err();
    assert_eq!(err.field, "model.attention.normalize");
    let dev = cpu();
    let m = locked(|| AttentionConfig::Linear { feature_map: FeatureMap::Hedgehog, normalize: true, chunk: 64 }.init(64, 4, 64, 1e4, &dev));
    // 4 heads × d_φ = 32 × (d_h + 1 = 17) floats, whatever the context.
    assert_eq!(m.state_bytes(10), 4 * 32 * 17 * 4);
    assert_eq!(m.state_bytes(100_000), 4 * 32 * 17 * 4);
}
