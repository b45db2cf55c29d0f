//! Gated DeltaNet and KDA layers against an f64 token-by-token reference built from their
//! weights (projections, short convs, SiLU, per-head L2 norms, β, the gates, the rule, the output
//! RMSNorm and gate, W_o): training forward (chunked, ragged T, chunk sizes 1, 4, 5, 32), cached
//! decode (prefill across a chunk boundary, then token by token), gradients of every parameter
//! (incl. A_log and dt_bias) against finite differences of the reference, and the ablation switches.
//!
//! Mutations planted and seen to fail (see `tests/README.md`):
//! - decay applied after the delta correction (`v' = β(v − Sᵀk)` on the undecayed S, then
//!   `S ← α(S + k v'ᵀ)`, in the token step) → `*_decode_matches_the_reference` (2e-3, 2e-2);
//! - L2 norm before the conv (on the projection) → `gdn_forward_matches_the_reference`, `kda_forward_matches_the_reference`;
//! - conv tail missing from the decode state (each `step` restarts the conv from zeros) → `*_decode_matches_the_reference`;
//! - per-channel dt_bias read per head (`dt_bias[h]` broadcast) → `kda_forward_matches_the_reference`;
//! - KDA's output gate SiLU instead of sigmoid → `kda_forward_matches_the_reference`;
//! - scale 1/d_k instead of 1/√d_k → `gdn_forward_…`, `gdn_decode_…`, `gdn_gradients_…`;
//! - the fused CPU op: S read before its decay; dk without Ŝ·dp; dg × 1.1 → forward or gradient tests;
//! - GDN's β read from the decay's projection columns → `gdn_forward_…`, `gdn_decode_…`, `gdn_gradients_…`;
//! - a projection part shifted by one column, in the training path (by weight columns) →
//!   `*_gradients_…`; in the untracked path (one product, sliced) → `*_forward_…`, `*_decode_…`;
//! - the fused op's backward writing dk into q's columns of d(qkv) → `*_gradients_…`;
//! - grouped value heads tiled (value head j reading key head j mod h_k) instead of
//!   repeat-interleaved → `gdn_forward_…`, `gdn_decode_…`;
//! - the fused op reading (writing) KDA's per-channel g (dg) at the per-head offset →
//!   `kda_forward_…` and `kda_gradients_…` (`kda_gradients_…`).

mod common;

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::{Attention, AttentionConfig, ConvInit, GatedDeltaNet, Kda, Recurrent};
use common::recurrent::*;
use common::*;

/// How the reference reads a delta-rule layer's weights.
struct Layer {
    /// Value heads (the state's); q and k have `key_heads`, each read by heads / key_heads
    /// consecutive value heads.
    heads: usize,
    key_heads: usize,
    dk: usize,
    dv: usize,
    proj: Vec<f64>,
    proj_width: usize,
    conv: Option<Vec<f64>>,
    a_log: Vec<f64>,
    dt_bias: Vec<f64>,
    gamma: Vec<f64>,
    out: Vec<f64>,
    l2: bool,
    kind: GateKind,
}

enum GateKind {
    /// Gated DeltaNet: decay from column `a` per head, SiLU gate columns (if gated).
    Gdn { gated: bool },
    /// KDA: low-rank decay and sigmoid output gate.
    Kda { f_up: Vec<f64>, g_up: Vec<f64>, lower_bound: Option<f64> },
}

fn gdn_layer(m: &GatedDeltaNet) -> Layer {
    Layer {
        heads: m.heads,
        key_heads: m.key_heads,
        dk: m.key_dim,
        dv: m.value_dim,
        proj: to_vec(m.proj.weight.val()),
        proj_width: m.proj.weight.dims()[1],
        conv: m.conv.as_ref().map(|c| to_vec(c.weight.val())),
        a_log: to_vec(m.a_log.val()),
        dt_bias: to_vec(m.dt_bias.val()),
        gamma: to_vec(m.norm.gamma.val()),
        out: to_vec(m.out.weight.val()),
        l2: m.l2,
        kind: GateKind::Gdn { gated: m.gated },
    }
}

fn kda_layer(m: &Kda) -> Layer {
    Layer {
        heads: m.heads,
        key_heads: m.heads,
        dk: m.key_dim,
        dv: m.value_dim,
        proj: to_vec(m.proj.weight.val()),
        proj_width: m.proj.weight.dims()[1],
        conv: m.conv.as_ref().map(|c| to_vec(c.weight.val())),
        a_log: to_vec(m.a_log.val()),
        dt_bias: to_vec(m.dt_bias.val()),
        gamma: to_vec(m.norm.gamma.val()),
        out: to_vec(m.out.weight.val()),
        l2: true,
        kind: GateKind::Kda { f_up: to_vec(m.f_up.weight.val()), g_up: to_vec(m.g_up.weight.val()), lower_bound: m.lower_bound },
    }
}

/// The layer token by token, sequence by sequence; `memoryless` resets S before every token.
fn reference(l: &Layer, x: &[f64], b: usize, t: usize, d_model: usize, memoryless: bool) -> Vec<f64> {
    let (h, hk, dk, dv) = (l.heads, l.key_heads, l.dk, l.dv);
    let width = 2 * hk * dk + h * dv;
    let mut out = Vec::new();
    for s in 0..b {
        let xs = &x[s * t * d_model..(s + 1) * t * d_model];
        let p = rows(&matmul(xs, t, d_model, &l.proj, l.proj_width), t, l.proj_width);
        let pre = take(&p, 0, width);
        let conv = match &l.conv {
            Some(w) => short_conv(&pre, w, 4),
            None => pre,
        };
        let act: Vec<Vec<f64>> = conv.iter().map(|r| r.iter().map(|x| silu(*x)).collect()).collect();
        // Per position: decays [h][dk] and output gates [h·dv].
        let (decays, gates): (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>) = match &l.kind {
            GateKind::Gdn { gated } => (
                (0..t).map(|i| (0..h).map(|j| vec![-l.a_log[j].exp() * softplus(p[i][width + h + j] + l.dt_bias[j]); dk]).collect()).collect(),
                (0..t).map(|i| if *gated { p[i][width + 2 * h..width + 2 * h + h * dv].iter().map(|x| silu(*x)).collect() } else { vec![1.0; h * dv] }).collect(),
            ),
            GateKind::Kda { f_up, g_up, lower_bound } => {
                let f = matmul(&take(&p, width + h, dv).concat(), t, dv, f_up, h * dk);
                let g = matmul(&take(&p, width + h + dv, dv).concat(), t, dv, g_up, h * dv);
                let decay = |i: usize, j: usize, c: usize| {
                    let raw = f[i * h * dk + j * dk + c] + l.dt_bias[j * dk + c];
                    match lower_bound {
                        Some(lb) => lb * sigmoid(l.a_log[j].exp() * raw),
                        None => -l.a_log[j].exp() * softplus(raw),
                    }
                };
                (
                    (0..t).map(|i| (0..h).map(|j| (0..dk).map(|c| decay(i, j, c)).collect()).collect()).collect(),
                    (0..t).map(|i| g[i * h * dv..(i + 1) * h * dv].iter().map(|x| sigmoid(*x)).collect()).collect(),
                )
            }
        };
        let mut concat = vec![0.0; t * h * dv];
        let key = |j: usize| j / (h / hk);
        for j in 0..h {
            let norm = |v: Vec<f64>| if l.l2 { l2(&v) } else { v };
            let seq = HeadSeq {
                // Value head j reads key head j / (h / h_k) (Qwen3-Next's repeat_interleave).
                q: (0..t).map(|i| norm(act[i][key(j) * dk..(key(j) + 1) * dk].to_vec()).iter().map(|x| x / (dk as f64).sqrt()).collect()).collect(),
                k: (0..t).map(|i| norm(act[i][hk * dk + key(j) * dk..hk * dk + (key(j) + 1) * dk].to_vec())).collect(),
                v: (0..t).map(|i| act[i][2 * hk * dk + j * dv..2 * hk * dk + (j + 1) * dv].to_vec()).collect(),
                beta: Some((0..t).map(|i| sigmoid(p[i][width + j])).collect()),
                g: Some((0..t).map(|i| decays[i][j].clone()).collect()),
            };
            let (o, _) = rule_loop(&seq, memoryless);
            for (i, oi) in o.into_iter().enumerate() {
                let normed = rms_norm(&oi, &l.gamma, 1e-5);
                for c in 0..dv {
                    concat[i * h * dv + j * dv + c] = normed[c] * gates[i][j * dv + c];
                }
            }
        }
        out.extend(matmul(&concat, t, h * dv, &l.out, d_model));
    }
    out
}

/// Weights in a regime where outputs depend on gates and state: projections × 4 (β spread over
/// (0, 1), gates away from 0.5), and decays e^g of order 0.3–0.97 (A_log set to ln U(0.05, 1.2)).
fn regime<M: attnlab_attn::burn::module::Module>(m: M) -> M {
    sharpen(m, 4.0)
}

fn moderate_a_log(n: usize, dev: &Device) -> Param<Tensor<1>> {
    let v: Vec<f32> = (0..n).map(|i| (0.05 + 1.15 * i as f32 / n.max(2) as f32).ln()).collect();
    Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), dev))
}

fn gdn(config: &AttentionConfig, d_model: usize, heads: usize, seed: u64, dev: &Device) -> GatedDeltaNet {
    let Attention::GatedDeltaNet(mut m) = seeded(dev, seed, || config.init(d_model, heads, 64, 10_000.0, dev)) else { panic!("expected GDN") };
    m.a_log = moderate_a_log(m.heads, dev);
    regime(m)
}

fn kda(config: &AttentionConfig, d_model: usize, heads: usize, seed: u64, dev: &Device) -> Kda {
    let Attention::Kda(mut m) = seeded(dev, seed, || config.init(d_model, heads, 64, 10_000.0, dev)) else { panic!("expected KDA") };
    if m.lower_bound.is_none() {
        m.a_log = moderate_a_log(heads, dev);
    }
    regime(m)
}

fn gdn_config(chunk: usize) -> AttentionConfig {
    AttentionConfig::GatedDeltanet { value_heads: None, head_dim: None, expand_v: 2, conv: true, gate: true, l2_norm: true, conv_init: ConvInit::Kaiming, chunk }
}

fn gdn_variants() -> Vec<AttentionConfig> {
    let mut v: Vec<AttentionConfig> = [1, 4, 5, 32].into_iter().map(gdn_config).collect();
    let base = gdn_config(4);
    let AttentionConfig::GatedDeltanet { value_heads, head_dim, expand_v, conv, gate, l2_norm, conv_init, chunk } = base else { unreachable!() };
    v.push(AttentionConfig::GatedDeltanet { conv: false, value_heads, head_dim, expand_v, gate, l2_norm, conv_init, chunk });
    v.push(AttentionConfig::GatedDeltanet { gate: false, value_heads, head_dim, expand_v, conv, l2_norm, conv_init, chunk });
    v.push(AttentionConfig::GatedDeltanet { l2_norm: false, value_heads, head_dim, expand_v, conv, gate, conv_init, chunk });
    v.push(AttentionConfig::GatedDeltanet { value_heads, head_dim: Some(6), expand_v: 1, conv, gate, l2_norm, conv_init: ConvInit::Fla, chunk });
    // Qwen3-Next's grouped value heads: H_v = 2·H_k (and 3·H_k) at d_v = d_k.
    v.push(AttentionConfig::GatedDeltanet { value_heads: Some(2 * HEADS), head_dim, expand_v: 1, conv, gate, l2_norm, conv_init, chunk });
    v.push(AttentionConfig::GatedDeltanet { value_heads: Some(3 * HEADS), head_dim, expand_v: 1, conv, gate, l2_norm, conv_init, chunk: 5 });
    v
}

fn kda_variants() -> Vec<AttentionConfig> {
    let k = |chunk, conv, lower_bound, expand_v| AttentionConfig::Kda { head_dim: None, expand_v, conv, lower_bound, conv_init: ConvInit::Kaiming, chunk };
    vec![k(1, true, None, 1), k(4, true, None, 1), k(5, true, None, 2), k(16, true, None, 1), k(4, false, None, 1), k(4, true, Some(-5.0), 1)]
}

const D_MODEL: usize = 16;
const HEADS: usize = 2;
const T: usize = 13;

/// Asserts the forward matches the reference and that the reference's outputs owe much to the
/// state (resetting it before every token moves them by ≥ 30% of their scale).
fn check_forward(what: &str, m: &Attention, layer: &Layer, seed: u64) {
    let dev = cpu();
    let x = random_input(2, T, D_MODEL, seed, &dev);
    let xv = to_vec(x.clone());
    let want = reference(layer, &xv, 2, T, D_MODEL, false);
    let lost = reference(layer, &xv, 2, T, D_MODEL, true);
    assert!(rel_err(&lost, &want) > 0.3, "{what}: outputs barely depend on the state ({})", rel_err(&lost, &want));
    let err = rel_err(&to_vec(m.forward(x.clone())), &want);
    assert!(err < 1e-4, "{what}: forward relative error {err}");
}

fn check_decode(what: &str, m: &Attention, layer: &Layer, seed: u64) {
    let dev = cpu();
    let x = random_input(2, T, D_MODEL, seed, &dev);
    let want = reference(layer, &to_vec(x.clone()), 2, T, D_MODEL, false);
    for prefill in [1, 6] {
        let err = rel_err(&to_vec(decode(m, &x, prefill)), &want);
        assert!(err < 1e-4, "{what} prefill {prefill}: decode relative error {err}");
    }
}

/// (label, mixer, reference weights) of every variant of one kind.
fn cases(kind: &str) -> Vec<(String, Attention, Layer)> {
    let dev = cpu();
    match kind {
        "gdn" => gdn_variants()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let m = gdn(c, D_MODEL, HEADS, 3 + i as u64, &dev);
                (c.label(), Attention::GatedDeltaNet(m.clone()), gdn_layer(&m))
            })
            .collect(),
        _ => kda_variants()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let m = kda(c, D_MODEL, HEADS, 13 + i as u64, &dev);
                (c.label(), Attention::Kda(m.clone()), kda_layer(&m))
            })
            .collect(),
    }
}

#[test]
fn gdn_forward_matches_the_reference() {
    cases("gdn").iter().for_each(|(what, m, layer)| check_forward(what, m, layer, 5));
}

#[test]
fn gdn_decode_matches_the_reference() {
    cases("gdn").iter().for_each(|(what, m, layer)| check_decode(what, m, layer, 6));
}

#[test]
fn kda_forward_matches_the_reference() {
    cases("kda").iter().for_each(|(what, m, layer)| check_forward(what, m, layer, 5));
}

#[test]
fn kda_decode_matches_the_reference() {
    cases("kda").iter().for_each(|(what, m, layer)| check_decode(what, m, layer, 6));
}

#[test]
fn gdn_gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    for config in [gdn_config(4), gdn_variants().remove(7), gdn_variants().remove(8)] {
        let m = gdn(&config, D_MODEL, HEADS, 2, &dev);
        let x = random_input(1, 11, D_MODEL, 4, &dev);
        check_gradients(&config.label(), &m, x, &|m, x| m.forward(x), &|m, x| reference(&gdn_layer(m), x, 1, 11, D_MODEL, false));
    }
}

#[test]
fn kda_gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    for config in [kda_variants().remove(1), kda_variants().remove(5)] {
        let m = kda(&config, D_MODEL, HEADS, 2, &dev);
        let x = random_input(1, 11, D_MODEL, 4, &dev);
        check_gradients(&config.label(), &m, x, &|m, x| m.forward(x), &|m, x| reference(&kda_layer(m), x, 1, 11, D_MODEL, false));
    }
}

/// The defaults follow the papers: A ~ U(0, 16) (GDN) / U(1, 16) (KDA), dt_bias = softplus⁻¹ of a
/// dt in [1e-3, 0.1], per head (GDN) or per channel (KDA), kaiming-uniform convs U(±0.5).
#[test]
fn initialisation_follows_the_papers() {
    let dev = cpu();
    let (g, k) = seeded(&dev, 1, || (gdn_config(32).init(64, 8, 64, 10_000.0, &dev), kda_variants().remove(3).init(64, 8, 64, 10_000.0, &dev)));
    let (Attention::GatedDeltaNet(g), Attention::Kda(k)) = (g, k) else { panic!() };
    let dt = |v: &[f64]| v.iter().map(|b| softplus(*b)).collect::<Vec<_>>();
    assert_eq!(g.dt_bias.dims(), [8]);
    assert_eq!(k.dt_bias.dims(), [8 * 8]);
    assert_eq!(k.a_log.dims(), [8]);
    for (name, a_log, lo, dt_bias) in [("gdn", to_vec(g.a_log.val()), 0.0, to_vec(g.dt_bias.val())), ("kda", to_vec(k.a_log.val()), 1.0, to_vec(k.dt_bias.val()))] {
        assert!(a_log.iter().all(|a| a.exp() >= lo - 1e-4 && a.exp() <= 16.0), "{name}: A outside U({lo}, 16)");
        assert!(dt(&dt_bias).iter().all(|d| (9.9e-4..=0.1001).contains(d)), "{name}: dt outside [1e-3, 0.1]");
    }
    let w = to_vec(g.conv.as_ref().unwrap().weight.val());
    let max = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(max <= 0.5 && max > 0.4, "conv weights not U(±0.5): max {max}");
}
