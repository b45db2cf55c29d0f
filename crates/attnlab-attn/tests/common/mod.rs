//! Independent references in plain Rust (f64 loops over `Vec`s, no Burn), and small helpers.
#![allow(dead_code)]

use attnlab_attn::burn::tensor::{Device, Distribution, Tensor};
use attnlab_attn::{Attention, AttentionConfig, GroupedQuery};

/// RoPE base every test module uses.
pub const ROPE_BASE: f64 = 10_000.0;

pub fn cpu() -> Device {
    Device::flex()
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().try_into_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

pub fn random_input(batch: usize, seq: usize, d: usize, seed: u64, device: &Device) -> Tensor<3> {
    device.seed(seed);
    Tensor::random([batch, seq, d], Distribution::Normal(0.0, 1.0), device)
}

/// Largest |a − b|.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Row-major `[n, k] · [k, m]`.
pub fn matmul(x: &[f64], n: usize, k: usize, w: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..k {
            let a = x[i * k + j];
            for c in 0..m {
                out[i * m + c] += a * w[j * m + c];
            }
        }
    }
    out
}

/// Rotate-half RoPE of one vector at position `pos`.
pub fn rope(v: &[f64], pos: usize, base: f64) -> Vec<f64> {
    let d = v.len();
    let half = d / 2;
    let mut out = vec![0.0; d];
    for i in 0..half {
        let angle = pos as f64 * base.powf(-2.0 * i as f64 / d as f64);
        let (s, c) = angle.sin_cos();
        out[i] = v[i] * c - v[i + half] * s;
        out[i + half] = v[i + half] * c + v[i] * s;
    }
    out
}

/// RMSNorm of one vector with gain `gamma`.
pub fn rms_norm(v: &[f64], gamma: &[f64], eps: f64) -> Vec<f64> {
    let ms = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    v.iter().zip(gamma).map(|(x, g)| x * r * g).collect()
}

/// Causal softmax attention of one head: q `[t][dq]`, k `[t][dq]`, v `[t][dv]`.
pub fn causal_head(q: &[Vec<f64>], k: &[Vec<f64>], v: &[Vec<f64>], scale: f64) -> Vec<Vec<f64>> {
    masked_head(q, k, v, scale, &|i, j| j <= i)
}

/// Softmax attention of one head where query i sees key j iff `allows(i, j)`.
pub fn masked_head(q: &[Vec<f64>], k: &[Vec<f64>], v: &[Vec<f64>], scale: f64, allows: &dyn Fn(usize, usize) -> bool) -> Vec<Vec<f64>> {
    (0..q.len()).map(|i| weights(q, k, i, scale, allows)).map(|w| weighted_sum(&w, v)).collect()
}

/// Softmax weights of query i over all keys (0 where not allowed).
pub fn weights(q: &[Vec<f64>], k: &[Vec<f64>], i: usize, scale: f64, allows: &dyn Fn(usize, usize) -> bool) -> Vec<f64> {
    let scores: Vec<Option<f64>> =
        (0..k.len()).map(|j| allows(i, j).then(|| q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>() * scale)).collect();
    let max = scores.iter().flatten().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| s.map_or(0.0, |s| (s - max).exp())).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// `Σ_j w_j v_j`.
pub fn weighted_sum(w: &[f64], v: &[Vec<f64>]) -> Vec<f64> {
    let mut o = vec![0.0; v[0].len()];
    for (wj, vj) in w.iter().zip(v) {
        for (oc, vc) in o.iter_mut().zip(vj) {
            *oc += wj * vc;
        }
    }
    o
}

/// Grouped-query attention of a [`GroupedQuery`] module's weights, one sequence at a time, with
/// its own visibility rule `allows(head, q, k)` and, when the module has one, the sigmoid gate:
/// per head i, group ⌊i / (h/g)⌋ supplies K and V.
pub fn gqa_reference(m: &GroupedQuery, x: &[f64], b: usize, t: usize, d_model: usize, allows: &dyn Fn(usize, usize, usize) -> bool) -> Vec<f64> {
    let (h, g, d) = (m.heads, m.kv_heads, m.head_dim);
    let w_qkv = to_vec(m.qkv.weight.val());
    let w_out = to_vec(m.out.weight.val());
    let w_gate = m.gate.as_ref().map(|l| to_vec(l.weight.val()));
    let width = (h + 2 * g) * d;
    let mut out = Vec::new();
    for s in 0..b {
        let xs = &x[s * t * d_model..(s + 1) * t * d_model];
        let qkv = matmul(xs, t, d_model, &w_qkv, width);
        let mut concat = vec![0.0; t * h * d];
        for head in 0..h {
            let kv = head / (h / g);
            let q: Vec<Vec<f64>> = (0..t).map(|p| rope(&cols(&qkv, width, p, head * d, d), p, ROPE_BASE)).collect();
            let k: Vec<Vec<f64>> = (0..t).map(|p| rope(&cols(&qkv, width, p, (h + kv) * d, d), p, ROPE_BASE)).collect();
            let v: Vec<Vec<f64>> = (0..t).map(|p| cols(&qkv, width, p, (h + g + kv) * d, d)).collect();
            for (p, o) in masked_head(&q, &k, &v, 1.0 / (d as f64).sqrt(), &|i, j| allows(head, i, j)).into_iter().enumerate() {
                concat[p * h * d + head * d..p * h * d + (head + 1) * d].copy_from_slice(&o);
            }
        }
        if let Some(w_gate) = &w_gate {
            let gate = matmul(xs, t, d_model, w_gate, h * d);
            for (c, z) in concat.iter_mut().zip(gate) {
                *c *= 1.0 / (1.0 + (-z).exp());
            }
        }
        out.extend(matmul(&concat, t, h * d, &w_out, d_model));
    }
    out
}

/// Slices columns `from..from+len` of row `r` of a row-major matrix with `cols` columns.
pub fn cols(m: &[f64], cols: usize, r: usize, from: usize, len: usize) -> Vec<f64> {
    m[r * cols + from..r * cols + from + len].to_vec()
}

/// A grouped-query-family mixer (128 positions) with seeded weights.
pub fn grouped(config: &AttentionConfig, d_model: usize, heads: usize, seed: u64) -> GroupedQuery {
    let dev = cpu();
    dev.seed(seed);
    match config.init(d_model, heads, 128, ROPE_BASE as f32, &dev) {
        Attention::GroupedQuery(m) => m,
        other => panic!("expected a grouped-query module, got {other:?}"),
    }
}
