//! Independent references in plain Rust (f64 loops over `Vec`s, no Burn), and small helpers.
#![allow(dead_code)]

use attnlab_attn::burn::tensor::{Device, Distribution, Tensor};
use attnlab_attn::{Attention, AttentionConfig, GroupedQuery, LatentAttention};

/// RoPE base every test module uses.
pub const ROPE_BASE: f64 = 10_000.0;

/// Factor on the initial weights that makes attention peaked (see [`sharpen`]).
pub const SHARP: f32 = 12.0;

/// Cached decode (a prefill of `prefill` tokens, then one token at a time) of `x`.
pub fn decode(m: &Attention, x: &Tensor<3>, prefill: usize) -> Tensor<3> {
    let [b, t, _] = x.dims();
    let mut state = m.init_state(b, t, &x.device());
    let mut parts = vec![m.step(x.clone().narrow(1, 0, prefill), &mut state)];
    for p in prefill..t {
        parts.push(m.step(x.clone().narrow(1, p, 1), &mut state));
    }
    Tensor::cat(parts, 1)
}

pub fn cpu() -> Device {
    Device::flex()
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().try_into_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

pub fn random_input(batch: usize, seq: usize, d: usize, seed: u64, device: &Device) -> Tensor<3> {
    seeded(device, seed, || Tensor::random([batch, seq, d], Distribution::Normal(0.0, 1.0), device))
}

static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seeds `device` and runs `draw` under a lock. The tests of one binary run on parallel
/// threads and share the backend's generator, so without the lock another test's draws can
/// fall between a seed and its draws (seen: one full run where the strided-sparse reference
/// test lost its peaked regime). Every draw in these tests goes through here or [`locked`].
pub fn seeded<T: 'static>(device: &Device, seed: u64, draw: impl FnOnce() -> T) -> T {
    locked(|| {
        device.seed(seed);
        draw()
    })
}

/// Runs `draw` (an unseeded initialisation) under the lock of [`seeded`], and initialises
/// every parameter of the modules it returns before the lock is released: Burn creates a
/// `Linear`'s weights lazily, drawing them at their first use, which without this happened
/// outside the lock, interleaved with other tests' draws (the cause of one CI run whose DSA
/// layer had other weights than every local run).
pub fn locked<T: 'static>(draw: impl FnOnce() -> T) -> T {
    let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let value = draw();
    materialise(&value);
    value
}

/// Draws every lazily initialised parameter of the modules in `value` (an attention layer, a
/// pair of them, or one of the modules tests build directly); other values are left alone.
fn materialise(value: &dyn std::any::Any) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    if let Some(m) = value.downcast_ref::<Attention>() {
        m.visit(&mut Touch);
    } else if let Some((a, b)) = value.downcast_ref::<(Attention, Attention)>() {
        a.visit(&mut Touch);
        b.visit(&mut Touch);
    } else if let Some(m) = value.downcast_ref::<GroupedQuery>() {
        m.visit(&mut Touch);
    } else if let Some(m) = value.downcast_ref::<LatentAttention>() {
        m.visit(&mut Touch);
    }
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
    let w: Vec<f64> = e.iter().map(|x| x / z).collect();
    record_row(&w);
    w
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
    let gate_bias = m.gate_bias.as_ref().map(|b| to_vec(b.val()));
    let width = (h + 2 * g) * d;
    // Qwen3-Next's order: per-head RMSNorm (when set), then RoPE on the first `rotated` dims.
    let q_gamma = m.q_norm.as_ref().map(|n| to_vec(n.gamma.val()));
    let k_gamma = m.k_norm.as_ref().map(|n| to_vec(n.gamma.val()));
    let rotated = m.rope.as_ref().map_or(0, |r| r.dim());
    let position = |v: Vec<f64>, p: usize, gamma: Option<&[f64]>| {
        let mut v = match gamma {
            Some(gamma) => rms_norm(&v, gamma, 1e-5),
            None => v,
        };
        if rotated > 0 {
            let r = rope(&v[..rotated], p, ROPE_BASE);
            v[..rotated].copy_from_slice(&r);
        }
        v
    };
    let mut out = Vec::new();
    for s in 0..b {
        let xs = &x[s * t * d_model..(s + 1) * t * d_model];
        let qkv = matmul(xs, t, d_model, &w_qkv, width);
        let mut concat = vec![0.0; t * h * d];
        for head in 0..h {
            let kv = head / (h / g);
            let q: Vec<Vec<f64>> = (0..t).map(|p| position(cols(&qkv, width, p, head * d, d), p, q_gamma.as_deref())).collect();
            let k: Vec<Vec<f64>> = (0..t).map(|p| position(cols(&qkv, width, p, (h + kv) * d, d), p, k_gamma.as_deref())).collect();
            let v: Vec<Vec<f64>> = (0..t).map(|p| cols(&qkv, width, p, (h + g + kv) * d, d)).collect();
            for (p, o) in masked_head(&q, &k, &v, 1.0 / (d as f64).sqrt(), &|i, j| allows(head, i, j)).into_iter().enumerate() {
                concat[p * h * d + head * d..p * h * d + (head + 1) * d].copy_from_slice(&o);
            }
        }
        if let Some(w_gate) = &w_gate {
            let gate = matmul(xs, t, d_model, w_gate, h * d);
            for (i, (c, z)) in concat.iter_mut().zip(gate).enumerate() {
                let z = z + gate_bias.as_ref().map_or(0.0, |b| b[i % (h * d)]);
                *c *= 1.0 / (1.0 + (-z).exp());
            }
        }
        out.extend(matmul(&concat, t, h * d, &w_out, d_model));
    }
    out
}

/// MLA's per-head queries `[h][t][d_h + d_R]`, keys (`[k_C; k_R]`) and values `[h][t][d_h]` of one
/// sequence x `[t, d_model]`, from the DeepSeek-V2 equations (latent RMSNorm ε 1e-5,
/// up-projections, the decoupled rotary slices rotated iff the module holds a table), and the
/// query input c_q `[t][q_in]` (x itself without a query latent).
pub struct MlaHeads {
    pub q: Vec<Vec<Vec<f64>>>,
    pub k: Vec<Vec<Vec<f64>>>,
    pub v: Vec<Vec<Vec<f64>>>,
    pub cq: Vec<Vec<f64>>,
}

pub fn mla_heads(m: &LatentAttention, xs: &[f64], t: usize, d_model: usize) -> MlaHeads {
    const EPS: f64 = 1e-5;
    let (h, d, r, dc) = (m.heads, m.head_dim, m.rope_dim, m.kv_latent);
    let w_dkv = to_vec(m.kv_down.weight.val());
    let g_kv = to_vec(m.kv_norm.gamma.val());
    let w_ukv = to_vec(m.kv_up.weight.val());
    let w_uq = to_vec(m.q_up.weight.val());
    let (cq, q_in) = match &m.q_latent {
        Some(ql) => {
            let dq = ql.norm.gamma.dims()[0];
            let raw = matmul(xs, t, d_model, &to_vec(ql.down.weight.val()), dq);
            let g = to_vec(ql.norm.gamma.val());
            ((0..t).flat_map(|p| rms_norm(&cols(&raw, dq, p, 0, dq), &g, EPS)).collect::<Vec<_>>(), dq)
        }
        None => (xs.to_vec(), d_model),
    };
    let q_all = matmul(&cq, t, q_in, &w_uq, h * (d + r));
    let kv = matmul(xs, t, d_model, &w_dkv, dc + r);
    let c_kv: Vec<Vec<f64>> = (0..t).map(|p| rms_norm(&cols(&kv, dc + r, p, 0, dc), &g_kv, EPS)).collect();
    let rotate = |v: Vec<f64>, p: usize| if m.rope.is_some() { rope(&v, p, ROPE_BASE) } else { v };
    let k_rope: Vec<Vec<f64>> = (0..t).map(|p| rotate(cols(&kv, dc + r, p, dc, r), p)).collect();
    let up: Vec<Vec<f64>> = c_kv.iter().map(|c| matmul(c, 1, dc, &w_ukv, h * 2 * d)).collect();
    let q = (0..h)
        .map(|head| {
            (0..t)
                .map(|p| {
                    let mut v = cols(&q_all, h * (d + r), p, head * (d + r), d);
                    v.extend(rotate(cols(&q_all, h * (d + r), p, head * (d + r) + d, r), p));
                    v
                })
                .collect()
        })
        .collect();
    let k = (0..h)
        .map(|head| {
            (0..t)
                .map(|p| {
                    let mut v = up[p][head * 2 * d..head * 2 * d + d].to_vec();
                    v.extend(&k_rope[p]);
                    v
                })
                .collect()
        })
        .collect();
    let v = (0..h).map(|head| (0..t).map(|p| up[p][head * 2 * d + d..(head + 1) * 2 * d].to_vec()).collect()).collect();
    MlaHeads { q, k, v, cq: (0..t).map(|p| cols(&cq, q_in, p, 0, q_in)).collect() }
}

/// Slices columns `from..from+len` of row `r` of a row-major matrix with `cols` columns.
pub fn cols(m: &[f64], cols: usize, r: usize, from: usize, len: usize) -> Vec<f64> {
    m[r * cols + from..r * cols + from + len].to_vec()
}

/// A grouped-query-family mixer (128 positions) with seeded weights.
pub fn grouped(config: &AttentionConfig, d_model: usize, heads: usize, seed: u64) -> GroupedQuery {
    grouped_on(config, d_model, heads, seed, &cpu())
}

/// [`grouped`] on `dev` (e.g. an autodiff device for gradient checks).
pub fn grouped_on(config: &AttentionConfig, d_model: usize, heads: usize, seed: u64, dev: &Device) -> GroupedQuery {
    match seeded(dev, seed, || config.init(d_model, heads, 128, ROPE_BASE as f32, dev)) {
        Attention::GroupedQuery(m) => m,
        other => panic!("expected a grouped-query module, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Peaked attention, relative errors and gradient checks (shared by every mechanism's tests).
// ---------------------------------------------------------------------------------------------

use attnlab_attn::burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use attnlab_attn::burn::tensor::{Gradients, TensorData};
use std::cell::RefCell;

/// Largest |a − b| over the largest |b|: an error relative to the reference's scale.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    max_abs_diff(got, want) / scale.max(1e-30)
}

thread_local! {
    /// (largest weight, visible keys) of every softmax row the references computed.
    static ROWS: RefCell<Vec<(f64, usize)>> = const { RefCell::new(Vec::new()) };
}

/// Records one row of softmax weights (called by [`weights`]).
fn record_row(w: &[f64]) {
    let visible = w.iter().filter(|x| **x > 0.0).count();
    let max = w.iter().cloned().fold(0.0, f64::max);
    ROWS.with(|r| r.borrow_mut().push((max, visible)));
}

/// Forgets the rows recorded so far on this thread.
pub fn reset_rows() {
    ROWS.with(|r| r.borrow_mut().clear());
}

/// Softmax rows with ≥ 4 visible keys recorded since [`reset_rows`].
pub fn peaked_rows() -> usize {
    ROWS.with(|r| r.borrow().iter().filter(|(_, n)| *n >= 4).count())
}

/// Asserts that the attention the references computed since [`reset_rows`] was peaked: over
/// rows with ≥ 4 visible keys, the mean of (largest weight) / (1 / visible keys) is ≥
/// `min_ratio`. Uniform weights give 1; at the N(0, 0.02²) initial weights it is ≈ 1.0, so the
/// score path (scale, RoPE, masks) barely changes the output; sharpened weights give 3–20.
pub fn assert_peaked(what: &str, min_ratio: f64) {
    let rows: Vec<f64> = ROWS.with(|r| r.borrow().iter().filter(|(_, n)| *n >= 4).map(|(m, n)| m * *n as f64).collect());
    assert!(!rows.is_empty(), "{what}: no softmax rows with ≥ 4 keys were recorded");
    let mean = rows.iter().sum::<f64>() / rows.len() as f64;
    assert!(mean >= min_ratio, "{what}: attention is near uniform (largest weight {mean:.2}× uniform, want ≥ {min_ratio})");
}

/// Runs `reference` (recording its softmax rows), asserts the attention was peaked wherever a
/// row had ≥ 4 keys, and that `got` is within 1e-4 of it relative to its scale.
pub fn assert_matches_reference(what: &str, got: &[f64], reference: impl FnOnce() -> Vec<f64>) {
    reset_rows();
    let want = reference();
    if peaked_rows() > 0 {
        assert_peaked(what, 2.5);
    }
    let err = rel_err(got, &want);
    assert!(err < 1e-4, "{what}: relative error {err}");
}

/// Multiplies every parameter with ≥ 2 dimensions by `factor`. At N(0, 0.02²) initial weights
/// the attention logits are ≈ 0.01 and the weights near uniform; ×12 makes q·k/√d of order
/// 1–10 (the logits scale with factor²).
pub fn sharpen<M: Module>(m: M, factor: f32) -> M {
    struct Scale(f32);
    impl ModuleMapper for Scale {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D >= 2 {
                let f = self.0;
                // A new leaf: the scaled tensor is what gradients are taken against.
                param.map(|t| {
                    let tracked = t.is_require_grad();
                    t.mul_scalar(f).detach().set_require_grad(tracked)
                })
            } else {
                param
            }
        }
    }
    m.map(&mut Scale(factor))
}

/// Values of every float parameter, in visit order.
pub fn param_values<M: Module>(m: &M) -> Vec<Vec<f64>> {
    struct Collect(Vec<Vec<f64>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(to_vec(param.val()));
        }
    }
    let mut c = Collect(vec![]);
    m.visit(&mut c);
    c.0
}

/// Gradients of every float parameter, in visit order (`None` where it has none).
pub fn param_grads<M: Module>(m: &M, grads: &Gradients) -> Vec<Option<Vec<f64>>> {
    struct Collect<'a>(Vec<Option<Vec<f64>>>, &'a Gradients);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().grad(self.1).map(to_vec));
        }
    }
    let mut c = Collect(vec![], grads);
    m.visit(&mut c);
    c.0
}

/// The module with entry `idx` of parameter number `which` (visit order) set to `value`.
pub fn with_entry<M: Module>(m: M, which: usize, idx: usize, value: f32) -> M {
    struct Set {
        which: usize,
        idx: usize,
        value: f32,
        seen: usize,
    }
    impl ModuleMapper for Set {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let hit = self.seen == self.which;
            self.seen += 1;
            if !hit {
                return param;
            }
            let (idx, value) = (self.idx, self.value);
            param.map(|t| {
                let (shape, device) = (t.shape(), t.device());
                let mut v = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
                v[idx] = value;
                Tensor::from_data(TensorData::new(v, shape), &device)
            })
        }
    }
    m.map(&mut Set { which, idx, value, seen: 0 })
}

/// A fixed pseudo-random vector (the loss is `Σ yᵢ rᵢ`, so every output entry matters).
pub fn probe(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// Checks the module's autodiff gradients (of the loss `Σ y ⊙ r` for a fixed `r`) for every
/// parameter and for the input against **central finite differences of the independent f64
/// reference**: `reference(m, x)` is evaluated at parameter entries moved to `w ± h` (the f32
/// values actually stored, so the step is exact) and at inputs `x ± h`. Four random entries
/// and the largest-gradient entry of each tensor are checked; an entry passes when
/// `|g − fd| ≤ 2e-3 · (max |g| of its tensor) + 2e-3 · |fd|`: f32 autodiff agrees with f64 to
/// ~1e-5 relative, a wrong backward (or a forward that is not the reference's function) by
/// O(1). `m` and `x` live on an autodiff device.
pub fn check_gradients<M: Module + Clone>(what: &str, m: &M, x: Tensor<3>, forward: &dyn Fn(&M, Tensor<3>) -> Tensor<3>, reference: &dyn Fn(&M, &[f64]) -> Vec<f64>) {
    let x = x.require_grad();
    let y = forward(m, x.clone());
    let r = probe(y.shape().num_elements(), 17);
    let r_tensor = Tensor::<1>::from_data(TensorData::new(r.iter().map(|v| *v as f32).collect::<Vec<_>>(), [r.len()]), &y.device()).reshape(y.shape());
    let grads = (y * r_tensor).sum().backward();
    let loss = |m: &M, x: &[f64]| reference(m, x).iter().zip(&r).map(|(a, b)| a * b).sum::<f64>();
    let x_vals = to_vec(x.clone());
    let check = |name: String, g: &[f64], fd_at: &dyn Fn(usize) -> f64| {
        let gmax = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(gmax > 0.0, "{what}: {name} has an all-zero gradient");
        let argmax = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let picks = probe(4, g.len() as u64 + 3);
        let mut entries: Vec<usize> = picks.iter().map(|p| ((p.abs() * g.len() as f64) as usize).min(g.len() - 1)).collect();
        entries.push(argmax);
        for i in entries {
            let fd = fd_at(i);
            let err = (g[i] - fd).abs();
            assert!(err <= 2e-3 * gmax + 2e-3 * fd.abs(), "{what}: {name}[{i}]: autodiff {} vs finite difference {fd} (max |g| {gmax})", g[i]);
        }
    };
    let gx = to_vec(x.grad(&grads).expect("input gradient"));
    check("input".into(), &gx, &|i| {
        let h = 1e-4;
        let (mut up, mut down) = (x_vals.clone(), x_vals.clone());
        up[i] += h;
        down[i] -= h;
        (loss(m, &up) - loss(m, &down)) / (2.0 * h)
    });
    let values = param_values(m);
    for (which, g) in param_grads(m, &grads).into_iter().enumerate() {
        let g = g.unwrap_or_else(|| panic!("{what}: parameter {which} has no gradient"));
        check(format!("parameter {which}"), &g, &|i| {
            let w = values[which][i] as f32;
            let h = 1e-3f32 * w.abs().max(0.05);
            let (wp, wm) = (w + h, w - h);
            let (up, down) = (with_entry(m.clone(), which, i, wp), with_entry(m.clone(), which, i, wm));
            (loss(&up, &x_vals) - loss(&down, &x_vals)) / (wp as f64 - wm as f64)
        });
    }
}

pub mod recurrent;
