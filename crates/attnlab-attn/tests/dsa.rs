//! DeepSeek Sparse Attention against an independent f64 reference written from MECHANISMS.md §5
//! (fla's `naive_dsa` semantics): MLA's heads from the DeepSeek-V2 equations, the indexer
//! (q from c_q, one LayerNorm'd key, RoPE on the first d_R dims, `Σ_j w_j·ReLU(q_j·k)` with
//! w scaled by `(H_I·d_I)^−½`), the top-min(k, t + 1) keys s ≤ t with ties to the lower index,
//! and dense masked softmax over the selected keys. T = 16, top_k = 4 (≪ T); MLA's weights ×12
//! (peaked) and the indexer's ×4 (spread scores).
//!
//! Mutations planted and seen to fail:
//! - the causal mask dropped from the scores before top-k → `forward_matches_the_reference`,
//!   `changing_later_tokens_changes_no_earlier_output`;
//! - ties to the higher index → `ties_go_to_the_lower_index_in_forward_and_decode`;
//! - the indexer weights' scale `(H_I·d_I)^−½` dropped → `the_indexer_losses_match_the_reference`
//!   (the top-k is unchanged, the KL's temperature is not);
//! - the KL's p not normalised over heads (summed only) → `the_indexer_losses_match_the_reference`;
//! - RoPE on the indexer's last d_R dims → `forward_matches_the_reference`;
//! - the indexer's input not detached (keys, or scores) → `gradients_stay_on_their_side` (the
//!   layer's input gets a gradient from the KL);
//! - the indexer key not cached (recomputed at position 0) in decode → `decode_equals_the_forward`.
//! - on GQA: K/V heads tiled (head i reads group i mod g) instead of grouped, and the score scale
//!   1/d_h instead of 1/√d_h → both `on_grouped_query_attention_*` tests; decode writing the
//!   new K/V at slot 0 → `on_grouped_query_attention_forward_and_decode_match_the_reference` and
//!   the contract's prefill test.

mod common;

use attnlab_attn::burn::module::{Module, Param};
use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::dsa::{indexer_kl, Dsa, IndexerLoss};
use attnlab_attn::{Attention, AttentionConfig};
use common::*;

const D_MODEL: usize = 32;
const HEADS: usize = 4;
const T: usize = 16;
const K: usize = 4;

fn layer(q_latent: Option<usize>, top_k: usize, dev: &Device) -> Dsa {
    let config = AttentionConfig::Dsa { kv_heads: None, kv_latent: Some(16), q_latent, rope_dim: Some(4), top_k, index_heads: 3, index_dim: 8 };
    let Attention::Dsa(mut m) = seeded(dev, 21, || config.init(D_MODEL, HEADS, 64, ROPE_BASE as f32, dev)) else { panic!("dsa") };
    // ×16: with a query latent the RMSNorm of c_q undoes the scaling of W_dq, so only W_uq sharpens q.
    m.mla = m.mla.map(|mla| sharpen(mla, 16.0));
    m.indexer = sharpen(m.indexer, 4.0);
    m
}

/// The indexer's scores `[t][s]` (−∞ for s > t) of one sequence.
fn index_scores(m: &Dsa, xs: &[f64], cq: &[Vec<f64>], t: usize) -> Vec<Vec<f64>> {
    let ix = &m.indexer;
    let (h, d) = (ix.heads, ix.dim);
    let r = ix.rope.as_ref().map_or(0, |r| r.dim());
    let rot = |v: Vec<f64>, p: usize| {
        let mut out = rope(&v[..r], p, ROPE_BASE);
        out.extend(&v[r..]);
        out
    };
    let q_in = cq[0].len();
    let cq_flat: Vec<f64> = cq.iter().flatten().cloned().collect();
    let q = matmul(&cq_flat, t, q_in, &to_vec(ix.q.weight.val()), h * d);
    let kraw = matmul(xs, t, D_MODEL, &to_vec(ix.k.weight.val()), d);
    let (gamma, beta) = (to_vec(ix.k_norm.gamma.val()), to_vec(ix.k_norm.beta.as_ref().unwrap().val()));
    let keys: Vec<Vec<f64>> = (0..t)
        .map(|p| {
            let v = cols(&kraw, d, p, 0, d);
            let mean = v.iter().sum::<f64>() / d as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d as f64;
            let normed: Vec<f64> = v.iter().enumerate().map(|(i, x)| (x - mean) / (var + 1e-6).sqrt() * gamma[i] + beta[i]).collect();
            rot(normed, p)
        })
        .collect();
    let w = matmul(xs, t, D_MODEL, &to_vec(ix.w.weight.val()), h);
    (0..t)
        .map(|i| {
            (0..t)
                .map(|s| {
                    if s > i {
                        return f64::NEG_INFINITY;
                    }
                    (0..h)
                        .map(|j| {
                            let qj = rot(cols(&q, h * d, i, j * d, d), i);
                            let dot: f64 = qj.iter().zip(&keys[s]).map(|(a, b)| a * b).sum();
                            w[i * h + j] / ((h * d) as f64).sqrt() * dot.max(0.0)
                        })
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// The selected keys of each row: the top min(k, t + 1) by score, ties to the lower index.
fn selection(scores: &[Vec<f64>], k: usize) -> Vec<Vec<bool>> {
    scores
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut order: Vec<usize> = (0..=i).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
            let mut sel = vec![false; row.len()];
            for &j in order.iter().take(k) {
                sel[j] = true;
            }
            sel
        })
        .collect()
}

struct Reference {
    y: Vec<f64>,
    kl_dense: f64,
    kl_sparse: f64,
    recall: f64,
}

/// DSA on GQA-2 (4 heads, 2 K/V heads): the same indexer reading x, attention weights ×12.
fn grouped_layer(top_k: usize, dev: &Device) -> Dsa {
    let config = AttentionConfig::Dsa { kv_heads: Some(2), kv_latent: None, q_latent: None, rope_dim: Some(4), top_k, index_heads: 3, index_dim: 8 };
    let Attention::Dsa(mut m) = seeded(dev, 22, || config.init(D_MODEL, HEADS, 64, ROPE_BASE as f32, dev)) else { panic!("dsa") };
    m.gqa = m.gqa.map(|g| sharpen(g, SHARP));
    m.indexer = sharpen(m.indexer, 4.0);
    m
}

/// DSA on GQA: the grouped-query reference with each query's visible keys = its selection.
fn grouped_reference(m: &Dsa, x: &[f64], b: usize, t: usize) -> Vec<f64> {
    let gqa = m.gqa.as_ref().expect("gqa");
    (0..b)
        .flat_map(|seq| {
            let xs = &x[seq * t * D_MODEL..(seq + 1) * t * D_MODEL];
            let cq: Vec<Vec<f64>> = (0..t).map(|p| xs[p * D_MODEL..(p + 1) * D_MODEL].to_vec()).collect();
            let sel = selection(&index_scores(m, xs, &cq, t), m.top_k);
            gqa_reference(gqa, xs, 1, t, D_MODEL, &|_, i, j| sel[i][j])
        })
        .collect()
}

fn reference(m: &Dsa, x: &[f64], b: usize, t: usize) -> Reference {
    let (h, d, r) = (m.mla().heads, m.mla().head_dim, m.mla().rope_dim);
    let scale = 1.0 / ((d + r) as f64).sqrt();
    let w_out = to_vec(m.mla().out.weight.val());
    let (mut y, mut kl_dense, mut kl_sparse, mut hits, mut total) = (Vec::new(), 0.0, 0.0, 0usize, 0usize);
    for seq in 0..b {
        let xs = &x[seq * t * D_MODEL..(seq + 1) * t * D_MODEL];
        let heads = mla_heads(m.mla(), xs, t, D_MODEL);
        let scores = index_scores(m, xs, &heads.cq, t);
        let sel = selection(&scores, m.top_k);
        let mut concat = vec![0.0; t * h * d];
        for head in 0..h {
            let o = masked_head(&heads.q[head], &heads.k[head], &heads.v[head], scale, &|i, j| sel[i][j]);
            for (p, o) in o.into_iter().enumerate() {
                concat[p * h * d + head * d..p * h * d + (head + 1) * d].copy_from_slice(&o);
            }
        }
        y.extend(matmul(&concat, t, h * d, &w_out, D_MODEL));
        for i in 0..t {
            // p: attention probabilities summed over heads, L1-normalised (= mean over heads).
            let probs = |allows: &dyn Fn(usize, usize) -> bool| -> Vec<f64> {
                let mut p = vec![0.0; t];
                for head in 0..h {
                    for (j, w) in weights(&heads.q[head], &heads.k[head], i, scale, allows).into_iter().enumerate() {
                        p[j] += w / h as f64;
                    }
                }
                p
            };
            let kl = |p: &[f64], allowed: &dyn Fn(usize) -> bool| {
                let z: f64 = (0..t).filter(|&j| allowed(j)).map(|j| scores[i][j].exp()).sum();
                (0..t).filter(|&j| allowed(j) && p[j] > 0.0).map(|j| p[j] * (p[j].ln() - (scores[i][j].exp() / z).ln())).sum::<f64>()
            };
            let dense = probs(&|ii, j| j <= ii);
            kl_dense += kl(&dense, &|j| j <= i);
            kl_sparse += kl(&probs(&|ii, j| sel[ii][j]), &|j| sel[i][j]);
            if i + 1 > m.top_k {
                let dense_rows: Vec<Vec<f64>> = vec![dense.iter().enumerate().map(|(j, v)| if j <= i { *v } else { f64::NEG_INFINITY }).collect()];
                // The dense top-k of this row (the helper ranks rows by their own position).
                let mut order: Vec<usize> = (0..=i).collect();
                order.sort_by(|&a, &c| dense_rows[0][c].partial_cmp(&dense_rows[0][a]).unwrap().then(a.cmp(&c)));
                for &j in order.iter().take(m.top_k) {
                    total += 1;
                    hits += usize::from(sel[i][j]);
                }
            }
        }
    }
    let rows = (b * t) as f64;
    Reference { y, kl_dense: kl_dense / rows, kl_sparse: kl_sparse / rows, recall: hits as f64 / total as f64 }
}

#[test]
fn forward_matches_the_reference() {
    let dev = cpu();
    for q_latent in [None, Some(12)] {
        let m = layer(q_latent, K, &dev);
        let x = random_input(2, T, D_MODEL, 3, &dev);
        let got = to_vec(m.forward(x.clone()));
        assert_matches_reference(&format!("dsa q_latent {q_latent:?}"), &got, || reference(&m, &to_vec(x), 2, T).y);
    }
}

#[test]
fn on_grouped_query_attention_forward_and_decode_match_the_reference() {
    let dev = cpu();
    let m = grouped_layer(K, &dev);
    let x = random_input(2, T, D_MODEL, 11, &dev);
    let got = to_vec(m.forward(x.clone()));
    assert_matches_reference("dsa on gqa-2", &got, || grouped_reference(&m, &to_vec(x.clone()), 2, T));
    let err = rel_err(&to_vec(decode(&Attention::Dsa(m), &x, 5)), &got);
    assert!(err < 1e-5, "dsa on gqa-2: decode vs forward, relative error {err}");
}

#[test]
fn on_grouped_query_attention_top_k_covering_the_sequence_is_gqa() {
    let dev = cpu();
    let m = grouped_layer(T, &dev);
    let x = random_input(2, T, D_MODEL, 12, &dev);
    let err = rel_err(&to_vec(m.forward(x.clone())), &to_vec(m.gqa.as_ref().unwrap().forward(x)));
    assert!(err < 1e-5, "top_k ≥ T vs GQA: relative error {err}");
}

#[test]
fn top_k_covering_the_sequence_is_mla() {
    let dev = cpu();
    let m = layer(Some(12), T, &dev);
    let x = random_input(2, T, D_MODEL, 4, &dev);
    let err = rel_err(&to_vec(m.forward(x.clone())), &to_vec(m.mla().forward(x)));
    assert!(err < 1e-5, "top_k ≥ T vs MLA: relative error {err}");
}

#[test]
fn decode_equals_the_forward() {
    let dev = cpu();
    let m = layer(Some(12), K, &dev);
    let x = random_input(2, T, D_MODEL, 5, &dev);
    let full = to_vec(m.forward(x.clone()));
    let attn = Attention::Dsa(m);
    for prefill in [1, 6] {
        let err = rel_err(&to_vec(decode(&attn, &x, prefill)), &full);
        assert!(err < 1e-5, "prefill {prefill}: decode vs forward, relative error {err}");
    }
}

#[test]
fn changing_later_tokens_changes_no_earlier_output() {
    let dev = cpu();
    let m = layer(None, K, &dev);
    let x = random_input(1, T, D_MODEL, 6, &dev);
    let later = random_input(1, T - 8, D_MODEL, 7, &dev);
    let changed = Tensor::cat(vec![x.clone().narrow(1, 0, 8), later], 1);
    let (a, b) = (to_vec(m.forward(x).narrow(1, 0, 8)), to_vec(m.forward(changed).narrow(1, 0, 8)));
    assert!(max_abs_diff(&a, &b) < 1e-6, "outputs ≤ t moved by {}", max_abs_diff(&a, &b));
}

#[test]
fn ties_go_to_the_lower_index_in_forward_and_decode() {
    let dev = cpu();
    let mut m = layer(None, K, &dev);
    // q^I = 0: every score is exactly 0, every row a tie.
    let shape = m.indexer.q.weight.dims();
    m.indexer.q.weight = Param::from_tensor(Tensor::zeros(shape, &dev));
    let x = random_input(2, T, D_MODEL, 8, &dev);
    let got = to_vec(m.forward(x.clone()));
    assert_matches_reference("dsa with tied scores", &got, || reference(&m, &to_vec(x.clone()), 2, T).y);
    let err = rel_err(&to_vec(decode(&Attention::Dsa(m), &x, 3)), &got);
    assert!(err < 1e-5, "decode under ties: {err}");
}

#[test]
fn the_indexer_losses_match_the_reference() {
    let dev = cpu();
    let m = layer(Some(12), K, &dev);
    let x = random_input(2, T, D_MODEL, 9, &dev);
    let want = reference(&m, &to_vec(x.clone()), 2, T);
    let dense = m.forward_with(x.clone(), IndexerLoss::Dense);
    let sparse = m.forward_with(x.clone(), IndexerLoss::Sparse);
    let (kd, ks) = (to_vec(dense.kl.unwrap())[0], to_vec(sparse.kl.unwrap())[0]);
    assert!(want.kl_dense > 0.05 && want.kl_sparse > 1e-3, "an untrained indexer disagrees with the attention: {} {}", want.kl_dense, want.kl_sparse);
    assert!((kd - want.kl_dense).abs() < 1e-4 * want.kl_dense, "dense KL {kd} vs {}", want.kl_dense);
    assert!((ks - want.kl_sparse).abs() < 1e-4 * want.kl_sparse, "sparse KL {ks} vs {}", want.kl_sparse);
    assert_eq!(dense.recall, sparse.recall);
    assert!((dense.recall.unwrap() - want.recall).abs() < 1e-9, "recall {:?} vs {}", dense.recall, want.recall);
    // The dense warm-up's main attention is dense: MLA's output.
    let err = rel_err(&to_vec(dense.y), &to_vec(m.mla().forward(x)));
    assert!(err < 1e-5, "dense mode vs MLA: {err}");
}

/// Sparse training: the LM loss (through the output) reaches no indexer parameter; the
/// indexer's KL reaches no backbone parameter, and does reach every indexer parameter.
#[test]
fn gradients_stay_on_their_side() {
    let dev = cpu().autodiff();
    let m = layer(Some(12), K, &dev);
    let x = random_input(2, T, D_MODEL, 10, &dev).require_grad();
    let nonzero = |g: Option<Tensor<2>>| g.is_some_and(|g| g.abs().max().into_scalar::<f32>() > 0.0);
    let out = m.forward_with(x.clone(), IndexerLoss::Sparse);
    let r = Tensor::<1>::from_data(TensorData::new(probe(2 * T * D_MODEL, 3).into_iter().map(|v| v as f32).collect::<Vec<_>>(), [2 * T * D_MODEL]), &dev).reshape([2, T, D_MODEL]);
    let lm = (out.y * r).sum().backward();
    for (name, w) in [("q", &m.indexer.q.weight), ("k", &m.indexer.k.weight), ("w", &m.indexer.w.weight)] {
        assert!(!nonzero(w.val().grad(&lm)), "the LM loss reached the indexer's {name}");
    }
    assert!(nonzero(m.mla().kv_down.weight.val().grad(&lm)), "the LM loss trains MLA");
    let kl = m.forward_with(x.clone(), IndexerLoss::Sparse).kl.unwrap().backward();
    for (name, w) in [("q_up", &m.mla().q_up.weight), ("kv_down", &m.mla().kv_down.weight), ("kv_up", &m.mla().kv_up.weight), ("out", &m.mla().out.weight)] {
        assert!(!nonzero(w.val().grad(&kl)), "the indexer's KL reached MLA's {name}");
    }
    let ql = m.mla().q_latent.as_ref().unwrap();
    assert!(!nonzero(ql.down.weight.val().grad(&kl)), "the indexer's KL reached MLA's query latent");
    // Nor the layer's input (the norm, earlier layers, the embedding).
    assert!(x.grad(&kl).is_none_or(|g| g.abs().max().into_scalar::<f32>() == 0.0), "the indexer's KL reached the layer's input");
    for (name, w) in [("q", &m.indexer.q.weight), ("k", &m.indexer.k.weight), ("w", &m.indexer.w.weight)] {
        assert!(nonzero(w.val().grad(&kl)), "the KL trains the indexer's {name}");
    }
}

/// The dense KL's gradient with respect to the indexer against central finite differences of
/// the f64 reference (the selection does not enter the dense KL).
#[test]
fn the_dense_kl_gradient_matches_finite_differences() {
    let dev = cpu().autodiff();
    let m = layer(None, K, &dev);
    let x = random_input(1, 8, D_MODEL, 11, &dev);
    let grads = m.forward_with(x.clone(), IndexerLoss::Dense).kl.unwrap().backward();
    let xs = to_vec(x);
    for which in 0..3 {
        let param = |m: &Dsa| match which {
            0 => m.indexer.q.weight.clone(),
            1 => m.indexer.k.weight.clone(),
            _ => m.indexer.w.weight.clone(),
        };
        let g = to_vec(param(&m).val().grad(&grads).unwrap());
        let i = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        // The entry moved to w ± h as stored in f32; the difference quotient uses the stored
        // step. h = 2e-4: at 1e-3 the central difference's own error reached 0.5% on one CI
        // run (the LayerNorm'd key makes the KL strongly curved in W_kI).
        let w0 = to_vec(param(&m).val())[i] as f32;
        let at = |value: f32| {
            let mut moved = m.clone().valid();
            let p = param(&moved).val();
            let (shape, device) = (p.shape(), p.device());
            let mut v = p.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
            v[i] = value;
            let p = Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &device));
            match which {
                0 => moved.indexer.q.weight = p,
                1 => moved.indexer.k.weight = p,
                _ => moved.indexer.w.weight = p,
            }
            reference(&moved, &xs, 1, 8).kl_dense
        };
        let (up, down) = (w0 + 2e-4, w0 - 2e-4);
        let fd = (at(up) - at(down)) / (up as f64 - down as f64);
        assert!((g[i] - fd).abs() <= 2e-3 * g[i].abs() + 1e-6, "indexer parameter {which}[{i}]: autodiff {} vs finite difference {fd}", g[i]);
    }
}

#[test]
fn state_bytes_equal_the_real_tensors() {
    let dev = cpu();
    let attn = Attention::Dsa(layer(None, K, &dev));
    let state = attn.init_state(2, 40, &dev);
    assert_eq!(state.bytes(), attn.state_bytes(40));
    assert_eq!(attn.state_bytes(40), 4 * 40 * (16 + 4 + 8), "(d_c + d_R + d_I) per token");
}

#[test]
fn labels_and_validation_of_the_grouped_option() {
    let parse = |s: &str| toml::from_str::<AttentionConfig>(s).unwrap();
    assert_eq!(parse("kind = \"dsa\"\ntop_k = 32").label(), "dsa-k32");
    assert_eq!(parse("kind = \"dsa\"\ntop_k = 32\nkv_heads = 2").label(), "dsa-k32-gqa2");
    assert_eq!(parse("kind = \"dsa\"\ntop_k = 32\nkv_heads = 2").validate(128, 4), Ok(()));
    let err = parse("kind = \"dsa\"\ntop_k = 32\nkv_heads = 3").validate(128, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.kv_heads");
    let err = parse("kind = \"dsa\"\ntop_k = 32\nkv_heads = 2\nkv_latent = 64").validate(128, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.kv_latent");
    let err = parse("kind = \"dsa\"\ntop_k = 32\nkv_heads = 2\nrope_dim = 64").validate(128, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.rope_dim");
    // rope_dim left out (head_dim / 2 = 16) and a narrower indexer: the field to change is named.
    let err = parse("kind = \"dsa\"\ntop_k = 32\nkv_heads = 2\nindex_dim = 8").validate(128, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.index_dim");
}

/// The indexer's KL on a 4-token example worked by hand. Two heads whose probabilities sum, per
/// row, to twice p = [1], [½, ½], [0.2, 0.3, 0.5], [0.1, 0.2, 0.3, 0.4]; indexer scores whose
/// softmax over the earlier keys is [1], [¼, ¾], [⅓, ⅓, ⅓], [0.1, 0.2, 0.3, 0.4] (the future
/// entries hold finite scores, which the mask must drop). Dense KL per row: 0;
/// ½ln(½/¼) + ½ln(½/¾); 0.2ln(0.2·3) + 0.3ln(0.3·3) + 0.5ln(0.5·3); 0 — mean over the 4 rows.
/// Sparse: row 3 restricted to keys {1, 3}, p = [0.4, 0.6] there, the index softmax over them
/// (scores ln 2, ln 4) [⅓, ⅔]: KL = 0.4ln(0.4·3) + 0.6ln(0.6·1.5), the other rows allowing only
/// their own key (KL 0); the mean over 4 rows.
///
/// Planted and seen to fail: p summed over heads but not normalised; the future keys left in the
/// index softmax.
#[test]
fn the_kl_matches_a_hand_computation_on_four_tokens() {
    let dev = cpu();
    let (l2, l3, l4) = (2f32.ln(), 3f32.ln(), 4f32.ln());
    let head_a = [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.4, 0.6, 0.0, 0.0], [0.2, 0.4, 0.4, 0.0]];
    let head_b = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.2, 0.8]];
    let probs: Vec<f32> = head_a.iter().chain(head_b.iter()).flatten().copied().collect();
    let probs = Tensor::<1>::from_data(TensorData::new(probs, [32]), &dev).reshape([1, 2, 4, 4]);
    let index = [[0.0, 5.0, 5.0, 5.0], [0.0, l3, 5.0, 5.0], [0.0, 0.0, 0.0, 5.0], [0.0, l2, l3, l4]];
    let index = Tensor::<1>::from_data(TensorData::new(index.iter().flatten().copied().collect::<Vec<f32>>(), [16]), &dev).reshape([1, 4, 4]);
    let mask = |rows: [[bool; 4]; 4]| Tensor::<1, attnlab_attn::burn::tensor::Bool>::from_data(TensorData::new(rows.iter().flatten().copied().collect::<Vec<bool>>(), [16]), &dev).reshape([1, 4, 4]);
    let causal = mask([[true, false, false, false], [true, true, false, false], [true, true, true, false], [true, true, true, true]]);
    let dense = (0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln() + 0.2 * 0.6f64.ln() + 0.3 * 0.9f64.ln() + 0.5 * 1.5f64.ln()) / 4.0;
    let got = to_vec(indexer_kl(probs.clone(), index.clone(), causal).0)[0];
    assert!((got - dense).abs() < 1e-6, "dense KL {got} vs hand {dense}");
    // Sparse: the selected sets, with p from the sparse attention (here: head A's row 3 on {1, 3}).
    let selected = mask([[true, false, false, false], [false, true, false, false], [false, false, true, false], [false, true, false, true]]);
    let sparse_probs = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.4, 0.0, 0.6]];
    let sparse_probs = Tensor::<1>::from_data(TensorData::new(sparse_probs.iter().flatten().copied().collect::<Vec<f32>>(), [16]), &dev).reshape([1, 1, 4, 4]);
    let sparse = (0.4 * (0.4f64 * 3.0).ln() + 0.6 * (0.6f64 * 1.5).ln()) / 4.0;
    let got = to_vec(indexer_kl(sparse_probs, index, selected).0)[0];
    assert!((got - sparse).abs() < 1e-6, "sparse KL {got} vs hand {sparse}");
}
