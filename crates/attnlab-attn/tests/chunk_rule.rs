//! The chunk engine ([`Rule`]) against the token-by-token f64 loop (`common::recurrent::rule_loop`):
//! outputs, final state and gradients of q, k, v, β and g, for the additive rule (linear
//! attention), the delta rule with per-head decay (Gated DeltaNet) and with per-channel decay
//! (KDA), at ragged T, chunk sizes that do not divide T, chunk 1 and chunk > T; special cases.
//!
//! Mutations planted and seen to fail (see `tests/README.md`): exclusive cumsum; w without e^G
//! (decay after the correction); no end-of-chunk decay; A's mask with the diagonal; padding with
//! ones; per-channel decay on the value axis (token step and chunk form); the fused op's segment
//! recompute from S = 0 (caught only by the 37-token gradient check here); the fused op's
//! token-major packing with batch and head swapped (`the_chunked_form_matches_the_token_loop`);
//! its backward writing dk into q's columns (the gradient check); per-channel g read at the
//! per-head offset (both), dg written there (the gradient check); in the fused backward's
//! one-pass recompute and reordered row passes: the write without the decay, the residual saved
//! as v instead of v − p, dg without k·(S_prev dp), dk from S_prev·dp instead of Ŝ·dp (all four
//! caught by the 37-token gradient check); the residuals read at the head's offset within its
//! sequence instead of the batch (caught since that check runs 2 sequences), the additive rule's
//! backward decaying every row of dS by channel 0's α (caught by its per-channel case).

mod common;

use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::recurrent::chunk::Rule;
use common::recurrent::{l2, rule_loop, HeadSeq};
use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Decay {
    None,
    Head,
    Channel,
}

/// A deterministic generator of values in [−1, 1).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// `b·h` heads of T tokens in a regime where the state matters: L2-normalised k (and q for the
/// delta rule), β ∈ (0.3, 1), decays e^g ∈ (0.6, 0.99) per head or spanning e^{−3}..e^{−0.01}
/// per channel.
fn heads(n: usize, t: usize, dk: usize, dv: usize, delta: bool, decay: Decay, seed: u64) -> Vec<HeadSeq> {
    let mut r = Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n)
        .map(|_| {
            let unit = |r: &mut Gen| l2(&r.vec(dk, 1.0));
            let q = (0..t).map(|_| if delta { unit(&mut r) } else { r.vec(dk, 1.0).iter().map(|x| x.abs()).collect() }).collect();
            let k = (0..t).map(|_| if delta { unit(&mut r) } else { r.vec(dk, 1.0).iter().map(|x| x.abs()).collect() }).collect();
            let v = (0..t).map(|_| r.vec(dv, 1.0)).collect();
            let beta = delta.then(|| (0..t).map(|_| 0.65 + 0.35 * r.next()).collect());
            let g = match decay {
                Decay::None => None,
                Decay::Head => Some((0..t).map(|_| vec![-(0.21 + 0.2 * r.next()); dk]).collect()),
                Decay::Channel => Some((0..t).map(|_| (0..dk).map(|_| -(10f64).powf(1.0 * r.next() - 1.0) * 0.5 - 0.005).collect()).collect()),
            };
            HeadSeq { q, k, v, beta, g }
        })
        .collect()
}

fn tensor4(values: Vec<f64>, shape: [usize; 4], dev: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.into_iter().map(|v| v as f32).collect::<Vec<_>>(), shape), dev)
}

/// `[b, h, t, d]` from per-head rows.
fn stack(seqs: &[HeadSeq], b: usize, pick: &dyn Fn(&HeadSeq) -> Vec<Vec<f64>>, dev: &Device) -> Tensor<4> {
    let h = seqs.len() / b;
    let rows: Vec<Vec<Vec<f64>>> = seqs.iter().map(pick).collect();
    let (t, d) = (rows[0].len(), rows[0][0].len());
    tensor4(rows.into_iter().flatten().flatten().collect(), [b, h, t, d], dev)
}

fn rule(seqs: &[HeadSeq], b: usize, decay: Decay, dev: &Device) -> Rule {
    let q = stack(seqs, b, &|s| s.q.clone(), dev);
    let k = stack(seqs, b, &|s| s.k.clone(), dev);
    let v = stack(seqs, b, &|s| s.v.clone(), dev);
    let beta = seqs[0].beta.as_ref().map(|_| {
        let t = seqs[0].q.len();
        stack(seqs, b, &|s| s.beta.as_ref().unwrap().iter().map(|x| vec![*x]).collect(), dev).reshape([b, seqs.len() / b, t])
    });
    let g = match decay {
        Decay::None => None,
        Decay::Head => Some(stack(seqs, b, &|s| s.g.as_ref().unwrap().iter().map(|r| vec![r[0]]).collect(), dev)),
        Decay::Channel => Some(stack(seqs, b, &|s| s.g.clone().unwrap(), dev)),
    };
    Rule { q, k, v, beta, g, l2: false, scale: 1.0 }
}

/// (o, final S) of every head by the loop, flattened as the engine's `[b, h, t, d_v]`, `[b, h, d_k, d_v]`.
fn reference(seqs: &[HeadSeq]) -> (Vec<f64>, Vec<f64>) {
    let (mut o, mut s) = (Vec::new(), Vec::new());
    for seq in seqs {
        let (oh, sh) = rule_loop(seq, false);
        o.extend(oh.into_iter().flatten());
        s.extend(sh.into_iter().flatten());
    }
    (o, s)
}

fn zeros_state(b: usize, h: usize, dk: usize, dv: usize, dev: &Device) -> Tensor<4> {
    Tensor::zeros([b, h, dk, dv], dev)
}

const CASES: [(bool, Decay); 4] = [(false, Decay::None), (false, Decay::Head), (true, Decay::Head), (true, Decay::Channel)];

#[test]
fn the_chunked_form_matches_the_token_loop() {
    let dev = cpu();
    let (b, h, dk, dv) = (2, 2, 6, 5);
    for (delta, decay) in CASES {
        for (t, chunk) in [(13, 4), (13, 1), (13, 5), (13, 32), (16, 8), (2, 2), (40, 16)] {
            let seqs = heads(b * h, t, dk, dv, delta, decay, 11 + t as u64);
            let (want_o, want_s) = reference(&seqs);
            // The state must matter: the memoryless loop's outputs are far from the real ones.
            if t > 4 {
                let lost: Vec<f64> = seqs.iter().flat_map(|s| rule_loop(s, true).0.into_iter().flatten()).collect();
                assert!(rel_err(&lost, &want_o) > 0.3, "{delta} {decay:?}: outputs barely depend on the state ({})", rel_err(&lost, &want_o));
            }
            let (o, s) = rule(&seqs, b, decay, &dev).chunked(zeros_state(b, h, dk, dv, &dev), chunk);
            let (eo, es) = (rel_err(&to_vec(o), &want_o), rel_err(&to_vec(s), &want_s));
            assert!(eo < 1e-4 && es < 1e-4, "delta {delta} {decay:?} T {t} chunk {chunk}: output error {eo}, final-state error {es}");
            let fused = rel_err(&to_vec(rule(&seqs, b, decay, &dev).fused()), &want_o);
            assert!(fused < 1e-4, "delta {delta} {decay:?} T {t}: fused CPU op output error {fused}");
        }
    }
}

#[test]
fn one_token_at_a_time_matches_the_token_loop_and_hands_the_state_over() {
    let dev = cpu();
    let (b, h, dk, dv, t) = (1, 2, 4, 3, 9);
    for (delta, decay) in CASES {
        let seqs = heads(b * h, t, dk, dv, delta, decay, 5);
        let (want_o, want_s) = reference(&seqs);
        let full = rule(&seqs, b, decay, &dev);
        // A prefill of 5 tokens chunked by 2 (ragged), then tokens one by one.
        let cut = |x: &Tensor<4>, from: usize, n: usize| x.clone().narrow(2, from, n);
        let part = |from: usize, n: usize| Rule {
            q: cut(&full.q, from, n),
            k: cut(&full.k, from, n),
            v: cut(&full.v, from, n),
            beta: full.beta.clone().map(|x| x.narrow(2, from, n)),
            g: full.g.as_ref().map(|g| cut(g, from, n)),
            l2: false,
            scale: 1.0,
        };
        let (mut o, mut s) = part(0, 5).run(zeros_state(b, h, dk, dv, &dev), 2);
        let mut outs = vec![o];
        for p in 5..t {
            (o, s) = part(p, 1).run(s, 2);
            outs.push(o);
        }
        let got = to_vec(Tensor::cat(outs, 2));
        assert!(rel_err(&got, &want_o) < 1e-4, "{delta} {decay:?}: decode output {}", rel_err(&got, &want_o));
        assert!(rel_err(&to_vec(s), &want_s) < 1e-4, "{delta} {decay:?}: decode state");
    }
}

/// The gradients of `Σ o ⊙ r + Σ S ⊙ r'` with respect to q, k, v, β and g against central
/// differences of the f64 loop, 4 entries and the largest of each: the chunked form, and the
/// fused CPU op ([`Rule::forward`], output only) over 37 tokens (three recompute segments), for
/// 2 sequences of 2 heads with d_k = 12, d_v = 10 (the kernel's 8-lane blocks and a scalar tail
/// in every dot product), also the additive rule with a per-channel decay.
#[test]
fn gradients_match_finite_differences_of_the_token_loop() {
    let dev = cpu().autodiff();
    let chunk = 4;
    let cases = CASES.into_iter().flat_map(|c| [(c, false), (c, true)]).chain([((false, Decay::Channel), true)]);
    for ((delta, decay), fused) in cases {
        let (b, h, dk, dv) = if fused { (2, 2, 12, 10) } else { (1, 2, 4, 3) };
        let t = if fused { 37 } else { 11 };
        let seqs = heads(b * h, t, dk, dv, delta, decay, 23);
        let r = rule(&seqs, b, decay, &dev);
        let (q, k, v) = (r.q.require_grad(), r.k.require_grad(), r.v.require_grad());
        let beta = r.beta.map(|x| x.require_grad());
        let g = r.g.map(|x| x.require_grad());
        let rule = Rule { q: q.clone(), k: k.clone(), v: v.clone(), beta: beta.clone(), g: g.clone(), l2: false, scale: 1.0 };
        let (o, s) = if fused {
            assert!(attnlab_attn::burn::tensor::Device::flex().autodiff() == dev);
            (rule.fused(), zeros_state(b, h, dk, dv, &dev))
        } else {
            rule.chunked(zeros_state(b, h, dk, dv, &dev), chunk)
        };
        let ro = probe(o.shape().num_elements(), 3);
        // The fused op returns no state: its weight is zero.
        let rs: Vec<f64> = if fused { vec![0.0; s.shape().num_elements()] } else { probe(s.shape().num_elements(), 4) };
        let weight = |r: &[f64], like: &Tensor<4>| tensor4(r.to_vec(), like.dims(), &dev);
        let loss = (o.clone() * weight(&ro, &o)).sum() + (s.clone() * weight(&rs, &s)).sum();
        let grads = loss.backward();
        let f64_loss = |seqs: &[HeadSeq]| {
            let (o, s) = reference(seqs);
            o.iter().zip(&ro).map(|(a, b)| a * b).sum::<f64>() + s.iter().zip(&rs).map(|(a, b)| a * b).sum::<f64>()
        };
        // (name, autodiff gradient, how to move entry i of that input in the f64 sequences)
        type Mover = Box<dyn Fn(&mut [HeadSeq], usize, f64)>;
        let mut inputs: Vec<(&str, Vec<f64>, Mover)> = vec![
            ("q", to_vec(q.grad(&grads).unwrap()), Box::new(move |s, i, e| s[i / (t * dk)].q[i / dk % t][i % dk] += e)),
            ("k", to_vec(k.grad(&grads).unwrap()), Box::new(move |s, i, e| s[i / (t * dk)].k[i / dk % t][i % dk] += e)),
            ("v", to_vec(v.grad(&grads).unwrap()), Box::new(move |s, i, e| s[i / (t * dv)].v[i / dv % t][i % dv] += e)),
        ];
        if let Some(beta) = &beta {
            inputs.push(("beta", to_vec(beta.grad(&grads).unwrap()), Box::new(move |s, i, e| s[i / t].beta.as_mut().unwrap()[i % t] += e)));
        }
        if let Some(g) = &g {
            let per = if decay == Decay::Channel { dk } else { 1 };
            let mover: Mover = Box::new(move |s, i, e| {
                let row = &mut s[i / (t * per)].g.as_mut().unwrap()[i / per % t];
                if per == 1 {
                    row.iter_mut().for_each(|x| *x += e); // one log-decay per head, all channels
                } else {
                    row[i % per] += e;
                }
            });
            inputs.push(("g", to_vec(g.grad(&grads).unwrap()), mover));
        }
        for (name, grad, mover) in inputs {
            let gmax = grad.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(gmax > 0.0, "{delta} {decay:?} fused {fused}: {name} has a zero gradient");
            let argmax = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
            let mut entries: Vec<usize> = probe(4, grad.len() as u64).iter().map(|p| ((p.abs() * grad.len() as f64) as usize).min(grad.len() - 1)).collect();
            entries.push(argmax);
            for i in entries {
                let eps = 1e-5;
                let (mut up, mut down) = (seqs.clone(), seqs.clone());
                mover(&mut up, i, eps);
                mover(&mut down, i, -eps);
                let fd = (f64_loss(&up) - f64_loss(&down)) / (2.0 * eps);
                assert!((grad[i] - fd).abs() <= 2e-3 * gmax + 2e-3 * fd.abs(), "{delta} {decay:?} fused {fused}: d{name}[{i}] autodiff {} vs finite difference {fd}", grad[i]);
            }
        }
    }
}

/// α ≡ 1 (g = 0) is DeltaNet, the rule without decay; β ≡ 0 writes nothing (zero output from S = 0).
#[test]
fn no_decay_is_deltanet_and_zero_beta_writes_nothing() {
    let dev = cpu();
    let (b, h, dk, dv, t) = (1, 2, 4, 3, 10);
    let mut seqs = heads(b * h, t, dk, dv, true, Decay::Head, 9);
    for s in seqs.iter_mut() {
        s.g = None;
    }
    let (want, _) = reference(&seqs);
    let mut r = rule(&seqs, b, Decay::None, &dev);
    r.g = Some(Tensor::zeros([b, h, t, 1], &dev));
    let (o, _) = r.clone().chunked(zeros_state(b, h, dk, dv, &dev), 4);
    assert!(rel_err(&to_vec(o), &want) < 1e-5, "g = 0 is not DeltaNet");
    r.beta = Some(Tensor::zeros([b, h, t], &dev));
    let (o, s) = r.chunked(zeros_state(b, h, dk, dv, &dev), 4);
    assert_eq!(to_vec(o.abs().max()).into_iter().chain(to_vec(s.abs().max())).fold(0.0, f64::max), 0.0, "β = 0 wrote to the state");
}

/// The same unit key written twice with β = 1 (no decay): reading it returns the *second*
/// value (the delta rule replaces; the additive rule would return the sum).
#[test]
fn a_key_written_twice_returns_the_second_value() {
    let dev = cpu();
    let e1 = tensor4(vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [1, 1, 2, 3], &dev);
    let v = tensor4(vec![1.0, 2.0, -3.0, 0.5], [1, 1, 2, 2], &dev);
    for chunk in [1, 2] {
        let r = Rule { q: e1.clone(), k: e1.clone(), v: v.clone(), beta: Some(Tensor::ones([1, 1, 2], &dev)), g: None, l2: false, scale: 1.0 };
        let (o, _) = r.chunked(zeros_state(1, 1, 3, 2, &dev), chunk);
        assert_eq!(to_vec(o), vec![1.0, 2.0, -3.0, 0.5], "chunk {chunk}");
    }
}

/// Per-head and per-channel decays (equal channels) give the same output: broadcasting only.
#[test]
fn equal_channels_equal_the_per_head_decay() {
    let dev = cpu();
    let (b, h, dk, dv, t) = (2, 2, 5, 4, 12);
    let seqs = heads(b * h, t, dk, dv, true, Decay::Head, 31);
    let per_head = rule(&seqs, b, Decay::Head, &dev);
    let per_channel = rule(&seqs, b, Decay::Channel, &dev);
    assert_eq!(per_channel.g.as_ref().unwrap().dims()[3], dk);
    let (a, _) = per_head.chunked(zeros_state(b, h, dk, dv, &dev), 4);
    let (c, _) = per_channel.chunked(zeros_state(b, h, dk, dv, &dev), 4);
    assert!(rel_err(&to_vec(c), &to_vec(a)) < 1e-5);
}

/// g_c = −1e4 at the last step with β = 0 there: row c of the final state is zero, the other
/// rows only decayed by their own α (the decay scales key rows, not value columns).
#[test]
fn a_channel_killed_with_beta_zero_zeroes_its_row_of_the_state() {
    let dev = cpu();
    let (b, h, dk, dv, t) = (1, 1, 4, 3, 7);
    let mut seqs = heads(b * h, t, dk, dv, true, Decay::Channel, 3);
    seqs[0].g.as_mut().unwrap()[t - 1] = vec![-0.1, -1e4, -0.2, -0.3];
    seqs[0].beta.as_mut().unwrap()[t - 1] = 0.0;
    for chunk in [4, 7, 1] {
        let (_, s) = rule(&seqs, b, Decay::Channel, &dev).chunked(zeros_state(b, h, dk, dv, &dev), chunk);
        let s = to_vec(s);
        let mut before = seqs.clone();
        before[0].q.truncate(t - 1);
        before[0].k.truncate(t - 1);
        before[0].v.truncate(t - 1);
        before[0].beta.as_mut().unwrap().truncate(t - 1);
        before[0].g.as_mut().unwrap().truncate(t - 1);
        let (_, prev) = rule_loop(&before[0], false);
        for (c, alpha) in [(0, (-0.1f64).exp()), (1, 0.0), (2, (-0.2f64).exp()), (3, (-0.3f64).exp())] {
            for j in 0..dv {
                let want = prev[c][j] * alpha;
                assert!((s[c * dv + j] - want).abs() < 1e-5, "chunk {chunk}: S[{c}][{j}] = {} want {want}", s[c * dv + j]);
            }
        }
    }
}

/// Permuting the key channels of q, k and g together leaves o unchanged and permutes S's rows.
#[test]
fn permuting_key_channels_permutes_the_state() {
    let dev = cpu();
    let (b, h, dk, dv, t) = (1, 2, 5, 3, 9);
    let seqs = heads(b * h, t, dk, dv, true, Decay::Channel, 13);
    let perm = [3, 0, 4, 1, 2];
    let permute = |rows: &Vec<Vec<f64>>| rows.iter().map(|r| perm.iter().map(|&p| r[p]).collect()).collect();
    let moved: Vec<HeadSeq> =
        seqs.iter().map(|s| HeadSeq { q: permute(&s.q), k: permute(&s.k), v: s.v.clone(), beta: s.beta.clone(), g: Some(permute(s.g.as_ref().unwrap())) }).collect();
    let (o1, s1) = rule(&seqs, b, Decay::Channel, &dev).chunked(zeros_state(b, h, dk, dv, &dev), 4);
    let (o2, s2) = rule(&moved, b, Decay::Channel, &dev).chunked(zeros_state(b, h, dk, dv, &dev), 4);
    assert!(rel_err(&to_vec(o2), &to_vec(o1)) < 1e-5);
    let (s1, s2) = (to_vec(s1), to_vec(s2));
    for head in 0..h {
        for (row, &p) in perm.iter().enumerate() {
            for j in 0..dv {
                let (a, c) = (s2[(head * dk + row) * dv + j], s1[(head * dk + p) * dv + j]);
                assert!((a - c).abs() < 1e-5, "head {head} row {row}");
            }
        }
    }
}

/// Strong decays: g ≈ −30 per token at chunk 64 (per head), and per-channel log-decays up to
/// −1e4: finite and equal to the loop (masked exponents, no e^{−G} factors).
#[test]
fn strong_decays_stay_finite_and_exact() {
    let dev = cpu().autodiff();
    let (b, h, dk, dv, t) = (1, 2, 4, 3, 70);
    for decay in [Decay::Head, Decay::Channel] {
        let mut seqs = heads(b * h, t, dk, dv, true, decay, 41);
        for s in seqs.iter_mut() {
            for (p, row) in s.g.as_mut().unwrap().iter_mut().enumerate() {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = if decay == Decay::Head { -30.0 } else { -(10f64).powi(((p + c) % 5) as i32) };
                }
            }
        }
        let (want, _) = reference(&seqs);
        let r = rule(&seqs, b, decay, &dev);
        let g = r.g.clone().unwrap().require_grad();
        let (o, _) = Rule { g: Some(g.clone()), ..r }.chunked(zeros_state(b, h, dk, dv, &dev), 64);
        let got = to_vec(o.clone());
        assert!(got.iter().all(|x| x.is_finite()) && rel_err(&got, &want) < 1e-4, "{decay:?}: {}", rel_err(&got, &want));
        let grad = to_vec(g.grad(&o.sum().backward()).unwrap());
        assert!(grad.iter().all(|x| x.is_finite()), "{decay:?}: non-finite gate gradient");
    }
}

/// Changing q, k, v, β, g at positions ≥ P leaves outputs before P unchanged (no anchor after
/// the query, fla #1240), for a ragged last chunk.
#[test]
fn future_inputs_do_not_change_past_outputs() {
    let dev = cpu();
    let (b, h, dk, dv, t, p) = (1, 2, 4, 3, 13, 10);
    for (delta, decay) in CASES {
        let seqs = heads(b * h, t, dk, dv, delta, decay, 8);
        let mut changed = seqs.clone();
        let mut r = Gen(99);
        for s in changed.iter_mut() {
            for i in p..t {
                s.v[i] = r.vec(dv, 3.0);
                s.k[i] = s.k[i].iter().rev().cloned().collect();
                if let Some(g) = s.g.as_mut() {
                    g[i].iter_mut().for_each(|x| *x *= 7.0);
                }
            }
        }
        let (a, _) = rule(&seqs, b, decay, &dev).chunked(zeros_state(b, h, dk, dv, &dev), 8);
        let (c, _) = rule(&changed, b, decay, &dev).chunked(zeros_state(b, h, dk, dv, &dev), 8);
        let (a, c) = (to_vec(a.narrow(2, 0, p)), to_vec(c.narrow(2, 0, p)));
        assert!(max_abs_diff(&a, &c) < 1e-6, "{delta} {decay:?}");
    }
}
