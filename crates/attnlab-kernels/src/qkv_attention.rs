//! Causal grouped-query attention straight from a fused QKV projection, as one op: RoPE, the
//! head split, [`crate::causal_attention`]'s kernel and the head merge, so none of the layout
//! changes around attention runs as a separate tensor op (each a copy, forward and backward).
//!
//! qkv: `[batch, seq, (h + 2g)·d]` — h query heads, then g key heads, then g value heads; query
//! head i reads key/value group `i / (h/g)`. Position τ of the sequence is position τ of the
//! RoPE tables cos/sin `[positions, d/2]` (a training forward; decode goes through the cache).
//! Output `[batch, seq, h·d]`, heads in order. Backward: `d(qkv)` in one pass, with the query
//! and key gradients rotated back by −θ.

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

use crate::causal_attention::{backward, forward, Dims};
use crate::rope::rotate_vector;
use crate::tensor::{contiguous, from_vec, slice};

/// Shapes of one call: batch, sequence, query heads, kv heads, head dim.
#[derive(Clone, Copy, Debug)]
struct Heads {
    b: usize,
    t: usize,
    h: usize,
    g: usize,
    d: usize,
}

impl Heads {
    fn of(qkv: &Shape, h: usize, g: usize) -> Self {
        let s = qkv.as_slice();
        assert!(s.len() == 3 && g > 0 && h % g == 0, "qkv_attention: qkv {s:?} with {h} heads / {g} kv heads");
        assert!(s[2] % (h + 2 * g) == 0, "qkv_attention: width {} is not (h + 2g)·d", s[2]);
        Self { b: s[0], t: s[1], h, g, d: s[2] / (h + 2 * g) }
    }

    /// Width of one qkv row.
    fn width(&self) -> usize {
        (self.h + 2 * self.g) * self.d
    }

    /// The kernel's view: per (batch, group), the group's r query heads stacked along the rows.
    fn dims(&self, scale: f32) -> Dims {
        let Heads { b, t, h, g, d } = *self;
        Dims { heads: b * g, rows: (h / g) * t, keys: t, d, dv: d, t, offset: 0, scale, window: usize::MAX, sinks: 0 }
    }

    /// For kernel row `row` of a `[b, g, rows, d]` tensor holding query heads: (qkv row, head slot).
    fn query_row(&self, row: usize) -> (usize, usize) {
        let r = self.h / self.g;
        let (bg, rho) = (row / (r * self.t), row % (r * self.t));
        let (bi, gi) = (bg / self.g, bg % self.g);
        (bi * self.t + rho % self.t, gi * r + rho / self.t)
    }

    /// For kernel row `row` of a `[b, g, t, d]` key (or value) tensor: (qkv row, group).
    fn key_row(&self, row: usize) -> (usize, usize) {
        let (bg, tau) = (row / self.t, row % self.t);
        ((bg / self.g) * self.t + tau, bg % self.g)
    }
}

/// Builds the kernel's q, k (rotated) and v from qkv rows, one pass each, in parallel.
fn split(qkv: &[f32], cos: &[f32], sin: &[f32], hd: Heads) -> [Vec<f32>; 3] {
    let (d, half, w) = (hd.d, hd.d / 2, hd.width());
    let table = |pos: usize| (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
    let mut q = vec![0.0; hd.b * hd.h * hd.t * d];
    let mut k = vec![0.0; hd.b * hd.g * hd.t * d];
    let mut v = vec![0.0; hd.b * hd.g * hd.t * d];
    q.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
        let (src, head) = hd.query_row(row);
        let (c, s) = table(src % hd.t);
        rotate_vector(out, &qkv[src * w + head * d..][..d], c, s, 1.0);
    });
    k.par_chunks_mut(d).zip(v.par_chunks_mut(d)).enumerate().for_each(|(row, (k, v))| {
        let (src, gi) = hd.key_row(row);
        let (c, s) = table(src % hd.t);
        rotate_vector(k, &qkv[src * w + (hd.h + gi) * d..][..d], c, s, 1.0);
        v.copy_from_slice(&qkv[src * w + (hd.h + hd.g + gi) * d..][..d]);
    });
    [q, k, v]
}

/// `[b, g, r·t, d]` kernel rows ↔ `[b, t, h·d]` merged heads.
fn merge(o: &[f32], hd: Heads) -> Vec<f32> {
    let (d, r) = (hd.d, hd.h / hd.g);
    let mut out = vec![0.0; o.len()];
    out.par_chunks_mut(hd.h * d).enumerate().for_each(|(src, row)| {
        let (bi, tau) = (src / hd.t, src % hd.t);
        for (head, dst) in row.chunks_exact_mut(d).enumerate() {
            let (gi, i) = (head / r, head % r);
            let k_row = (bi * hd.g + gi) * r * hd.t + i * hd.t + tau;
            dst.copy_from_slice(&o[k_row * d..(k_row + 1) * d]);
        }
    });
    out
}

/// The inverse of [`merge`].
fn unmerge(merged: &[f32], hd: Heads) -> Vec<f32> {
    let d = hd.d;
    let mut o = vec![0.0; merged.len()];
    o.par_chunks_mut(d).enumerate().for_each(|(row, dst)| {
        let (src, head) = hd.query_row(row);
        dst.copy_from_slice(&merged[(src * hd.h + head) * d..][..d]);
    });
    o
}

/// `d(qkv)` from the kernel-layout gradients, rotating dq and dk back by −θ.
fn join(dq: &[f32], dk: &[f32], dv: &[f32], cos: &[f32], sin: &[f32], hd: Heads) -> Vec<f32> {
    let (d, half, r) = (hd.d, hd.d / 2, hd.h / hd.g);
    let mut out = vec![0.0; hd.b * hd.t * hd.width()];
    out.par_chunks_mut(hd.width()).enumerate().for_each(|(src, row)| {
        let (bi, tau) = (src / hd.t, src % hd.t);
        let (c, s) = (&cos[tau * half..(tau + 1) * half], &sin[tau * half..(tau + 1) * half]);
        for (slot, dst) in row.chunks_exact_mut(d).enumerate() {
            if slot < hd.h {
                let (gi, i) = (slot / r, slot % r);
                let k_row = (bi * hd.g + gi) * r * hd.t + i * hd.t + tau;
                rotate_vector(dst, &dq[k_row * d..(k_row + 1) * d], c, s, -1.0);
            } else {
                let gi = (slot - hd.h) % hd.g;
                let k_row = (bi * hd.g + gi) * hd.t + tau;
                if slot < hd.h + hd.g {
                    rotate_vector(dst, &dk[k_row * d..(k_row + 1) * d], c, s, -1.0);
                } else {
                    dst.copy_from_slice(&dv[k_row * d..(k_row + 1) * d]);
                }
            }
        }
    });
    out
}

/// The op as a backend extension: Flex runs the kernels, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait QkvAttentionBackend: Backend {
    /// See the module docs; cos/sin are constants.
    #[allow(clippy::too_many_arguments)]
    fn qkv_attention(qkv: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, heads: usize, kv_heads: usize, scale: f32, window: usize, sinks: usize) -> FloatTensor<Self>;
}

/// What the backward keeps: the kernel-layout q, k, v, O, the log-sum-exp, the tables.
#[derive(Clone, Debug)]
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
    cos: FlexTensor,
    sin: FlexTensor,
    heads: Heads,
    dims: Dims,
}

#[allow(clippy::too_many_arguments)]
fn run(qkv: FlexTensor, cos: FlexTensor, sin: FlexTensor, h: usize, g: usize, scale: f32, window: usize, sinks: usize) -> (FlexTensor, Saved) {
    let hd = Heads::of(&qkv.shape(), h, g);
    let (qkv, cos, sin) = (contiguous(qkv), contiguous(cos), contiguous(sin));
    assert!(cos.shape().num_elements() >= hd.t * hd.d / 2, "qkv_attention: RoPE tables shorter than {} positions", hd.t);
    let [q, k, v] = split(slice(&qkv), slice(&cos), slice(&sin), hd);
    let dims = hd.dims(scale).windowed(window, sinks);
    let (o, lse) = forward(&q, &k, &v, dims);
    let out = from_vec(merge(&o, hd), Shape::new([hd.b, hd.t, hd.h * hd.d]));
    (out, Saved { q, k, v, o, lse, cos, sin, heads: hd, dims })
}

impl QkvAttentionBackend for Flex {
    fn qkv_attention(qkv: FlexTensor, cos: FlexTensor, sin: FlexTensor, heads: usize, kv_heads: usize, scale: f32, window: usize, sinks: usize) -> FlexTensor {
        run(qkv, cos, sin, heads, kv_heads, scale, window, sinks).0
    }
}

#[derive(Debug)]
struct QkvAttentionBackward;

impl Backward<Flex, 1> for QkvAttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { q, k, v, o, lse, cos, sin, heads: hd, dims } = ops.state;
        let d_out = contiguous(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let d_o = unmerge(slice(&d_out), hd);
            let (dq, dk, dv) = backward(&q, &k, &v, &o, &lse, &d_o, dims);
            let dqkv = join(&dq, &dk, &dv, slice(&cos), slice(&sin), hd);
            grads.register::<Flex>(node.id, from_vec(dqkv, Shape::new([hd.b, hd.t, hd.width()])));
        }
    }
}

impl<C: CheckpointStrategy> QkvAttentionBackend for Autodiff<Flex, C> {
    fn qkv_attention(qkv: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, heads: usize, kv_heads: usize, scale: f32, window: usize, sinks: usize) -> FloatTensor<Self> {
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match QkvAttentionBackward.prepare::<C>([qkv.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, saved) = run(qkv.primitive().clone(), cos, sin, heads, kv_heads, scale, window, sinks);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(run(qkv.into_primitive(), cos, sin, heads, kv_heads, scale, window, sinks).0),
        }
    }
}

/// Causal attention of a fused QKV projection `[batch, seq, (h + 2g)·d]` with RoPE tables
/// cos/sin `[positions, d/2]` → merged heads `[batch, seq, h·d]` (see the module docs).
/// `window = Some((w, sinks))`: a sliding window of w keys plus `sinks` sink positions.
/// Only for tensors where [`crate::fused`] is true.
pub fn qkv_attention(qkv: Tensor<3>, cos: Tensor<2>, sin: Tensor<2>, heads: usize, kv_heads: usize, scale: f32, window: Option<(usize, usize)>) -> Tensor<3> {
    assert!(crate::fused(&qkv), "qkv_attention: the fused kernel needs f32 tensors on the CPU (flex) device");
    let (window, sinks) = window.unwrap_or((usize::MAX, 0));
    let out = Dispatch::qkv_attention(qkv.into_dispatch(), cos.into_dispatch(), sin.into_dispatch(), heads, kv_heads, scale, window, sinks);
    Tensor::from_dispatch(out)
}
