//! LoLCATs (`kind = "lolcats"`) against an independent f64 reference written from
//! MECHANISMS.md §10: the TK sets from their block definition (window = the previous and the
//! current block up to i, linear = every earlier key), RoPE before φ, per-query-head maps
//! `[softmax(xW), softmax(−xW)]` clamped at 1e-12, γ = σ(w) on the max-shifted softmax term
//! only, LoRA as `W + (α/r)·A B`, and W_o. Peaked attention (weights ×12) with γ spread over
//! heads and random adapters; GQA (4 query heads on 2 K/V heads); T not a multiple of the block.
//!
//! Mutations planted and seen to fail:
//! - the window one block short (`lo = W·⌊i/W⌋`, the current block only) →
//!   `the_tk_sets_have_the_papers_counts`, `forward_matches_the_reference`, gradients, transfer;
//! - γ multiplying the linear term instead of the softmax term → forward, gradients, transfer;
//! - the linear term shifted by the window's row maximum too → forward, gradients, transfer;
//! - the LoRA scale α/r left out of W_qkv's adapters → forward, decode, gradients, transfer,
//!   `new_adapters_are_the_identity_and_merged_adapters_equal_the_adapters`;
//! - the k map reading the q map (the test layer's maps differ) → forward, gradients, transfer;
//! - decode folding block b − 1 instead of b − 2 on entering block b → `decode_matches_the_reference`;
//! - `forward_transfer` passing the student's output on → `transfer_passes_the_teacher_on_and_returns_the_mse`;
//! - state bytes without the normaliser z → `state_bytes_equal_the_real_tensors_and_stop_growing`.
//!
//! Not planted: φ before RoPE (the reference applies φ to the rotated rows, so the forward test
//! would catch it, but the module has no switch to plant it with one edit).

mod common;

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::tensor::{Device, Distribution, Tensor, TensorData};
use attnlab_attn::lolcats::GAMMA_INIT;
use attnlab_attn::{Attention, AttentionConfig, Lolcats, LolcatsMap};
use common::recurrent::sigmoid;
use common::*;

const D_MODEL: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const T: usize = 19;
const W: usize = 4;

fn config(window: usize, map: LolcatsMap, lora_rank: usize) -> AttentionConfig {
    AttentionConfig::Lolcats { kv_heads: Some(KV_HEADS), window, feature_dim: 3, feature_map: map, lora_rank, lora_alpha: 6.0 }
}

/// A layer with peaked attention, γ spread over heads (0.12–0.88), random adapters (B ≠ 0)
/// and a k map that differs from the q map.
fn layer(window: usize, map: LolcatsMap, dev: &Device) -> Lolcats {
    let Attention::Lolcats(m) = seeded(dev, 5, || config(window, map, 2).init(D_MODEL, HEADS, 64, ROPE_BASE as f32, dev)) else { panic!("lolcats") };
    let mut m = m;
    // Peaked scores from the softmax weights; maps and adapters at their own scale.
    m.base = sharpen(m.base, SHARP);
    if m.window_logit.is_some() {
        m.window_logit = Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![-2.0f32, -0.5, 0.7, 2.0], [HEADS]), dev)));
    }
    if let Some(l) = m.lora.as_mut() {
        for (i, pair) in [&mut l.q, &mut l.k, &mut l.v, &mut l.out].into_iter().enumerate() {
            let [r, n] = pair.b.dims();
            pair.b = Param::from_tensor(seeded(dev, 40 + i as u64, || Tensor::random([r, n], Distribution::Normal(0.0, 0.05), dev)));
        }
    }
    if let Some(k) = m.k_map.as_mut() {
        let shape = k.dims();
        *k = Param::from_tensor((k.val() + seeded(dev, 60, || Tensor::random(shape, Distribution::Normal(0.0, 0.5), dev))).detach());
    }
    m
}

/// The window's first key for query i: the previous block's start (block 0: 0).
fn window_start(i: usize, w: usize) -> usize {
    let block = i / w;
    if block == 0 { 0 } else { (block - 1) * w }
}

fn phi(x: &[f64], map: Option<&[f64]>, f: usize) -> Vec<f64> {
    match map {
        None => x.iter().map(|&v| if v > 0.0 { v + 1.0 } else { v.exp() }).collect(),
        Some(w) => {
            let d = x.len();
            let z: Vec<f64> = (0..f).map(|c| (0..d).map(|r| x[r] * w[r * f + c]).sum()).collect();
            let soft = |sign: f64| {
                let mx = z.iter().map(|v| sign * v).fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (sign * v - mx).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| (v / s).max(1e-12))
            };
            soft(1.0).chain(soft(-1.0)).collect()
        }
    }
}

/// Per-sequence, per-head (q, k, v) rows after RoPE from the layer's weights with adapters folded in by hand.
struct Projected {
    q: Vec<Vec<Vec<f64>>>,
    k: Vec<Vec<Vec<f64>>>,
    v: Vec<Vec<Vec<f64>>>,
}

fn add_scaled_product(w: &mut [f64], a: &[f64], b: &[f64], d_in: usize, r: usize, cols: usize, from: usize, width: usize, scale: f64) {
    let ab = matmul(a, d_in, r, b, cols);
    for i in 0..d_in {
        for c in 0..cols {
            w[i * width + from + c] += scale * ab[i * cols + c];
        }
    }
}

/// W_qkv and W_o with `(α/r)·A B` added (the adapters as their definition says).
fn effective_weights(m: &Lolcats) -> (Vec<f64>, Vec<f64>) {
    let (h, g, d) = (m.base.heads, m.base.kv_heads, m.base.head_dim);
    let width = (h + 2 * g) * d;
    let mut w_qkv = to_vec(m.base.qkv.weight.val());
    let mut w_out = to_vec(m.base.out.weight.val());
    if let Some(l) = &m.lora {
        let r = l.q.a.dims()[1];
        let s = 6.0 / r as f64;
        for (pair, from, cols) in [(&l.q, 0, h * d), (&l.k, h * d, g * d), (&l.v, (h + g) * d, g * d)] {
            add_scaled_product(&mut w_qkv, &to_vec(pair.a.val()), &to_vec(pair.b.val()), D_MODEL, r, cols, from, width, s);
        }
        add_scaled_product(&mut w_out, &to_vec(l.out.a.val()), &to_vec(l.out.b.val()), h * d, r, D_MODEL, 0, D_MODEL, s);
    }
    (w_qkv, w_out)
}

fn project(m: &Lolcats, x: &[f64], t: usize) -> Projected {
    let (h, g, d) = (m.base.heads, m.base.kv_heads, m.base.head_dim);
    let width = (h + 2 * g) * d;
    let qkv = matmul(x, t, D_MODEL, &effective_weights(m).0, width);
    let head = |from: usize, rotate: bool| -> Vec<Vec<f64>> {
        (0..t).map(|p| {
            let v = cols(&qkv, width, p, from, d);
            if rotate { rope(&v, p, ROPE_BASE) } else { v }
        }).collect()
    };
    // Query head i reads K/V head ⌊i / (h/g)⌋.
    let group = |i: usize| i / (h / g);
    Projected {
        q: (0..h).map(|i| head(i * d, true)).collect(),
        k: (0..h).map(|i| head(h * d + group(i) * d, true)).collect(),
        v: (0..h).map(|i| head((h + g) * d + group(i) * d, false)).collect(),
    }
}

/// Per-head hybrid outputs `[h][t][d]` of one sequence.
fn hybrid_heads(m: &Lolcats, p: &Projected, t: usize) -> Vec<Vec<Vec<f64>>> {
    let (h, d) = (m.base.heads, m.base.head_dim);
    let gammas: Vec<f64> = m.window_logit.as_ref().map_or(vec![], |w| to_vec(w.val()).into_iter().map(sigmoid).collect());
    let qmap = m.q_map.as_ref().map(|w| to_vec(w.val()));
    let kmap = m.k_map.as_ref().map(|w| to_vec(w.val()));
    let f = m.q_map.as_ref().map_or(0, |w| w.dims()[2]);
    let w = m.window;
    (0..h)
        .map(|head| {
            let map = |all: &Option<Vec<f64>>| all.as_ref().map(|v| v[head * d * f..(head + 1) * d * f].to_vec());
            let (qm, km) = (map(&qmap), map(&kmap));
            (0..t)
                .map(|i| {
                    let lo = if w == 0 { i + 1 } else { window_start(i, w) };
                    let (mut num, mut den) = (vec![0.0; d], 0.0);
                    if w > 0 {
                        // Record the window's softmax row for the peakedness check.
                        weights(&p.q[head], &p.k[head], i, 1.0 / (d as f64).sqrt(), &|ii, j| j >= window_start(ii, w) && j <= ii);
                        let s: Vec<f64> = (lo..=i).map(|j| p.q[head][i].iter().zip(&p.k[head][j]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()).collect();
                        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        for (n, j) in (lo..=i).enumerate() {
                            let a = gammas[head] * (s[n] - mx).exp();
                            den += a;
                            num.iter_mut().zip(&p.v[head][j]).for_each(|(o, v)| *o += a * v);
                        }
                    }
                    let fq = phi(&p.q[head][i], qm.as_deref(), f);
                    for j in 0..lo.min(i + 1) {
                        let fk = phi(&p.k[head][j], km.as_deref(), f);
                        let a: f64 = fq.iter().zip(&fk).map(|(x, y)| x * y).sum();
                        den += a;
                        num.iter_mut().zip(&p.v[head][j]).for_each(|(o, v)| *o += a * v);
                    }
                    num.into_iter().map(|v| v / den).collect()
                })
                .collect()
        })
        .collect()
}

/// `[b, t, d_model]` from per-head outputs: heads concatenated, then W_o (with its adapter).
fn output(m: &Lolcats, heads: &[Vec<Vec<f64>>], t: usize) -> Vec<f64> {
    let concat: Vec<f64> = (0..t).flat_map(|i| heads.iter().flat_map(move |hd| hd[i].clone())).collect();
    matmul(&concat, t, heads.len() * m.base.head_dim, &effective_weights(m).1, D_MODEL)
}

fn reference(m: &Lolcats, x: &[f64], b: usize, t: usize) -> Vec<f64> {
    (0..b)
        .flat_map(|s| {
            let p = project(m, &x[s * t * D_MODEL..(s + 1) * t * D_MODEL], t);
            output(m, &hybrid_heads(m, &p, t), t)
        })
        .collect()
}

/// The teacher's output and the MSE of the per-head outputs to the teacher's, over everything.
fn transfer_reference(m: &Lolcats, x: &[f64], b: usize, t: usize) -> (Vec<f64>, f64) {
    let d = m.base.head_dim;
    let (mut y, mut sq, mut n) = (Vec::new(), 0.0, 0usize);
    for s in 0..b {
        let p = project(m, &x[s * t * D_MODEL..(s + 1) * t * D_MODEL], t);
        let student = hybrid_heads(m, &p, t);
        let teacher: Vec<Vec<Vec<f64>>> = (0..m.base.heads).map(|h| causal_head(&p.q[h], &p.k[h], &p.v[h], 1.0 / (d as f64).sqrt())).collect();
        for (sh, th) in student.iter().zip(&teacher) {
            for (sr, tr) in sh.iter().zip(th) {
                for (a, b) in sr.iter().zip(tr) {
                    sq += (a - b) * (a - b);
                    n += 1;
                }
            }
        }
        y.extend(output(m, &teacher, t));
    }
    (y, sq / n as f64)
}

#[test]
fn the_tk_sets_have_the_papers_counts() {
    for t in [200usize, 256] {
        for i in 0..t {
            let window = (0..t).filter(|&j| Lolcats::in_window(64, i, j)).count();
            let linear: Vec<usize> = (0..t).filter(|&j| Lolcats::in_linear(64, i, j)).collect();
            let want = if i < 64 { i + 1 } else { 64 + i % 64 + 1 };
            assert_eq!(window, want, "T {t}, query {i}: window keys");
            let bound = if i < 64 { 0 } else { 64 * (i / 64 - 1) };
            assert_eq!(linear, (0..bound).collect::<Vec<_>>(), "T {t}, query {i}: linear keys j < 64·(⌊i/64⌋ − 1)");
        }
    }
    assert!((0..10).all(|i| !Lolcats::in_window(0, i, i) && (0..=i).all(|j| Lolcats::in_linear(0, i, j))), "window 0: every key is linear");
}

#[test]
fn forward_matches_the_reference() {
    let dev = cpu();
    for (window, map) in [(W, LolcatsMap::Softmax), (W, LolcatsMap::Elu1), (0, LolcatsMap::Softmax), (3, LolcatsMap::Softmax)] {
        let m = layer(window, map, &dev);
        let x = random_input(2, T, D_MODEL, 7, &dev);
        let got = to_vec(m.forward(x.clone()));
        assert_matches_reference(&format!("lolcats window {window} {map:?}"), &got, || reference(&m, &to_vec(x), 2, T));
    }
}

#[test]
fn decode_matches_the_reference() {
    let dev = cpu();
    for window in [W, 3, 0] {
        let m = layer(window, LolcatsMap::Softmax, &dev);
        let x = random_input(2, T, D_MODEL, 8, &dev);
        let want = reference(&m, &to_vec(x.clone()), 2, T);
        let attn = Attention::Lolcats(m);
        for prefill in [1, 6] {
            let got = to_vec(decode(&attn, &x, prefill));
            let err = rel_err(&got, &want);
            assert!(err < 1e-4, "window {window}, prefill {prefill}: decode vs reference, relative error {err}");
        }
    }
}

#[test]
fn a_window_covering_the_sequence_is_the_softmax_layer() {
    let dev = cpu();
    let m = layer(32, LolcatsMap::Softmax, &dev).merge_lora();
    let x = random_input(2, T, D_MODEL, 9, &dev);
    let got = to_vec(m.forward(x.clone()));
    let want = to_vec(m.base.forward(x));
    let err = rel_err(&got, &want);
    assert!(err < 1e-5, "window ≥ T vs the softmax layer: relative error {err}");
}

#[test]
fn transfer_passes_the_teacher_on_and_returns_the_mse() {
    let dev = cpu();
    let m = layer(W, LolcatsMap::Softmax, &dev);
    let x = random_input(2, T, D_MODEL, 10, &dev);
    let (y, mse) = m.forward_transfer(x.clone());
    let (want_y, want_mse) = transfer_reference(&m, &to_vec(x), 2, T);
    let err = rel_err(&to_vec(y), &want_y);
    assert!(err < 1e-4, "the layer passes the teacher's output on: relative error {err}");
    let mse = to_vec(mse)[0];
    assert!(want_mse > 1e-3, "the student differs from the teacher here ({want_mse})");
    assert!((mse - want_mse).abs() < 1e-4 * want_mse, "MSE {mse} vs reference {want_mse}");
}

#[test]
fn gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    let m = layer(W, LolcatsMap::Softmax, &dev);
    let x = random_input(1, 11, D_MODEL, 11, &dev);
    check_gradients("lolcats", &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, 11));
}

#[test]
fn initialisation_as_the_reference_code() {
    let dev = cpu();
    let Attention::Lolcats(m) = seeded(&dev, 3, || AttentionConfig::Lolcats { kv_heads: None, window: 64, feature_dim: 64, feature_map: LolcatsMap::Softmax, lora_rank: 8, lora_alpha: 16.0 }.init(64, 4, 128, 10_000.0, &dev)) else { panic!() };
    let (q, k) = (to_vec(m.q_map.as_ref().unwrap().val()), to_vec(m.k_map.as_ref().unwrap().val()));
    assert_eq!(q, k, "the k map starts as a copy of the q map");
    let bound = (6.0f64 / (16.0 * 64.0)).sqrt();
    let max = q.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(max <= bound && max > 0.9 * bound, "maps U(±√(6/(d_h·f))) = ±{bound}: largest {max}");
    assert!(to_vec(m.window_logit.as_ref().unwrap().val()).iter().all(|w| (sigmoid(*w) - GAMMA_INIT).abs() < 1e-6), "γ starts at 0.1");
    let l = m.lora.as_ref().unwrap();
    assert!(to_vec(l.q.b.val()).iter().all(|v| *v == 0.0), "LoRA B starts at 0");
    let a = to_vec(l.q.a.val());
    assert!(a.iter().all(|v| v.abs() <= 1.0 / 8.0) && a.iter().any(|v| v.abs() > 0.1), "A ~ U(±1/√d_in)");
    assert!((l.scale - 2.0).abs() < 1e-12, "α / r = 16 / 8");
}

#[test]
fn new_adapters_are_the_identity_and_merged_adapters_equal_the_adapters() {
    let dev = cpu();
    let Attention::Lolcats(fresh) = seeded(&dev, 4, || config(W, LolcatsMap::Softmax, 2).init(D_MODEL, HEADS, 64, ROPE_BASE as f32, &dev)) else { panic!() };
    let mut fresh = fresh;
    fresh.base = sharpen(fresh.base, SHARP);
    let x = random_input(2, T, D_MODEL, 12, &dev);
    let with = to_vec(fresh.forward(x.clone()));
    let mut without = fresh.clone();
    without.lora = None;
    assert_eq!(with, to_vec(without.forward(x.clone())), "B = 0: the adapters change nothing");
    let m = layer(W, LolcatsMap::Softmax, &dev);
    let adapted = to_vec(m.forward(x.clone()));
    let merged = m.merge_lora();
    assert!(merged.lora.is_none());
    let err = rel_err(&to_vec(merged.forward(x)), &adapted);
    assert!(err < 1e-5, "merged weights vs adapters: relative error {err}");
}

#[test]
fn state_bytes_equal_the_real_tensors_and_stop_growing() {
    let dev = cpu();
    for window in [W, 0] {
        let m = layer(window, LolcatsMap::Softmax, &dev);
        let attn = Attention::Lolcats(m);
        let x = random_input(1, T, D_MODEL, 13, &dev);
        for capacity in [3, T, 100] {
            let mut state = attn.init_state(1, capacity, &dev);
            attn.step(x.clone().narrow(1, 0, 3.min(capacity)), &mut state);
            assert_eq!(state.bytes(), attn.state_bytes(capacity), "window {window}, capacity {capacity}");
        }
        assert_eq!(attn.state_bytes(1000), attn.state_bytes(100_000), "fixed beyond 2·window");
        let (dphi, d) = (6, D_MODEL / HEADS);
        let ring = 2 * (2 * window) * KV_HEADS * d;
        assert_eq!(attn.state_bytes(1000), 4 * (ring + HEADS * dphi * (d + 1)), "window {window}: ring + S + z");
    }
}

/// The k map starts as a copy of the q map with its own storage: a clone would share one
/// autodiff leaf, and both maps' gradients would land on one parameter (seen: "parameter has no
/// gradient" for the k map in the model tests). Planted: `k_map: q_map.clone()` → this fails.
#[test]
fn both_fresh_maps_get_their_own_gradients() {
    let dev = cpu().autodiff();
    let Attention::Lolcats(mut m) = seeded(&dev, 6, || config(W, LolcatsMap::Softmax, 0).init(D_MODEL, HEADS, 64, ROPE_BASE as f32, &dev)) else { panic!() };
    m.base = sharpen(m.base, SHARP);
    let x = random_input(1, T, D_MODEL, 14, &dev);
    let (_, mse) = m.forward_transfer(x);
    let grads = mse.backward();
    let q = m.q_map.as_ref().unwrap().val().grad(&grads).map(to_vec);
    let k = m.k_map.as_ref().unwrap().val().grad(&grads).map(to_vec);
    let (Some(q), Some(k)) = (q, k) else { panic!("a map without gradient") };
    assert!(q.iter().any(|v| *v != 0.0) && k.iter().any(|v| *v != 0.0) && q != k, "the maps' gradients are their own");
}
