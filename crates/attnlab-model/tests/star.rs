//! Star Attention (`attnlab_model::star`, `attnlab_attn::star`) against independent references:
//! the whole pipeline (phase 1 block by block on host threads, phase 2 merged over the hosts)
//! equals **one masked forward** of the model whose attention rows follow the rule written out
//! densely — context row i sees key j iff `j ≤ i ∧ (blk(j) = blk(i) ∨ j < a)`, a query row sees
//! every key before it — in a peaked regime (the attention weights sharpened, checked); the
//! log-sum-exp merge equals one softmax over all keys in plain f64 for splits with an empty
//! shard and queries longer than a shard.
//!
//! Mutations planted and seen to fail:
//! - anchor at the positions just before the block (`start − a`) instead of `0..a` →
//!   `star_equals_one_masked_forward` (phase-1 caches);
//! - the anchor's KV kept in the cache → the same test (cache lengths/keys);
//! - no anchor prefixed even when `anchor > 0` → the same test;
//! - the merge weights `e^{ℓ_h}` without the normalisation by `Σ e^{ℓ_h}` →
//!   `merge_equals_one_softmax_over_all_keys`;
//! - the query host's mask left off (its new tokens see each other both ways) → the same test
//!   (t_q = 5) and `star_equals_one_masked_forward`;
//! - the reference's bottom-right causal mask on every host → `merge_equals_one_softmax_over_all_keys`;
//! - the new tokens' K/V appended to every host → `star_equals_one_masked_forward`.

mod common;

use attnlab_attn::burn::tensor::activation::softmax;
use attnlab_attn::burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};
use attnlab_attn::grouped_query::repeat_heads;
use attnlab_attn::star::{merge, partials, Shard};
use attnlab_attn::{Attention, AttentionConfig};
use attnlab_kernels::rms_norm;
use attnlab_model::star::{self, StarSettings};
use attnlab_model::{Gpt, ModelConfig};
use common::{rel_err, to_vec, tokens};

fn config(attention: AttentionConfig) -> ModelConfig {
    ModelConfig { vocab: 29, d_model: 32, layers: 2, heads: 4, max_seq: 40, attention, ..ModelConfig::default() }
}

/// The model with its attention projections ×`factor` (logits × factor²): peaked attention.
fn sharpened(c: &ModelConfig, seed: u64, factor: f32) -> Gpt {
    let dev = Device::flex();
    let mut m = Gpt::seeded(c, seed, &dev);
    for b in &mut m.blocks {
        if let Attention::GroupedQuery(g) = &mut b.attn {
            g.qkv.weight = g.qkv.weight.clone().map(|w| w * factor);
        }
    }
    m
}

/// One forward of `m` over `ids` in which attention row i sees key j iff `allowed(i, j)`,
/// written densely (softmax over a full masked score matrix). Returns the logits, every
/// layer's keys and values `[b, g, t, d_h]`, and the mean (largest weight × visible keys) over
/// rows with ≥ 4 visible keys (1 = uniform).
fn masked_forward(m: &Gpt, ids: &attnlab_attn::burn::tensor::Tensor<2, attnlab_attn::burn::tensor::Int>, allowed: &dyn Fn(usize, usize) -> bool) -> (Tensor<3>, Vec<(Tensor<4>, Tensor<4>)>, f64) {
    let t = ids.dims()[1];
    let hidden: Vec<bool> = (0..t).flat_map(|i| (0..t).map(move |j| !allowed(i, j))).collect();
    let dev = ids.device();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(hidden.clone(), [t, t]), &dev);
    let mut h = m.embed.forward(ids.clone());
    let mut kv = Vec::new();
    let (mut peak, mut rows) = (0.0, 0);
    for b in &m.blocks {
        let Attention::GroupedQuery(g) = &b.attn else { panic!("grouped-query layers only") };
        let (q, k, v, gate) = g.project_at(rms_norm(&b.attn_norm, h.clone()), 0);
        kv.push((k.clone(), v.clone()));
        let r = g.heads / g.kv_heads;
        let scores = q.matmul(repeat_heads(k, r).swap_dims(2, 3)) / (g.head_dim as f32).sqrt();
        let shape = scores.dims();
        let w = softmax(scores.mask_fill(mask.clone().unsqueeze::<4>().expand(shape), f32::NEG_INFINITY), 3);
        let wv = w.clone().into_data().try_into_vec::<f32>().unwrap();
        for (row, chunk) in wv.chunks(t).enumerate() {
            let visible = (0..t).filter(|&j| !hidden[(row % t) * t + j]).count();
            if visible >= 4 {
                peak += chunk.iter().cloned().fold(0.0, f32::max) as f64 * visible as f64;
                rows += 1;
            }
        }
        h = h + g.finish(w.matmul(repeat_heads(v, r)), gate);
        h = h.clone() + b.mlp.forward(rms_norm(&b.mlp_norm, h));
    }
    (m.logits(h), kv, peak / rows.max(1) as f64)
}

/// Concatenation of a layer's shards over the hosts, in host order.
fn gathered(shards: &[Shard]) -> (Vec<f32>, Vec<f32>) {
    let held: Vec<_> = shards.iter().filter_map(|s| s.kv.clone()).collect();
    let k = Tensor::cat(held.iter().map(|(k, _)| k.clone()).collect(), 2);
    let v = Tensor::cat(held.iter().map(|(_, v)| v.clone()).collect(), 2);
    (to_vec(k), to_vec(v))
}

#[test]
fn star_equals_one_masked_forward() {
    let dev = Device::flex();
    // T_c = 23 is not a multiple of the blocks; the query is 5 tokens, then one generated.
    let (b, tc, tq) = (2, 23, 5);
    for attention in [AttentionConfig::Mha {}, AttentionConfig::Gqa { kv_heads: 2 }] {
        let m = sharpened(&config(attention.clone()), 4, 15.0);
        let ids = tokens(b, tc + tq + 1, &dev);
        for (block, anchor) in [(5, 3), (5, 0), (4, 4), (8, 2)] {
            let rule = move |i: usize, j: usize| j <= i && (i >= tc || j / block == i / block || j < anchor);
            let (logits, kv, peak) = masked_forward(&m, &ids, &rule);
            assert!(peak > 2.5, "attention is near uniform ({peak:.2}× uniform): the test lost its regime");
            let want = to_vec(logits.narrow(1, tc, tq + 1));
            for hosts in [1, 2, 3, 7] {
                let what = format!("{attention:?} block {block} anchor {anchor} hosts {hosts}");
                let settings = StarSettings { block, anchor, hosts };
                star::check(&m, &settings).unwrap();
                let mut cache = star::encode(&m, ids.clone().narrow(1, 0, tc), &settings);
                for (l, (k, v)) in kv.iter().enumerate() {
                    let (gk, gv) = gathered(&cache.layers[l]);
                    let (wk, wv) = (to_vec(k.clone().narrow(2, 0, tc)), to_vec(v.clone().narrow(2, 0, tc)));
                    assert_eq!(gk.len(), wk.len(), "{what}: layer {l} caches {} keys, want {tc}", gk.len() / wk.len().max(1) * tc);
                    let (ek, ev) = (rel_err(&gk, &wk), rel_err(&gv, &wv));
                    assert!(ek < 1e-5 && ev < 1e-5, "{what}: layer {l} phase-1 cache relative error k {ek}, v {ev}");
                }
                let q = star::decode(&m, &mut cache, ids.clone().narrow(1, tc, tq));
                let next = star::decode(&m, &mut cache, ids.clone().narrow(1, tc + tq, 1));
                let got = to_vec(Tensor::cat(vec![q, next], 1));
                let err = rel_err(&got, &want);
                assert!(err < 1e-5, "{what}: phase-2 logits relative error {err}");
                assert_eq!(cache.len, tc + tq + 1);
                assert_eq!(cache.layers[0].last().unwrap().len() >= tq + 1, true, "{what}: the query host holds the new tokens");
            }
        }
    }
}

#[test]
fn whole_context_block_equals_global_attention() {
    let dev = Device::flex();
    let m = sharpened(&config(AttentionConfig::Gqa { kv_heads: 2 }), 6, 15.0);
    let (tc, tq) = (17, 4);
    let ids = tokens(2, tc + tq, &dev);
    let want = to_vec(m.forward(ids.clone()).narrow(1, tc, tq));
    // One block; with 2 hosts the query host holds no context (an empty shard until the query).
    for hosts in [1, 2] {
        let settings = StarSettings { block: tc, anchor: 3, hosts };
        let mut cache = star::encode(&m, ids.clone().narrow(1, 0, tc), &settings);
        let got = to_vec(star::decode(&m, &mut cache, ids.clone().narrow(1, tc, tq)));
        let err = rel_err(&got, &want);
        assert!(err < 1e-5, "hosts {hosts}: relative error {err} against the global forward");
    }
}

/// Plain f64 softmax attention of every query row over all keys: query i (of the last t_q keys'
/// tokens) sees the keys before the new ones and new keys ≤ i. Shapes as `partial`.
fn reference(q: &[f64], k: &[f64], v: &[f64], (b, h, g, tq, s, d): (usize, usize, usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; b * h * tq * d];
    for bi in 0..b {
        for hi in 0..h {
            let gi = hi / (h / g);
            for i in 0..tq {
                let qrow = &q[((bi * h + hi) * tq + i) * d..][..d];
                let visible = s - tq + i + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|j| qrow.iter().zip(&k[((bi * g + gi) * s + j) * d..][..d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - top).exp()).collect();
                let z: f64 = w.iter().sum();
                for (j, wj) in w.iter().enumerate() {
                    for c in 0..d {
                        out[((bi * h + hi) * tq + i) * d + c] += wj / z * v[((bi * g + gi) * s + j) * d + c];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn merge_equals_one_softmax_over_all_keys() {
    let dev = Device::flex();
    let (b, h, g, d) = (2, 4, 2, 8);
    // Shard sizes over the context; the query host (last) also holds the t_q new tokens.
    for (sizes, tq) in [(vec![6, 0, 4], 1), (vec![6, 0, 4], 5), (vec![3, 2, 0], 11), (vec![0, 9], 5), (vec![13], 3)] {
        let s: usize = sizes.iter().sum::<usize>() + tq;
        let (q, k, v) = {
            let _guard = attnlab_model::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            dev.seed(11 + tq as u64);
            (
                Tensor::<4>::random([b, h, tq, d], Distribution::Normal(0.0, 2.0), &dev),
                Tensor::<4>::random([b, g, s, d], Distribution::Normal(0.0, 2.0), &dev),
                Tensor::<4>::random([b, g, s, d], Distribution::Normal(0.0, 1.0), &dev),
            )
        };
        let mut shards = Vec::new();
        let mut from = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let n = if i + 1 == sizes.len() { n + tq } else { n };
            shards.push(if n == 0 { Shard::default() } else { Shard::new(k.clone().narrow(2, from, n), v.clone().narrow(2, from, n)) });
            from += n;
        }
        let scale = 1.0 / (d as f32).sqrt();
        let (o, lse) = merge(partials(&q, &shards, shards.len() - 1, scale));
        let f64s = |t: &Tensor<4>| t.clone().into_data().try_into_vec::<f32>().unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
        let want = reference(&f64s(&q), &f64s(&k), &f64s(&v), (b, h, g, tq, s, d));
        let got = f64s(&o);
        let num: f64 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        let err = (num / den).sqrt();
        assert!(err < 1e-6, "shards {sizes:?}, t_q {tq}: relative error {err}");
        assert!(f64s(&lse).iter().all(|x| x.is_finite()), "shards {sizes:?}, t_q {tq}: a non-finite log-sum-exp");
    }
}

#[test]
fn bad_settings_and_kinds_are_refused() {
    let m = sharpened(&config(AttentionConfig::Mha {}), 1, 1.0);
    assert!(star::check(&m, &StarSettings { block: 4, anchor: 5, hosts: 2 }).unwrap_err().contains("anchor = 5"));
    assert!(star::check(&m, &StarSettings { block: 0, anchor: 0, hosts: 2 }).unwrap_err().contains("block = 0"));
    assert!(star::check(&m, &StarSettings { block: 4, anchor: 0, hosts: 0 }).unwrap_err().contains("hosts = 0"));
    let window: AttentionConfig = toml::from_str("kind = \"sliding_window\"\nwindow = 4").unwrap();
    let w = Gpt::seeded(&config(window), 1, &Device::flex());
    assert!(star::check(&w, &StarSettings { block: 4, anchor: 0, hosts: 2 }).unwrap_err().contains("layer 0"));
    assert_eq!(star::host_groups(5, 3), vec![0..2, 2..4, 4..5]);
    assert_eq!(star::host_groups(1, 3), vec![0..1, 1..1, 1..1]);
    assert_eq!(star::blocks(11, 4), vec![(0, 4), (4, 8), (8, 11)]);
}
