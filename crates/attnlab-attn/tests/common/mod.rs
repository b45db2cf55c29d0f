//! Independent references in plain Rust (f64 loops over `Vec`s, no Burn), and small helpers.
#![allow(dead_code)]

use attnlab_attn::burn::tensor::{Device, Distribution, Tensor};

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
    let dv = v[0].len();
    (0..q.len())
        .map(|i| {
            let scores: Vec<f64> = (0..=i).map(|j| q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>() * scale).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = w.iter().sum();
            let mut o = vec![0.0; dv];
            for (j, wj) in w.iter().enumerate() {
                for c in 0..dv {
                    o[c] += wj / z * v[j][c];
                }
            }
            o
        })
        .collect()
}

/// Slices columns `from..from+len` of row `r` of a row-major matrix with `cols` columns.
pub fn cols(m: &[f64], cols: usize, r: usize, from: usize, len: usize) -> Vec<f64> {
    m[r * cols + from..r * cols + from + len].to_vec()
}
