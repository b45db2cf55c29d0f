//! The recurrence of linear attention, Gated DeltaNet and KDA as one op with its own backward.
//!
//! Per head, from S = 0 (`d_k × d_v`, row c = key channel c), with q and k first L2-normalised
//! per token when asked (`x/√(Σx² + 1e-6)`, fla's `l2norm`) and q scaled, for t = 0..T:
//! `Ŝ = Diag(e^{g_t}) S`, `u = β_t (v_t − Ŝᵀk_t)` (delta rule; additive: `u = v_t`),
//! `S = Ŝ + k_t uᵀ`, `o_t = Sᵀ q_t`. g has one log-decay per head (`e = 1`) or per key channel
//! (`e = d_k`).
//!
//! On a CPU the token recurrence beats the chunked (WY) form the GPU kernels use: S (8 KiB at
//! d_k = 32, d_v = 64) stays in L1, a token costs ≈ 7·d_k·d_v FLOPs against the chunked form's
//! ≈ 4·C·(d_k + d_v) + 6·d_k·d_v + 4·C²·log₂C, and there is nothing to gain from matrix units.
//! Heads run in parallel. The backward sweeps the tokens in reverse with
//! `dS ← Diag(e^g)(dS + q dOᵀ + k dpᵀ)`, recomputing S segment by segment from checkpoints
//! saved every [`SEGMENT`] tokens (memory T/SEGMENT·d_k·d_v per head instead of T·d_k·d_v) and
//! the residuals `r = v − p` the forward saved (T·d_v per head), so that the recompute is the
//! write alone, `S ← Diag(a) S + k (β r)ᵀ`, one pass over S per token:
//! `dq = S dO`, `dk = dS_tot u + Ŝ dp`, `du = dS_totᵀ k`, `dβ = du·r`, `dv = β du`,
//! `dp = −β du`, `dg_c = e^{g_c} (dS_tot,c·S_prev,c + k_c (S_prev,c·dp))` (summed over c for a
//! per-head decay): two passes over the rows of dS per token, of five and two row operations (one
//! for the additive rule).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use crate::tensor::{contiguous, from_vec, slice};
use crate::vector_math::{exp, with_avx2};

/// Tokens between two saved states in the forward (recomputed in the backward).
pub const SEGMENT: usize = 16;

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    heads: usize,
    t: usize,
    dk: usize,
    dv: usize,
    /// 1 (per-head decay) or d_k (per channel).
    e: usize,
    delta: bool,
    /// Whether q and k are L2-normalised per token (`x / √(Σx² + 1e-6)`) before the rule.
    l2: bool,
    /// Factor on q (after its norm).
    scale: f32,
}

/// One head's inputs, read in place from the token-major tensors ([`Packed`]): token t's q is
/// `q[t·rows.0..][..d_k]` (likewise k, v), its β `beta[t·rows.1]`, its log-decays
/// `g[t·rows.2..][..e]`.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    beta: &'a [f32],
    g: &'a [f32],
    /// Row strides of (qkv, β, g).
    rows: (usize, usize, usize),
}

impl Head<'_> {
    #[inline(always)]
    fn q(&self, d: &Dims, t: usize) -> &[f32] {
        &self.q[t * self.rows.0..][..d.dk]
    }

    #[inline(always)]
    fn k(&self, d: &Dims, t: usize) -> &[f32] {
        &self.k[t * self.rows.0..][..d.dk]
    }

    #[inline(always)]
    fn v(&self, d: &Dims, t: usize) -> &[f32] {
        &self.v[t * self.rows.0..][..d.dv]
    }

    #[inline(always)]
    fn beta(&self, t: usize) -> f32 {
        self.beta[t * self.rows.1]
    }

    #[inline(always)]
    fn g(&self, d: &Dims, t: usize) -> &[f32] {
        &self.g[t * self.rows.2..][..d.e]
    }
}

/// `Σ a_i b_i` in 8 independent lanes (a float reduction the compiler can vectorise; summing
/// the lanes as a tree, or keeping two vectors of lanes, made LLVM fall back to 128-bit code).
///
/// The kernels use `mul_add` (one FMA instruction in the AVX2+FMA build, and on aarch64; a
/// library call only in the baseline x86 build for CPUs without FMA).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += α x`.
#[inline(always)]
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y = alpha.mul_add(*x, *y));
}

/// `e^{g_{t,c}}` for every key row of token `t`.
#[inline(always)]
fn decays(d: &Dims, x: &Head, t: usize, out: &mut [f32]) {
    if d.e == 1 {
        out.fill(exp(x.g(d, t)[0]));
    } else {
        out.iter_mut().zip(x.g(d, t)).for_each(|(a, g)| *a = exp(*g));
    }
}

/// `out = scale · x / √(Σx² + 1e-6)` (or `scale · x` without `l2`); returns the norm (1 without).
#[inline(always)]
fn prepare(x: &[f32], l2: bool, scale: f32, out: &mut [f32]) -> f32 {
    let n = if l2 { (dot(x, x) + L2_EPS).sqrt() } else { 1.0 };
    let f = scale / n;
    out.iter_mut().zip(x).for_each(|(o, v)| *o = v * f);
    n
}

/// The gradient of the raw vector from that of `prepare`'s output, in place: with `ŷ = x/n`,
/// `dx = scale·(dŷ − ŷ(ŷ·dŷ))/n` (`scale·dŷ` without the norm).
#[inline(always)]
fn unprepare(x: &[f32], n: f32, l2: bool, scale: f32, grad: &mut [f32]) {
    if !l2 {
        grad.iter_mut().for_each(|g| *g *= scale);
        return;
    }
    let proj = dot(x, grad) / n;
    grad.iter_mut().zip(x).for_each(|(g, x)| *g = scale * (*g - x / n * proj) / n);
}

/// ε inside fla's L2 norm.
const L2_EPS: f32 = 1e-6;

/// One token with the prepared key `k` and query `q` (S is `d_k × d_v`): the decays a = e^{g_t},
/// the prediction `p = (Diag(a) S)ᵀ k` (a read of S), the write's values u = β(v − p) (delta) or
/// v (additive), then `S ← Diag(a) S + k uᵀ` and the readout `o = Sᵀq` in one pass over S.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn advance_read(d: &Dims, x: &Head, t: usize, k: &[f32], q: &[f32], s: &mut [f32], a: &mut [f32], p: &mut [f32], u: &mut [f32], o: &mut [f32]) {
    let dv = d.dv;
    decays(d, x, t, a);
    p.iter_mut().for_each(|v| *v = 0.0);
    for c in 0..d.dk {
        axpy(p, a[c] * k[c], &s[c * dv..(c + 1) * dv]);
    }
    let v = x.v(d, t);
    if d.delta {
        let beta = x.beta(t);
        u.iter_mut().zip(v).zip(p.iter()).for_each(|((u, v), p)| *u = beta * (v - p));
    } else {
        u.copy_from_slice(v);
    }
    o.iter_mut().for_each(|v| *v = 0.0);
    for c in 0..d.dk {
        let (ac, kc, qc) = (a[c], k[c], q[c]);
        s[c * dv..(c + 1) * dv].iter_mut().zip(u.iter()).zip(o.iter_mut()).for_each(|((r, u), o)| {
            *r = kc.mul_add(*u, *r * ac);
            *o = qc.mul_add(*r, *o);
        });
    }
}

/// One head forward: o `[t, d_v]`, the states before tokens 0, SEGMENT, 2·SEGMENT, … and (delta
/// rule) the residuals `v_t − p_t` `[t, d_v]`.
#[inline(always)]
fn forward_head(d: &Dims, x: &Head, o: &mut [f32], saved: &mut [f32], resid: &mut [f32]) {
    let (dk, dv) = (d.dk, d.dv);
    let mut s = vec![0.0f32; dk * dv];
    let (mut a, mut p, mut u) = (vec![0.0; dk], vec![0.0; dv], vec![0.0; dv]);
    let (mut q, mut k) = (vec![0.0; dk], vec![0.0; dk]);
    for t in 0..d.t {
        if t % SEGMENT == 0 {
            saved[t / SEGMENT * dk * dv..(t / SEGMENT + 1) * dk * dv].copy_from_slice(&s);
        }
        prepare(x.k(d, t), d.l2, 1.0, &mut k);
        prepare(x.q(d, t), d.l2, d.scale, &mut q);
        advance_read(d, x, t, &k, &q, &mut s, &mut a, &mut p, &mut u, &mut o[t * dv..(t + 1) * dv]);
        if d.delta {
            resid[t * dv..(t + 1) * dv].iter_mut().zip(x.v(d, t)).zip(&p).for_each(|((r, v), p)| *r = v - p);
        }
    }
}

fn segments(t: usize) -> usize {
    t.div_ceil(SEGMENT)
}

/// Residual values a head saves: `t·d_v` for the delta rule, a placeholder 1 for the additive.
fn resid_len(d: &Dims) -> usize {
    if d.delta { d.t * d.dv } else { 1 }
}

/// o (token-major, `[b, t, h·d_v]`), the saved states and residuals (head by head) for all heads.
fn forward(p: &Packed, d: &Dims, qkv: &[f32], beta: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, dk, dv) = (d.t, d.dk, d.dv);
    let mut out = vec![0.0f32; d.heads * t * dv];
    let per_head = segments(t) * dk * dv;
    let mut saved = vec![0.0f32; d.heads * per_head];
    let mut resid = vec![0.0f32; d.heads * resid_len(d)];
    let rows = Rows::new(&mut out);
    saved.par_chunks_mut(per_head.max(1)).zip(resid.par_chunks_mut(resid_len(d).max(1))).enumerate().for_each(|(i, (saved, resid))| {
        let x = p.head(i, qkv, beta, g);
        let mut o = vec![0.0f32; t * dv];
        with_avx2!(forward_head(d, &x, &mut o, saved, resid));
        // SAFETY: head i alone writes its column block of o.
        unsafe { rows.put(p.o_start(i), p.h * dv, dv, &o) };
    });
    (out, saved, resid)
}

/// One head's gradients: dq, dk `[t, d_k]`, dv `[t, d_v]`, dβ `[t]`, dg `[t, e]`.
struct HeadGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbeta: Vec<f32>,
    dg: Vec<f32>,
}

/// `S_next = Diag(a) S_prev + k uᵀ` ([`advance_read`]'s write, bit for bit), `d_k × d_v` rows.
#[inline(always)]
fn write_next(prev: &[f32], next: &mut [f32], a: &[f32], k: &[f32], u: &[f32]) {
    let dv = u.len();
    for (c, (next, prev)) in next.chunks_exact_mut(dv).zip(prev.chunks_exact(dv)).enumerate() {
        let (ac, kc) = (a[c], k[c]);
        next.iter_mut().zip(prev).zip(u).for_each(|((n, p), u)| *n = kc.mul_add(*u, *p * ac));
    }
}

/// One head's gradients from its checkpoints `saved` and residuals `resid` (the delta rule's
/// `v − p`, [`forward_head`]); `d_o`: the head's output gradients, token t's at
/// `d_o[t·o_row..][..d_v]`.
#[inline(always)]
fn backward_head(d: &Dims, x: &Head, saved: &[f32], resid: &[f32], d_o: &[f32], o_row: usize) -> HeadGrads {
    let (t_len, dk, dv, e) = (d.t, d.dk, d.dv, d.e);
    let mut gr = HeadGrads { dq: vec![0.0; t_len * dk], dk: vec![0.0; t_len * dk], dv: vec![0.0; t_len * dv], dbeta: vec![0.0; t_len], dg: vec![0.0; t_len * e] };
    let mut ds = vec![0.0f32; dk * dv];
    let (mut a, mut du, mut dp, mut da) = (vec![0.0; dk], vec![0.0; dv], vec![0.0; dv], vec![0.0; dk]);
    // states[j] = S before token start + j; states[len] = after the segment's last token.
    let mut states = vec![0.0f32; (SEGMENT + 1) * dk * dv];
    let mut us = vec![0.0f32; SEGMENT * dv];
    let (mut q, mut k) = (vec![0.0f32; dk], vec![0.0f32; dk]);
    for seg in (0..segments(t_len)).rev() {
        let start = seg * SEGMENT;
        let len = SEGMENT.min(t_len - start);
        states[..dk * dv].copy_from_slice(&saved[seg * dk * dv..(seg + 1) * dk * dv]);
        for j in 0..len {
            let t = start + j;
            let u = &mut us[j * dv..(j + 1) * dv];
            if d.delta {
                let beta = x.beta(t);
                u.iter_mut().zip(&resid[t * dv..(t + 1) * dv]).for_each(|(u, r)| *u = beta * r);
            } else {
                u.copy_from_slice(x.v(d, t));
            }
            prepare(x.k(d, t), d.l2, 1.0, &mut k);
            decays(d, x, t, &mut a);
            let (before, after) = states.split_at_mut((j + 1) * dk * dv);
            write_next(&before[j * dk * dv..], &mut after[..dk * dv], &a, &k, u);
        }
        for j in (0..len).rev() {
            let t = start + j;
            let s_prev = &states[j * dk * dv..(j + 1) * dk * dv];
            let s_cur = &states[(j + 1) * dk * dv..(j + 2) * dk * dv];
            let u = &us[j * dv..(j + 1) * dv];
            let (q_raw, k_raw) = (x.q(d, t), x.k(d, t));
            let n_q = prepare(q_raw, d.l2, d.scale, &mut q);
            let n_k = prepare(k_raw, d.l2, 1.0, &mut k);
            let d_ot = &d_o[t * o_row..][..dv];
            decays(d, x, t, &mut a);
            // dq = S dO; dS += q dOᵀ (dS_tot); dk = dS_tot u; du = dS_totᵀ k; da = dS_tot·S_prev per row.
            du.iter_mut().for_each(|v| *v = 0.0);
            for c in 0..dk {
                let row = &mut ds[c * dv..(c + 1) * dv];
                gr.dq[t * dk + c] = dot(&s_cur[c * dv..(c + 1) * dv], d_ot);
                axpy(row, q[c], d_ot);
                gr.dk[t * dk + c] = dot(row, u);
                axpy(&mut du, k[c], row);
                da[c] = dot(row, &s_prev[c * dv..(c + 1) * dv]);
            }
            if d.delta {
                let beta = x.beta(t);
                gr.dbeta[t] = dot(&du, &resid[t * dv..(t + 1) * dv]);
                for jj in 0..dv {
                    gr.dv[t * dv + jj] = beta * du[jj];
                    dp[jj] = -beta * du[jj];
                }
                // Ŝ = Diag(a) S_prev, dŜ = dS_tot + k dpᵀ: dk += Ŝ dp, da += k ⊙ (S_prev dp),
                // dS ← Diag(a) dŜ.
                for c in 0..dk {
                    let row = &mut ds[c * dv..(c + 1) * dv];
                    let prev_dp = dot(&s_prev[c * dv..(c + 1) * dv], &dp);
                    let (ac, kc) = (a[c], k[c]);
                    gr.dk[t * dk + c] += ac * prev_dp;
                    da[c] += kc * prev_dp;
                    row.iter_mut().zip(&dp).for_each(|(r, dp)| *r = ac * kc.mul_add(*dp, *r));
                }
            } else {
                gr.dv[t * dv..(t + 1) * dv].copy_from_slice(&du);
                for c in 0..dk {
                    let ac = a[c];
                    ds[c * dv..(c + 1) * dv].iter_mut().for_each(|r| *r *= ac);
                }
            }
            let dg = &mut gr.dg[t * e..(t + 1) * e];
            if e == 1 {
                dg[0] = a.first().map_or(0.0, |a| a * da.iter().sum::<f32>());
            } else {
                dg.iter_mut().zip(&da).zip(&a).for_each(|((dg, da), a)| *dg = da * a);
            }
            unprepare(q_raw, n_q, d.l2, d.scale, &mut gr.dq[t * dk..(t + 1) * dk]);
            unprepare(k_raw, n_k, d.l2, 1.0, &mut gr.dk[t * dk..(t + 1) * dk]);
        }
    }
    gr
}

/// d(qkv), dβ, dg for all heads, token-major like the inputs; `d_o` is `[b, t, h·d_v]`.
fn backward(p: &Packed, d: &Dims, (qkv, beta, g): (&[f32], &[f32], &[f32]), (saved, resid): (&[f32], &[f32]), d_o: &[f32]) -> [Vec<f32>; 3] {
    let (t, dk, dv, e, h, w) = (d.t, d.dk, d.dv, d.e, p.h, p.width());
    let per_head = segments(t) * dk * dv;
    let (mut dqkv, mut dbeta, mut dg) = (vec![0.0f32; qkv.len()], vec![0.0f32; beta.len()], vec![0.0f32; g.len()]);
    if t == 0 {
        return [dqkv, dbeta, dg];
    }
    let (to_qkv, to_beta, to_g) = (Rows::new(&mut dqkv), Rows::new(&mut dbeta), Rows::new(&mut dg));
    (0..d.heads).into_par_iter().for_each(|i| {
        let x = p.head(i, qkv, beta, g);
        let rl = resid_len(d);
        let gr = with_avx2!(backward_head(d, &x, &saved[i * per_head..(i + 1) * per_head], &resid[i * rl..(i + 1) * rl], &d_o[p.o_start(i)..], h * dv));
        let [q, k, v] = p.qkv_starts(i);
        // SAFETY: head i alone writes its column blocks of d(qkv), dβ and dg.
        unsafe {
            to_qkv.put(q, w, dk, &gr.dq);
            to_qkv.put(k, w, dk, &gr.dk);
            to_qkv.put(v, w, dv, &gr.dv);
            to_beta.put(p.beta_start(i), h, 1, &gr.dbeta);
            to_g.put(p.beta_start(i) * e, h * e, e, &gr.dg);
        }
    });
    [dqkv, dbeta, dg]
}

/// A token-major output that the parallel heads fill, each head its own column blocks.
struct Rows<'a> {
    ptr: *mut f32,
    len: usize,
    _buffer: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the heads write disjoint elements (`Rows::put`'s contract).
unsafe impl Sync for Rows<'_> {}

impl<'a> Rows<'a> {
    fn new(buffer: &'a mut [f32]) -> Self {
        Self { ptr: buffer.as_mut_ptr(), len: buffer.len(), _buffer: std::marker::PhantomData }
    }

    /// Writes the rows of `d` values of `src` (one per token) at `start + t·stride`.
    /// SAFETY: no two concurrent calls write the same element.
    unsafe fn put(&self, start: usize, stride: usize, d: usize, src: &[f32]) {
        debug_assert_eq!(src.len() % d, 0, "delta_rule: {} values are not rows of {d}", src.len());
        for (t, row) in src.chunks_exact(d).enumerate() {
            let at = start + t * stride;
            assert!(at + d <= self.len, "delta_rule: row {t} at {at} + {d} past {}", self.len);
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add(at), d) };
        }
    }
}

/// The layout the layers produce and consume (token-major, heads side by side): qkv
/// `[b, t, h·(2d_k + d_v)]` (all q heads, then all k heads, then all v heads), β `[b, t, h]`,
/// g `[b, t, h·e]`, o `[b, t, h·d_v]`. Each head reads its rows in place (strided, [`Head`]) and
/// writes its own column blocks of the outputs ([`Rows`]): no head split or merge, forward or
/// backward (as separate tensor ops, each would be a copy).
#[derive(Clone, Copy, Debug)]
struct Packed {
    b: usize,
    t: usize,
    h: usize,
    dk: usize,
    dv: usize,
    e: usize,
}

impl Packed {
    fn of(qkv: &Shape, beta: &Shape, g: &Shape, h: usize, dk: usize) -> Self {
        let (s, bs, gs) = (qkv.as_slice(), beta.as_slice(), g.as_slice());
        assert!(s.len() == 3 && h > 0 && s[2] > 2 * h * dk && (s[2] - 2 * h * dk) % h == 0, "delta_rule: qkv {s:?} is not [b, t, h·(2·{dk} + d_v)] with h = {h}");
        assert!(bs == [s[0], s[1], h], "delta_rule: beta {bs:?} is not [b, t, h] = {:?}", [s[0], s[1], h]);
        assert!(gs.len() == 3 && gs[..2] == s[..2] && (gs[2] == h || gs[2] == h * dk), "delta_rule: g {gs:?} is not [b, t, h] or [b, t, h·d_k]");
        Self { b: s[0], t: s[1], h, dk, dv: (s[2] - 2 * h * dk) / h, e: gs[2] / h }
    }

    fn width(&self) -> usize {
        self.h * (2 * self.dk + self.dv)
    }

    fn dims(&self, options: RuleOptions) -> Dims {
        Dims { heads: self.b * self.h, t: self.t, dk: self.dk, dv: self.dv, e: self.e, delta: options.delta, l2: options.l2, scale: options.scale }
    }

    /// Where head i = (batch bi, head hi) starts in qkv: its (q, k, v) column blocks of row bi·t.
    fn qkv_starts(&self, i: usize) -> [usize; 3] {
        let (bi, hi, h) = (i / self.h, i % self.h, self.h);
        let row = bi * self.t * self.width();
        [row + hi * self.dk, row + (h + hi) * self.dk, row + 2 * h * self.dk + hi * self.dv]
    }

    /// Where head i's β of token 0 is (its g: `e` times that).
    fn beta_start(&self, i: usize) -> usize {
        (i / self.h) * self.t * self.h + i % self.h
    }

    /// Where head i's output of token 0 is in o `[b, t, h·d_v]`.
    fn o_start(&self, i: usize) -> usize {
        self.beta_start(i) * self.dv
    }

    /// Head i's inputs, in place.
    fn head<'a>(&self, i: usize, qkv: &'a [f32], beta: &'a [f32], g: &'a [f32]) -> Head<'a> {
        let [q, k, v] = self.qkv_starts(i);
        let b = self.beta_start(i);
        Head { q: &qkv[q..], k: &qkv[k..], v: &qkv[v..], beta: &beta[b..], g: &g[b * self.e..], rows: (self.width(), self.h, self.h * self.e) }
    }
}

/// What the backward keeps: the (contiguous) inputs, the saved states and residuals, the shapes.
#[derive(Clone, Debug)]
struct Saved {
    qkv: FlexTensor,
    beta: FlexTensor,
    g: FlexTensor,
    states: Vec<f32>,
    resid: Vec<f32>,
    packed: Packed,
    dims: Dims,
}

/// The op as a backend extension: Flex runs the kernels, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait DeltaRuleBackend: Backend {
    /// qkv `[b, t, h·(2d_k + d_v)]`, beta `[b, t, h]`, g `[b, t, h·e]` → o `[b, t, h·d_v]`.
    fn delta_rule(qkv: FloatTensor<Self>, beta: FloatTensor<Self>, g: FloatTensor<Self>, heads: usize, key_dim: usize, options: RuleOptions) -> FloatTensor<Self>;
}

/// The rule's switches: the delta rule (else additive), L2-normalised q and k, the factor on q.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RuleOptions {
    pub delta: bool,
    pub l2: bool,
    pub scale: f32,
}

fn run(qkv: FlexTensor, beta: FlexTensor, g: FlexTensor, h: usize, dk: usize, options: RuleOptions) -> (FlexTensor, Saved) {
    let p = Packed::of(&qkv.shape(), &beta.shape(), &g.shape(), h, dk);
    let (qkv, beta, g) = (contiguous(qkv), contiguous(beta), contiguous(g));
    let dims = p.dims(options);
    let (o, states, resid) = forward(&p, &dims, slice(&qkv), slice(&beta), slice(&g));
    (from_vec(o, Shape::new([p.b, p.t, h * p.dv])), Saved { qkv, beta, g, states, resid, packed: p, dims })
}

impl DeltaRuleBackend for Flex {
    fn delta_rule(qkv: FlexTensor, beta: FlexTensor, g: FlexTensor, heads: usize, key_dim: usize, options: RuleOptions) -> FlexTensor {
        run(qkv, beta, g, heads, key_dim, options).0
    }
}

#[derive(Debug)]
struct DeltaRuleBackward;

impl Backward<Flex, 3> for DeltaRuleBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { qkv, beta, g, states, resid, packed: p, dims } = ops.state;
        let d_out = contiguous(grads.consume::<Flex>(&ops.node));
        let grads_in = backward(&p, &dims, (slice(&qkv), slice(&beta), slice(&g)), (&states, &resid), slice(&d_out));
        let outs = grads_in.into_iter().zip([p.width(), p.h, p.h * p.e]);
        for (node, (grad, width)) in ops.parents.into_iter().zip(outs) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, from_vec(grad, Shape::new([p.b, p.t, width])));
            }
        }
    }
}

impl<C: CheckpointStrategy> DeltaRuleBackend for Autodiff<Flex, C> {
    fn delta_rule(qkv: FloatTensor<Self>, beta: FloatTensor<Self>, g: FloatTensor<Self>, heads: usize, key_dim: usize, options: RuleOptions) -> FloatTensor<Self> {
        match DeltaRuleBackward.prepare::<C>([qkv.node(), beta.node(), g.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (o, saved) = run(qkv.primitive().clone(), beta.primitive().clone(), g.primitive().clone(), heads, key_dim, options);
                prep.finish(saved, o)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::delta_rule(qkv.into_primitive(), beta.into_primitive(), g.into_primitive(), heads, key_dim, options))
            }
        }
    }
}

/// The recurrence from S = 0 on the CPU backend (call only where [`crate::fused`] holds), in the
/// layers' token-major layout: qkv `[b, t, h·(2d_k + d_v)]` (q heads, k heads, v heads; q and k
/// raw: normalised and scaled inside as `options` say), beta `[b, t, h]` (ignored unless
/// `options.delta`), g `[b, t, h]` (per-head log-decay) or `[b, t, h·d_k]` (per channel)
/// → o `[b, t, h·d_v]`.
pub fn delta_rule(qkv: Tensor<3>, beta: Tensor<3>, g: Tensor<3>, heads: usize, key_dim: usize, options: RuleOptions) -> Tensor<3> {
    assert!(crate::fused(&qkv), "delta_rule: the fused kernel needs f32 tensors on the CPU (flex) device");
    let out = Dispatch::delta_rule(qkv.into_dispatch(), beta.into_dispatch(), g.into_dispatch(), heads, key_dim, options);
    Tensor::from_dispatch(out)
}
