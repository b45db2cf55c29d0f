//! Multi-Token Attention's key–query convolution over attention maps, as one op with its own
//! backward.
//!
//! x `[b, h, r, s]` (the last r of s positions' rows of a map), θ `[h, 1, c_q, c_k]` (c_k odd),
//! p = (c_k − 1)/2: `y_{i,j} = Σ_{a,b} θ_{a,b} x_{i−(c_q−1)+a, j−p+b}`, entries outside the map
//! read as 0 (the query axis padded on the past side only). Backward:
//! `dx_{i′,j′} = Σ_{a,b} θ_{a,b} dy_{i′+(c_q−1)−a, j′+p−b}`, `dθ_{a,b} = Σ_{n,i,j} dy_{i,j}
//! x_{i−(c_q−1)+a, j−p+b}`. Burn's CPU backend runs the forward on a depthwise path but its
//! generic weight gradient is several times slower than the whole attention layer (measured on
//! the baby config: 227 ms/step for MTA vs 34 for MHA).

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
use crate::vector_math::with_avx2;

/// Shape of one call: rows r, keys s, kernel c_q × c_k, heads h.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    r: usize,
    s: usize,
    cq: usize,
    ck: usize,
}

impl Dims {
    /// For tap (a, b): output rows i reading source row i + a − (c_q − 1) (those ≥ 0), and the
    /// output key range reading source keys j + b − p inside 0..s, with that offset.
    #[inline(always)]
    fn tap(&self, a: usize, b: usize) -> (usize, usize, usize, isize) {
        let first_row = (self.cq - 1).saturating_sub(a);
        let shift = b as isize - ((self.ck - 1) / 2) as isize;
        let j0 = (-shift).max(0) as usize;
        let j1 = (self.s as isize - shift).min(self.s as isize).max(0) as usize;
        (first_row, j0, j1, shift)
    }
}

/// y of one plane `[r, s]`.
#[inline(always)]
fn plane_forward(x: &[f32], w: &[f32], d: Dims, y: &mut [f32]) {
    y.iter_mut().for_each(|v| *v = 0.0);
    for a in 0..d.cq {
        for b in 0..d.ck {
            let theta = w[a * d.ck + b];
            let (first_row, j0, j1, shift) = d.tap(a, b);
            if theta == 0.0 || j0 >= j1 {
                continue;
            }
            for i in first_row..d.r {
                let src = i + a + 1 - d.cq;
                let xs = &x[src * d.s + (j0 as isize + shift) as usize..src * d.s + (j1 as isize + shift) as usize];
                y[i * d.s + j0..i * d.s + j1].iter_mut().zip(xs).for_each(|(o, x)| *o += theta * x);
            }
        }
    }
}

/// (dx, dθ) of one plane.
#[inline(always)]
fn plane_backward(x: &[f32], w: &[f32], dy: &[f32], d: Dims, dx: &mut [f32]) -> Vec<f32> {
    let mut dw = vec![0.0f32; d.cq * d.ck];
    dx.iter_mut().for_each(|v| *v = 0.0);
    for a in 0..d.cq {
        for b in 0..d.ck {
            let theta = w[a * d.ck + b];
            let (first_row, j0, j1, shift) = d.tap(a, b);
            if j0 >= j1 {
                continue;
            }
            let mut acc = 0.0f32;
            for i in first_row..d.r {
                let src = i + a + 1 - d.cq;
                let range = src * d.s + (j0 as isize + shift) as usize..src * d.s + (j1 as isize + shift) as usize;
                let g = &dy[i * d.s + j0..i * d.s + j1];
                acc += x[range.clone()].iter().zip(g).map(|(x, g)| x * g).sum::<f32>();
                dx[range].iter_mut().zip(g).for_each(|(o, g)| *o += theta * g);
            }
            dw[a * d.ck + b] = acc;
        }
    }
    dw
}

fn forward(x: &[f32], w: &[f32], d: Dims) -> Vec<f32> {
    let plane = d.r * d.s;
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(n, (y, x))| {
        let head = n % d.h;
        with_avx2!(plane_forward(x, &w[head * d.cq * d.ck..(head + 1) * d.cq * d.ck], d, y))
    });
    y
}

fn backward(x: &[f32], w: &[f32], dy: &[f32], d: Dims) -> (Vec<f32>, Vec<f32>) {
    let (plane, taps) = (d.r * d.s, d.cq * d.ck);
    let mut dx = vec![0.0f32; x.len()];
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane).zip(dy.par_chunks(plane)))
        .enumerate()
        .map(|(n, (dx, (x, dy)))| {
            let head = n % d.h;
            with_avx2!(plane_backward(x, &w[head * taps..(head + 1) * taps], dy, d, dx))
        })
        .collect();
    let mut dw = vec![0.0f32; d.h * taps];
    for (n, p) in partial.iter().enumerate() {
        let head = n % d.h;
        dw[head * taps..(head + 1) * taps].iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (dx, dw)
}

/// The op as a backend extension: Flex runs the kernels, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait MapConvBackend: Backend {
    /// x: `[b, h, r, s]`, w: `[h, 1, c_q, c_k]` → `[b, h, r, s]`.
    fn map_conv(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn dims(x: &FlexTensor, w: &FlexTensor) -> Dims {
    let [_, h, r, s] = x.shape().as_slice().try_into().expect("x is [b, h, r, s]");
    let [wh, one, cq, ck] = w.shape().as_slice().try_into().expect("w is [h, 1, c_q, c_k]");
    assert!(wh == h && one == 1 && ck % 2 == 1, "map_conv: kernel {:?} for {h} heads (c_k must be odd)", w.shape());
    Dims { h, r, s, cq, ck }
}

impl MapConvBackend for Flex {
    fn map_conv(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let (x, w) = (contiguous(x), contiguous(w));
        let d = dims(&x, &w);
        from_vec(forward(slice(&x), slice(&w), d), x.shape())
    }
}

#[derive(Debug)]
struct MapConvBackward;

impl Backward<Flex, 2> for MapConvBackward {
    type State = [NodeId; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_id, w_id] = ops.state;
        let x: FlexTensor = contiguous(checkpointer.retrieve_node_output(x_id));
        let w: FlexTensor = contiguous(checkpointer.retrieve_node_output(w_id));
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let d = dims(&x, &w);
        let (dx, dw) = backward(slice(&x), slice(&w), slice(&dy), d);
        let [x_node, w_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, from_vec(dx, x.shape()));
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, from_vec(dw, w.shape()));
        }
    }
}

impl<C: CheckpointStrategy> MapConvBackend for Autodiff<Flex, C> {
    fn map_conv(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match MapConvBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let ids = [prep.checkpoint(&x), prep.checkpoint(&w)];
                let y = Flex::map_conv(x.primitive().clone(), w.primitive().clone());
                prep.finish(ids, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::map_conv(x.into_primitive(), w.into_primitive())),
        }
    }
}

/// The key–query convolution of maps x `[b, h, r, s]` with kernels w `[h, 1, c_q, c_k]` on the
/// CPU backend (call only where [`crate::fused`] holds).
pub fn map_conv(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::map_conv(x.into_dispatch(), w.into_dispatch()))
}
