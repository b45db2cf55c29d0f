//! Short causal depthwise convolution followed by SiLU, as one op with its own backward.
//!
//! x `[b, t, c]`, w `[c, K]`: `z_{t,c} = Σ_j w_{c,j} x_{t−K+1+j, c}` (zeros before the sequence),
//! `y = z·σ(z)`. Backward (z recomputed from x and w): `dz = dy · σ(z)(1 + z(1 − σ(z)))`,
//! `dx_{s,c} = Σ_j w_{c,j} dz_{s+K−1−j, c}`, `dw_{c,j} = Σ_{b,t} x_{t−K+1+j, c} dz_{t,c}`.
//! Composed from backend ops (a concatenation, K slices, products and sums, then SiLU) this is
//! ~3K + 4 passes forward and twice that backward, each allocating.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::tensor::{contiguous, from_vec, slice};
use crate::vector_math::{sigmoid, with_avx2};

/// `[c, K]` → `[K, c]`, so that tap j is one contiguous row over the channels.
fn taps(w: &[f32], c: usize, kernel: usize) -> Vec<f32> {
    (0..kernel * c).map(|i| w[(i % c) * kernel + i / c]).collect()
}

/// `z` of one sequence `[t, c]` into `z`; `wt` is `[K, c]`.
#[inline(always)]
fn conv(x: &[f32], wt: &[f32], c: usize, kernel: usize, z: &mut [f32]) {
    let t_len = x.len() / c;
    z.iter_mut().for_each(|v| *v = 0.0);
    for t in 0..t_len {
        let out = &mut z[t * c..(t + 1) * c];
        for j in 0..kernel {
            let Some(src) = (t + j + 1).checked_sub(kernel) else { continue };
            let (xs, wj) = (&x[src * c..(src + 1) * c], &wt[j * c..(j + 1) * c]);
            out.iter_mut().zip(xs).zip(wj).for_each(|((o, x), w)| *o += w * x);
        }
    }
}

/// y for all sequences.
fn forward(x: &[f32], w: &[f32], t: usize, c: usize, kernel: usize) -> Vec<f32> {
    let w = &taps(w, c, kernel);
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(t * c).zip(x.par_chunks(t * c)).for_each(|(y, x)| {
        with_avx2!({
            conv(x, w, c, kernel, y);
            y.iter_mut().for_each(|z| *z *= sigmoid(*z));
        })
    });
    y
}

/// (dx, dw).
fn backward(x: &[f32], w: &[f32], dy: &[f32], t_len: usize, c: usize, kernel: usize) -> (Vec<f32>, Vec<f32>) {
    let w = &taps(w, c, kernel);
    let mut dx = vec![0.0f32; x.len()];
    let dw = dx
        .par_chunks_mut(t_len * c)
        .zip(x.par_chunks(t_len * c).zip(dy.par_chunks(t_len * c)))
        .map(|(dx, (x, dy))| {
            let mut dw = vec![0.0f32; c * kernel];
            with_avx2!({
                let mut dz = vec![0.0f32; x.len()];
                conv(x, w, c, kernel, &mut dz);
                dz.iter_mut().zip(dy).for_each(|(z, g)| {
                    let s = sigmoid(*z);
                    *z = g * s * (1.0 + *z * (1.0 - s));
                });
                for t in 0..t_len {
                    let g = &dz[t * c..(t + 1) * c];
                    for j in 0..kernel {
                        let Some(src) = (t + j + 1).checked_sub(kernel) else { continue };
                        let (xs, dxs) = (&x[src * c..(src + 1) * c], &mut dx[src * c..(src + 1) * c]);
                        dxs.iter_mut().zip(&w[j * c..(j + 1) * c]).zip(g).for_each(|((d, w), g)| *d += w * g);
                        dw[j * c..(j + 1) * c].iter_mut().zip(xs).zip(g).for_each(|((d, x), g)| *d += x * g);
                    }
                }
            });
            dw
        })
        .reduce(|| vec![0.0; c * kernel], |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        });
    // [K, c] → [c, K].
    let dw = (0..c * kernel).map(|i| dw[(i % kernel) * c + i / kernel]).collect();
    (dx, dw)
}

/// The op as a backend extension: Flex runs the kernels, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait ShortConvBackend: Backend {
    /// x: `[b, t, c]`, w: `[c, K]` → `silu(conv(x))` `[b, t, c]`.
    fn short_conv_silu(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn sizes(x: &FlexTensor, w: &FlexTensor) -> (usize, usize, usize) {
    let [_, t, c] = x.shape().as_slice().try_into().expect("x is [b, t, c]");
    let [wc, kernel] = w.shape().as_slice().try_into().expect("w is [c, K]");
    assert_eq!(wc, c, "short_conv_silu: w has {wc} channels, x {c}");
    (t, c, kernel)
}

impl ShortConvBackend for Flex {
    fn short_conv_silu(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let (x, w) = (contiguous(x), contiguous(w));
        let (t, c, kernel) = sizes(&x, &w);
        from_vec(forward(slice(&x), slice(&w), t, c, kernel), x.shape())
    }
}

#[derive(Debug)]
struct ShortConvBackward;

impl Backward<Flex, 2> for ShortConvBackward {
    type State = [NodeId; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_id, w_id] = ops.state;
        let x: FlexTensor = contiguous(checkpointer.retrieve_node_output(x_id));
        let w: FlexTensor = contiguous(checkpointer.retrieve_node_output(w_id));
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (t, c, kernel) = sizes(&x, &w);
        let (dx, dw) = backward(slice(&x), slice(&w), slice(&dy), t, c, kernel);
        let [x_node, w_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, from_vec(dx, x.shape()));
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, from_vec(dw, w.shape()));
        }
    }
}

impl<C: CheckpointStrategy> ShortConvBackend for Autodiff<Flex, C> {
    fn short_conv_silu(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match ShortConvBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let ids = [prep.checkpoint(&x), prep.checkpoint(&w)];
                let y = Flex::short_conv_silu(x.primitive().clone(), w.primitive().clone());
                prep.finish(ids, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::short_conv_silu(x.into_primitive(), w.into_primitive())),
        }
    }
}

/// `silu(conv(x))` from a zero history on the CPU backend (call only where [`crate::fused`]
/// holds). x: `[b, t, c]`, w: `[c, K]`, tap K − 1 on the current input.
pub fn short_conv_silu(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(Dispatch::short_conv_silu(x.into_dispatch(), w.into_dispatch()))
}
