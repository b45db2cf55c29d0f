//! Multi-Token Attention against an independent f64 reference written from MECHANISMS.md §9
//! (RAM's `mta_transformer.py` semantics): per head, Â = q·k/√d_h with the entries j > i set
//! to 0, the key–query convolution as an explicit sum over the kernel window (θ[a, b] reads
//! Â[i − (c_q − 1) + a, j − (c_k − 1)/2 + b], 0 outside the map), the pre-softmax mixing
//! `Σ_j W[i, j] A_j`, a softmax over j ≤ i, the post-softmax convolution and mask, the grouped
//! post-softmax mixing `Σ_j W_g[j, i] A_j`, `P v`, the shared-scale RMSNorm, depth scale and
//! the gate σ(w·o + b) on the normalised output. Kernels and mixings are identity plus noise
//! (a trained layer, not the identity init), attention weights ×12 (peaked).
//!
//! Mutations planted and seen to fail (the tests that failed):
//! - the kernel flipped on the query axis (θ[c_q − 1 − a]: a true convolution) →
//!   `forward_matches_the_reference`, gradients, `identity_transforms_equal_mha` (the shift
//!   test's 1 sits on the 3-row kernel's middle row, which a flip leaves in place);
//! - the query axis padded on both sides (1 row each side at c_q = 3: the leak) → forward,
//!   gradients, identity, shift, `changing_later_tokens_changes_no_earlier_output`, decode;
//! - the key padding one-sided (c_k − 1 zeros on the left) → forward, gradients, identity, shift;
//! - no zeroing before the convolution (masked entries carry their raw scores) → forward,
//!   gradients, shift, causality, decode;
//! - no −∞ mask after the convolution → every test but the labels, including
//!   `rows_put_no_mass_on_later_keys`;
//! - the post-softmax mixing with the pre-softmax convention (W_g[i, j]) → forward, gradients;
//! - the gate computed from the output before the norm → forward, gradients;
//! - decode keeping c_q − 2 queries per convolution → `decode_equals_the_forward` only;
//! - the composed (non-CPU) convolution padded on the future side →
//!   `the_composed_convolution_matches_the_window_sums`.

mod common;

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::tensor::{Device, Distribution, Tensor};
use attnlab_attn::{Attention, AttentionConfig, Mta};
use common::*;

const D_MODEL: usize = 32;
const HEADS: usize = 4;
const T: usize = 11;

fn config(kv_heads: Option<usize>, post_conv: bool, mix_group: Option<usize>) -> AttentionConfig {
    AttentionConfig::Mta {
        kv_heads,
        query_kernel: 3,
        key_kernel: 3,
        post_conv,
        pre_mix: true,
        post_mix: true,
        mix_group,
        norm: true,
        depth_scale: true,
        gate: true,
        conv_layers: None,
    }
}

/// `base` identity-plus-noise of its shape (a trained-looking kernel or mixing).
fn perturbed<const D: usize>(p: &Param<Tensor<D>>, noise: f64, seed: u64, dev: &Device) -> Param<Tensor<D>> {
    let v = p.val();
    let shape = v.dims();
    Param::from_tensor((v + seeded(dev, seed, || Tensor::random(shape, Distribution::Uniform(-noise, noise), dev))).detach())
}

/// An MTA layer at layer index 1, attention weights ×12, every transform moved off the identity.
fn layer(config: &AttentionConfig, dev: &Device) -> Mta {
    let Attention::Mta(mut m) = seeded(dev, 5, || config.init_layer(D_MODEL, HEADS, 64, ROPE_BASE as f32, 1, dev)) else { panic!("mta") };
    m.base = sharpen(m.base, SHARP);
    m.conv_pre = m.conv_pre.as_ref().map(|p| perturbed(p, 0.4, 1, dev));
    m.conv_post = m.conv_post.as_ref().map(|p| perturbed(p, 0.3, 2, dev));
    m.mix_pre = m.mix_pre.as_ref().map(|p| perturbed(p, 0.4, 3, dev));
    m.mix_post = m.mix_post.as_ref().map(|p| perturbed(p, 0.4, 4, dev));
    m.gate_w = m.gate_w.as_ref().map(|p| perturbed(p, 1.0, 6, dev));
    m.gate_b = m.gate_b.as_ref().map(|p| perturbed(p, 0.5, 7, dev));
    if let Some(norm) = m.norm.take() {
        let mut norm = norm;
        norm.gamma = perturbed(&norm.gamma, 0.5, 8, dev);
        m.norm = Some(norm);
    }
    m
}

/// The depthwise convolution of one head's map `a[i][j]` with `kernel` `[c_q][c_k]` as an
/// explicit window sum; entries j > i (and outside the map) read as 0.
fn convolve(a: &[Vec<f64>], kernel: &[f64], c_q: usize, c_k: usize) -> Vec<Vec<f64>> {
    let t = a.len();
    let at = |i: isize, j: isize| if i < 0 || j < 0 || j > i || i >= t as isize || j >= t as isize { 0.0 } else { a[i as usize][j as usize] };
    (0..t)
        .map(|i| {
            (0..t)
                .map(|j| {
                    let mut s = 0.0;
                    for qa in 0..c_q {
                        for kb in 0..c_k {
                            let (ii, jj) = (i as isize - (c_q as isize - 1) + qa as isize, j as isize - (c_k as isize - 1) / 2 + kb as isize);
                            s += kernel[qa * c_k + kb] * at(ii, jj);
                        }
                    }
                    s
                })
                .collect()
        })
        .collect()
}

/// The attention maps `[h][t][t]` of one sequence (before `P v`), and the per-head q, k, v.
struct Maps {
    p: Vec<Vec<Vec<f64>>>,
    v: Vec<Vec<Vec<f64>>>,
}

fn reference_maps(m: &Mta, xs: &[f64], t: usize) -> Maps {
    let (h, g, d) = (m.base.heads, m.base.kv_heads, m.base.head_dim);
    let (c_q, c_k) = (m.query_kernel, m.key_kernel);
    let width = (h + 2 * g) * d;
    let qkv = matmul(xs, t, D_MODEL, &to_vec(m.base.qkv.weight.val()), width);
    let q: Vec<Vec<Vec<f64>>> = (0..h).map(|i| (0..t).map(|p| rope(&cols(&qkv, width, p, i * d, d), p, ROPE_BASE)).collect()).collect();
    let kv = |i: usize| i / (h / g);
    let k: Vec<Vec<Vec<f64>>> = (0..h).map(|i| (0..t).map(|p| rope(&cols(&qkv, width, p, (h + kv(i)) * d, d), p, ROPE_BASE)).collect()).collect();
    let v: Vec<Vec<Vec<f64>>> = (0..h).map(|i| (0..t).map(|p| cols(&qkv, width, p, (h + g + kv(i)) * d, d)).collect()).collect();
    let scale = 1.0 / (d as f64).sqrt();
    let mut a: Vec<Vec<Vec<f64>>> = (0..h)
        .map(|head| (0..t).map(|i| (0..t).map(|j| if j > i { 0.0 } else { q[head][i].iter().zip(&k[head][j]).map(|(x, y)| x * y).sum::<f64>() * scale }).collect()).collect())
        .collect();
    if let Some(theta) = &m.conv_pre {
        let theta = to_vec(theta.val());
        a = (0..h).map(|head| convolve(&a[head], &theta[head * c_q * c_k..(head + 1) * c_q * c_k], c_q, c_k)).collect();
    }
    if let Some(w) = &m.mix_pre {
        let w = to_vec(w.val());
        a = (0..h).map(|i| (0..t).map(|r| (0..t).map(|c| (0..h).map(|j| w[i * h + j] * a[j][r][c]).sum()).collect()).collect()).collect();
    }
    let mut p: Vec<Vec<Vec<f64>>> = a
        .iter()
        .map(|head| {
            head.iter()
                .enumerate()
                .map(|(i, row)| {
                    let max = row[..=i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = (0..t).map(|j| if j > i { 0.0 } else { (row[j] - max).exp() }).collect();
                    let z: f64 = e.iter().sum();
                    e.iter().map(|x| x / z).collect()
                })
                .collect()
        })
        .collect();
    if let Some(theta) = &m.conv_post {
        let theta = to_vec(theta.val());
        p = (0..h).map(|head| convolve(&p[head], &theta[head * c_q * c_k..(head + 1) * c_q * c_k], c_q, c_k)).collect();
        for head in p.iter_mut() {
            for (i, row) in head.iter_mut().enumerate() {
                row.iter_mut().skip(i + 1).for_each(|x| *x = 0.0);
            }
        }
    }
    if let Some(w) = &m.mix_post {
        let c = w.dims()[1];
        let w = to_vec(w.val());
        p = (0..h)
            .map(|i| {
                let (group, il) = (i / c, i % c);
                (0..t).map(|r| (0..t).map(|col| (0..c).map(|jl| w[(group * c + jl) * c + il] * p[group * c + jl][r][col]).sum()).collect()).collect()
            })
            .collect();
    }
    Maps { p, v }
}

/// The layer's output for x `[b, t, d_model]` (flattened), from the maps.
fn reference(m: &Mta, x: &[f64], b: usize, t: usize) -> Vec<f64> {
    let (h, d) = (m.base.heads, m.base.head_dim);
    let gamma = m.norm.as_ref().map(|n| to_vec(n.gamma.val()));
    let gate = m.gate_w.as_ref().map(|w| (to_vec(w.val()), to_vec(m.gate_b.as_ref().unwrap().val())[0]));
    // Layer 1: λ_init = 0.8 − 0.6·e^{−0.3} (the paper's DIFF schedule), written out here.
    let depth = if m.depth_scale != 1.0 { 1.0 - (0.8 - 0.6 * (-0.3f64).exp()) } else { 1.0 };
    let mut out = Vec::new();
    for s in 0..b {
        let xs = &x[s * t * D_MODEL..(s + 1) * t * D_MODEL];
        let maps = reference_maps(m, xs, t);
        let mut concat = vec![0.0; t * h * d];
        for head in 0..h {
            for i in 0..t {
                let mut o = weighted_sum(&maps.p[head][i], &maps.v[head]);
                if let Some(gamma) = &gamma {
                    o = rms_norm(&o, gamma, 1e-5).iter().map(|v| v * depth).collect();
                }
                if let Some((w, bias)) = &gate {
                    let z: f64 = o.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + bias;
                    let sig = 1.0 / (1.0 + (-z).exp());
                    o.iter_mut().for_each(|v| *v *= sig);
                }
                concat[i * h * d + head * d..i * h * d + (head + 1) * d].copy_from_slice(&o);
            }
        }
        out.extend(matmul(&concat, t, h * d, &to_vec(m.base.out.weight.val()), D_MODEL));
    }
    out
}

/// Mean over rows with ≥ 4 keys of (largest weight) × (visible keys): 1 is uniform.
fn peakedness(maps: &Maps) -> f64 {
    let rows: Vec<f64> = maps.p.iter().flat_map(|head| head.iter().enumerate().skip(3).map(|(i, row)| row.iter().cloned().fold(0.0, f64::max) * (i + 1) as f64)).collect();
    rows.iter().sum::<f64>() / rows.len() as f64
}

#[test]
fn forward_matches_the_reference() {
    let dev = cpu();
    for config in [config(None, true, Some(2)), config(Some(2), false, None)] {
        let m = layer(&config, &dev);
        let x = random_input(2, T, D_MODEL, 3, &dev);
        let xs = to_vec(x.clone());
        let peaked = peakedness(&reference_maps(&m, &xs[..T * D_MODEL], T));
        assert!(peaked > 2.5, "{config:?}: attention not peaked ({peaked:.2}× uniform)");
        let err = rel_err(&to_vec(m.forward(x)), &reference(&m, &xs, 2, T));
        assert!(err < 1e-4, "{config:?}: relative error {err}");
    }
}

#[test]
fn gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    for config in [config(None, true, Some(2)), config(Some(2), false, None)] {
        let m = layer(&config, &dev);
        let x = random_input(1, 7, D_MODEL, 4, &dev);
        check_gradients(&format!("{config:?}"), &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, 7));
    }
}

/// With identity kernels and mixings (the initialisation), norm and gate off, the layer is MHA
/// on the same projections.
#[test]
fn identity_transforms_equal_mha() {
    let dev = cpu();
    let config = AttentionConfig::Mta {
        kv_heads: None,
        query_kernel: 6,
        key_kernel: 11,
        post_conv: true,
        pre_mix: true,
        post_mix: true,
        mix_group: None,
        norm: false,
        depth_scale: false,
        gate: false,
        conv_layers: None,
    };
    let Attention::Mta(mut m) = seeded(&dev, 9, || config.init(D_MODEL, HEADS, 64, ROPE_BASE as f32, &dev)) else { panic!("mta") };
    m.base = sharpen(m.base, SHARP);
    let x = random_input(2, 20, D_MODEL, 5, &dev);
    let err = rel_err(&to_vec(m.forward(x.clone())), &to_vec(m.base.forward(x)));
    assert!(err < 1e-5, "identity MTA vs MHA: relative error {err}");
}

/// θ = a single 1 at [c_q − 2, centre]: row i's pre-softmax scores are row i − 1's (its entry
/// (i, i) is 0, masked in row i − 1), row 0's are all 0.
#[test]
fn a_shift_kernel_reads_the_previous_row() {
    let dev = cpu();
    let mut cfg = config(None, false, None);
    if let AttentionConfig::Mta { pre_mix, post_mix, norm, gate, depth_scale, .. } = &mut cfg {
        (*pre_mix, *post_mix, *norm, *gate, *depth_scale) = (false, false, false, false, false);
    }
    let Attention::Mta(mut m) = seeded(&dev, 5, || cfg.init(D_MODEL, HEADS, 64, ROPE_BASE as f32, &dev)) else { panic!("mta") };
    m.base = sharpen(m.base, SHARP);
    let (c_q, c_k) = (3, 3);
    let mut shift = vec![0f32; HEADS * c_q * c_k];
    for head in 0..HEADS {
        shift[head * c_q * c_k + (c_q - 2) * c_k + (c_k - 1) / 2] = 1.0;
    }
    m.conv_pre = Some(Param::from_tensor(Tensor::from_data(attnlab_attn::burn::tensor::TensorData::new(shift, [HEADS, 1, c_q, c_k]), &dev)));
    let x = random_input(1, T, D_MODEL, 6, &dev);
    let map = to_vec(m.attention_map(x.clone()));
    // Unshifted scores from the same layer with the identity kernel.
    let mut plain = m.clone();
    plain.conv_pre = None;
    let scores = to_vec(plain.scores(x));
    for head in 0..HEADS {
        let at = |v: &[f64], i: usize, j: usize| v[(head * T + i) * T + j];
        assert!((at(&map, 0, 0) - 1.0).abs() < 1e-6, "row 0: its only key must get weight 1");
        for i in 1..T {
            let row: Vec<f64> = (0..=i).map(|j| if j < i { at(&scores, i - 1, j) } else { 0.0 }).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in row.iter().enumerate() {
                let want = (s - max).exp() / z;
                assert!((at(&map, i, j) - want).abs() < 1e-5, "head {head} ({i}, {j}): {} vs {want}", at(&map, i, j));
            }
        }
    }
}

/// With convolutions and mixings off the identity, every row of the map is 0 on later keys.
#[test]
fn rows_put_no_mass_on_later_keys() {
    let dev = cpu();
    let m = layer(&config(None, false, None), &dev);
    let map = to_vec(m.attention_map(random_input(2, T, D_MODEL, 7, &dev)));
    for (n, w) in map.iter().enumerate() {
        let (i, j) = ((n / T) % T, n % T);
        if j > i {
            assert_eq!(*w, 0.0, "weight on a later key at ({i}, {j})");
        }
    }
}

#[test]
fn changing_later_tokens_changes_no_earlier_output() {
    let dev = cpu();
    for config in [config(None, true, Some(2)), config(Some(2), false, None)] {
        let m = layer(&config, &dev);
        let (t, p) = (2 * T, T);
        let x = random_input(2, t, D_MODEL, 8, &dev);
        let changed = Tensor::cat(vec![x.clone().narrow(1, 0, p), random_input(2, t - p, D_MODEL, 9, &dev)], 1);
        let a = to_vec(m.forward(x).narrow(1, 0, p));
        let b = to_vec(m.forward(changed).narrow(1, 0, p));
        assert!(max_abs_diff(&a, &b) <= 1e-5 * a.iter().fold(1.0f64, |m, v| m.max(v.abs())), "{config:?}: a later token changed an earlier output");
    }
}

/// Decode (a prefill, then one token at a time) equals the forward at t > 2·c_q, with both
/// convolutions (2(c_q − 1) queries kept) and with the pre one only; and a layer outside
/// `conv_layers` keeps no queries.
#[test]
fn decode_equals_the_forward() {
    let dev = cpu();
    for config in [config(None, true, Some(2)), config(Some(2), false, None)] {
        let m = layer(&config, &dev);
        let x = random_input(2, 2 * T, D_MODEL, 10, &dev);
        let full = to_vec(m.forward(x.clone()));
        let attn = Attention::Mta(m);
        for prefill in [1, 3, 8] {
            let err = rel_err(&to_vec(decode(&attn, &x, prefill)), &full);
            assert!(err < 1e-4, "{config:?} prefill {prefill}: relative |decode − forward| = {err}");
        }
        // Steps of several tokens after the prefill, fewer and more than the kept queries.
        let mut state = attn.init_state(2, 2 * T, &dev);
        let (mut parts, mut at) = (Vec::new(), 0);
        for n in [2, 3, 1, 5, 2, 9] {
            parts.push(attn.step(x.clone().narrow(1, at, n), &mut state));
            at += n;
        }
        let err = rel_err(&to_vec(Tensor::cat(parts, 1)), &full);
        assert!(err < 1e-4, "{config:?} ragged steps: relative |decode − forward| = {err}");
        // A capacity below the kept queries (3 tokens, 2 or 4 kept).
        let short = x.clone().narrow(1, 0, 3);
        let err = rel_err(&to_vec(decode(&attn, &short, 1)), &to_vec(attn.forward(short)));
        assert!(err < 1e-4, "{config:?} 3-token capacity: relative |decode − forward| = {err}");
        let Attention::Mta(m) = attn else { unreachable!() };
        let convs = 1 + usize::from(m.conv_post.is_some());
        assert_eq!(m.kept_queries(), 2 * convs);
    }
    let mut outside = config(None, true, None);
    if let AttentionConfig::Mta { conv_layers, .. } = &mut outside {
        *conv_layers = Some(vec![0]);
    }
    let Attention::Mta(m) = locked(|| outside.init_layer(D_MODEL, HEADS, 64, ROPE_BASE as f32, 1, &dev)) else { panic!("mta") };
    assert!(m.conv_pre.is_none() && m.conv_post.is_none() && m.kept_queries() == 0);
    assert!(m.mix_pre.is_some() && m.norm.is_some() && m.gate_w.is_some(), "mixing, norm and gate stay in every layer");
}

/// The convolution other devices run (Burn's `conv2d` after a past-side row padding) against the
/// window sums of [`convolve`], on maps with their masked triangle zeroed.
#[test]
fn the_composed_convolution_matches_the_window_sums() {
    let dev = cpu();
    let (h, t, c_q, c_k) = (3, 9, 4, 5);
    let a = seeded(&dev, 12, || Tensor::<4>::random([1, h, t, t], Distribution::Normal(0.0, 1.0), &dev));
    let a = a.mask_fill(attnlab_attn::mask::causal_mask(t, t, &dev).unsqueeze::<4>().expand([1, h, t, t]), 0.0);
    let w = seeded(&dev, 13, || Tensor::<4>::random([h, 1, c_q, c_k], Distribution::Normal(0.0, 1.0), &dev));
    let got = to_vec(attnlab_attn::mta::map_conv_composed(a.clone(), w.clone()));
    let (av, wv) = (to_vec(a), to_vec(w));
    let want: Vec<f64> = (0..h)
        .flat_map(|head| {
            let map: Vec<Vec<f64>> = (0..t).map(|i| av[(head * t + i) * t..(head * t + i + 1) * t].to_vec()).collect();
            convolve(&map, &wv[head * c_q * c_k..(head + 1) * c_q * c_k], c_q, c_k).into_iter().flatten()
        })
        .collect();
    let err = rel_err(&got, &want);
    assert!(err < 1e-5, "composed convolution: relative error {err}");
}

#[test]
fn labels_and_validation() {
    let parse = |s: &str| toml::from_str::<AttentionConfig>(s).unwrap();
    assert_eq!(parse("kind = \"mta\"").label(), "mta");
    let toy = parse("kind = \"mta\"\nquery_kernel = 2\nkey_kernel = 9\npost_conv = false\npre_mix = false\npost_mix = false\nnorm = false\ngate = false");
    assert_eq!(toy.label(), "mta-2x9-nopost-noprem-nopostm-nonorm-nogate");
    assert_eq!(parse("kind = \"mta\"\nconv_layers = [2, 6]\nkv_heads = 2").label(), "mta-L2,6-kv2");
    assert_eq!(parse("kind = \"mta\"\nconv_layers = []").label(), "mta-noconv");
    let err = parse("kind = \"mta\"\nkey_kernel = 4").validate(32, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.key_kernel");
    let err = parse("kind = \"mta\"\nmix_group = 3").validate(32, 4).unwrap_err();
    assert!(err.field == "model.attention.mix_group" && err.allowed.contains("1, 2, 4"), "{err}");
    let err = parse("kind = \"mta\"\nmix_group = 2\npost_mix = false").validate(32, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.mix_group");
}
