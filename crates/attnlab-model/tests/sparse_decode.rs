//! Sparse decode (`attnlab_model::sparse_decode`: a dense prefill, then Adamas or a baseline
//! choosing each new token's keys) against a teacher-forced forward that applies the same rule
//! written out the slow way: per layer, τ = the standard deviation of the keys of the prefill
//! rotated by an explicit Sylvester matrix, every decoded query's codes and every earlier key's
//! codes by threshold comparisons, a full sort of the L1 distances (ties to the newest), the
//! current token added, an f64 softmax over the chosen keys; prefill rows and the first
//! `dense_layers` layers causal and dense. Peaked regime (attention projections sharpened), and
//! the selection must change the logits (checked against the dense model).
//!
//! Mutations planted and seen to fail (`decode_equals_a_masked_forward_of_the_same_rule`):
//! - τ calibrated as the variance instead of the standard deviation;
//! - the dense layers counted from the last layer;
//! - ties to the oldest key; the current token replaced by key 0; the CUDA kernel's XOR /
//!   popcount estimate instead of L1 (each also fails a unit test in `attnlab-attn`'s `adamas`).
//! (The transform without its 1/√n passes here, rightly: τ is calibrated on the same transform,
//! so only the scale relative to τ matters; the unit test catches it.)

mod common;

use attnlab_attn::burn::tensor::{Tensor, TensorData};
use attnlab_attn::key_selection::{host, Selector};
use attnlab_attn::{Attention, AttentionConfig};
use attnlab_kernels::rms_norm;
use attnlab_model::sparse_decode;
use attnlab_model::{Gpt, ModelConfig};
use common::{rel_err, to_vec, tokens};

fn sharpened(c: &ModelConfig, seed: u64, factor: f32) -> Gpt {
    let mut m = Gpt::seeded(c, seed, &attnlab_attn::burn::tensor::Device::flex());
    for b in &mut m.blocks {
        if let Attention::GroupedQuery(g) = &mut b.attn {
            g.qkv.weight = g.qkv.weight.clone().map(|w| w * factor);
        }
    }
    m
}

/// x rotated by the explicit orthonormal Sylvester matrix (n = x.len(), a power of two).
fn rotate(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    // H[i][j] = (−1)^popcount(i & j) is the Sylvester matrix.
    (0..n).map(|i| (0..n).map(|j| if (i & j).count_ones() % 2 == 0 { x[j] } else { -x[j] }).sum::<f64>() / (n as f64).sqrt()).collect()
}

fn codes(x: &[f64], tau: f64) -> Vec<u8> {
    rotate(x).iter().map(|&y| [-tau, 0.0, tau].iter().filter(|&&b| y > b).count() as u8).collect()
}

/// The rule by hand over a whole window (see the module doc) → logits `[b, t, vocab]`.
fn reference(m: &Gpt, ids: &attnlab_attn::burn::tensor::Tensor<2, attnlab_attn::burn::tensor::Int>, prefill: usize, dense_layers: usize, budget: usize) -> Tensor<3> {
    let [b, t] = ids.dims();
    let mut h = m.embed.forward(ids.clone());
    for (l, blk) in m.blocks.iter().enumerate() {
        let Attention::GroupedQuery(g) = &blk.attn else { panic!("grouped-query layers") };
        let (q, k, v, gate) = g.project_at(rms_norm(&blk.attn_norm, h.clone()), 0);
        let (nh, ng, d) = (g.heads, g.kv_heads, g.head_dim);
        let f64s = |x: Tensor<4>| host(x).into_iter().map(f64::from).collect::<Vec<f64>>();
        let (q, k, v) = (f64s(q), f64s(k), f64s(v));
        let key = |bi: usize, gi: usize, j: usize| &k[((bi * ng + gi) * t + j) * d..][..d];
        // τ: the population standard deviation of the rotated prefill keys.
        let rotated: Vec<f64> = (0..b).flat_map(|bi| (0..ng).flat_map(move |gi| (0..prefill).map(move |j| (bi, gi, j)))).flat_map(|(bi, gi, j)| rotate(key(bi, gi, j))).collect();
        let mean = rotated.iter().sum::<f64>() / rotated.len() as f64;
        let tau = (rotated.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rotated.len() as f64).sqrt();
        let mut o = vec![0.0f32; b * nh * t * d];
        for bi in 0..b {
            for head in 0..nh {
                let gi = head / (nh / ng);
                for i in 0..t {
                    let qi = &q[((bi * nh + head) * t + i) * d..][..d];
                    let chosen: Vec<usize> = if l < dense_layers || i < prefill || i < budget {
                        (0..=i).collect()
                    } else {
                        let qc = codes(qi, tau);
                        let mut order: Vec<(u32, usize)> = (0..i).map(|j| (codes(key(bi, gi, j), tau).iter().zip(&qc).map(|(a, c)| u32::from(a.abs_diff(*c))).sum(), j)).collect();
                        order.sort_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
                        order.iter().take(budget - 1).map(|x| x.1).chain([i]).collect()
                    };
                    let s: Vec<f64> = chosen.iter().map(|&j| qi.iter().zip(key(bi, gi, j)).map(|(a, c)| a * c).sum::<f64>() / (d as f64).sqrt()).collect();
                    let top = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - top).exp()).sum();
                    for (&j, sj) in chosen.iter().zip(&s) {
                        let w = (sj - top).exp() / z;
                        for c in 0..d {
                            o[((bi * nh + head) * t + i) * d + c] += (w * v[((bi * ng + gi) * t + j) * d + c]) as f32;
                        }
                    }
                }
            }
        }
        let o = Tensor::<4>::from_data(TensorData::new(o, [b, nh, t, d]), &h.device());
        h = h + g.finish(o, gate);
        h = h.clone() + blk.mlp.forward(rms_norm(&blk.mlp_norm, h));
    }
    m.logits(h)
}

#[test]
fn decode_equals_a_masked_forward_of_the_same_rule() {
    let dev = attnlab_attn::burn::tensor::Device::flex();
    let (b, t, prefill, budget, dense_layers) = (2, 26, 8, 5, 1);
    for attention in [AttentionConfig::Mha {}, AttentionConfig::Gqa { kv_heads: 2 }] {
        let c = ModelConfig { vocab: 29, d_model: 32, layers: 3, heads: 4, max_seq: 32, attention: attention.clone(), ..ModelConfig::default() };
        let m = sharpened(&c, 5, 15.0);
        let ids = tokens(b, t, &dev);
        let want = to_vec(reference(&m, &ids, prefill, dense_layers, budget).narrow(1, prefill, t - prefill));
        let dense = to_vec(m.forward(ids.clone()).narrow(1, prefill, t - prefill));
        assert!(rel_err(&dense, &want) > 1e-2, "{attention:?}: the selection barely changes the logits ({}): the test lost its regime", rel_err(&dense, &want));
        let selector = Selector::Adamas { budget };
        sparse_decode::check(&m, &selector).unwrap();
        let (_, mut decoder) = sparse_decode::prefill(&m, ids.clone().narrow(1, 0, prefill), selector, dense_layers, None);
        let mut parts = Vec::new();
        let mut rows = 0;
        for p in prefill..t {
            let (logits, recall) = sparse_decode::step(&m, &mut decoder, ids.clone().narrow(1, p, 1));
            parts.push(logits);
            rows += recall.rows;
        }
        let got = to_vec(Tensor::cat(parts, 1));
        let err = rel_err(&got, &want);
        assert!(err < 1e-4, "{attention:?}: relative error {err} against the rule by hand");
        // Recall is scored on every (sequence, head) row of the selecting layers over budget.
        assert_eq!(rows, (t - prefill) * b * 4 * (3 - dense_layers));
    }
}

#[test]
fn a_budget_over_the_context_is_the_dense_model_and_bad_settings_are_refused() {
    let dev = attnlab_attn::burn::tensor::Device::flex();
    let c = ModelConfig { vocab: 29, d_model: 32, layers: 2, heads: 4, max_seq: 32, ..ModelConfig::default() };
    let m = sharpened(&c, 7, 15.0);
    let (t, prefill) = (20, 6);
    let ids = tokens(2, t, &dev);
    let dense = to_vec(m.forward(ids.clone()).narrow(1, prefill, t - prefill));
    for selector in [Selector::Adamas { budget: 32 }, Selector::Pages { budget: 20, page: 4 }, Selector::Dense] {
        let (_, mut decoder) = sparse_decode::prefill(&m, ids.clone().narrow(1, 0, prefill), selector, 0, None);
        let parts: Vec<_> = (prefill..t).map(|p| sparse_decode::step(&m, &mut decoder, ids.clone().narrow(1, p, 1)).0).collect();
        let err = rel_err(&to_vec(Tensor::cat(parts, 1)), &dense);
        assert!(err < 1e-5, "{selector:?}: relative error {err} against the dense forward");
    }
    assert!(sparse_decode::check(&m, &Selector::Adamas { budget: 1 }).unwrap_err().contains("budget = 1"));
    assert!(sparse_decode::check(&m, &Selector::SinkWindow { budget: 4, sinks: 4 }).unwrap_err().contains("sinks = 4"));
    let odd = ModelConfig { d_model: 36, heads: 3, ..c.clone() };
    let m = Gpt::seeded(&odd, 1, &dev);
    assert!(sparse_decode::check(&m, &Selector::Adamas { budget: 8 }).unwrap_err().contains("head_dim = 12"));
}
