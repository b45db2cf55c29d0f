//! RMSNorm over the last dim as one op with its own backward.
//!
//! `y = x · r · γ`, `r = 1/√(mean(x²) + ε)` per row (Zhang & Sennrich 2019; burn's `RmsNorm`).
//! Backward with `x̂ = x·r`, `g = dy ⊙ γ`: `dx = r · (g − x̂ · mean(g ⊙ x̂))`, `dγ = Σ_rows dy ⊙ x̂`.
//! Composed from backend ops this is ~6 passes forward and ~10 backward over `[rows, d]`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::RmsNorm;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::tensor::{contiguous, from_vec, slice};
use crate::vector_math::with_avx2;

/// Rows per parallel task.
const ROWS: usize = 64;

/// `(y, r)`: the normalised rows and each row's `1/rms`.
fn forward(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut y = vec![0.0; x.len()];
    let mut r = vec![0.0; x.len() / d];
    y.par_chunks_mut(ROWS * d).zip(r.par_chunks_mut(ROWS)).zip(x.par_chunks(ROWS * d)).for_each(|((y, r), x)| {
        with_avx2!(for ((y, r), x) in y.chunks_exact_mut(d).zip(r.iter_mut()).zip(x.chunks_exact(d)) {
            *r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
            let scale = *r;
            y.iter_mut().zip(x).zip(gamma).for_each(|((y, x), g)| *y = x * scale * g);
        })
    });
    (y, r)
}

/// `(dx, dγ)` from the saved x and `r`.
fn backward(x: &[f32], r: &[f32], gamma: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut dx = vec![0.0; x.len()];
    let dgamma = dx
        .par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d).zip(dy.par_chunks(ROWS * d)).zip(r.par_chunks(ROWS)))
        .map(|(dx, ((x, dy), r))| {
            let mut dgamma = vec![0.0f32; d];
            with_avx2!(for (((dx, x), dy), &r) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)).zip(r) {
                let dot: f32 = x.iter().zip(dy).zip(gamma).map(|((x, dy), g)| x * r * dy * g).sum();
                let mean = dot / d as f32;
                for c in 0..d {
                    let xhat = x[c] * r;
                    dx[c] = r * (dy[c] * gamma[c] - xhat * mean);
                    dgamma[c] += dy[c] * xhat;
                }
            });
            dgamma
        })
        .reduce(|| vec![0.0; d], |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        });
    (dx, dgamma)
}

/// The op as a backend extension: Flex runs the kernels, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait RmsNormBackend: Backend {
    /// x: `[..., d]`, gamma: `[d]`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
}

fn forward_flex(x: FlexTensor, gamma: FlexTensor, eps: f32) -> (FlexTensor, Vec<f32>) {
    let (x, gamma) = (contiguous(x), contiguous(gamma));
    let d = gamma.shape().num_elements();
    assert_eq!(x.shape().as_slice().last(), Some(&d), "rms_norm: x {:?} does not end in gamma's {d}", x.shape());
    let (y, r) = forward(slice(&x), slice(&gamma), eps);
    (from_vec(y, x.shape()), r)
}

impl RmsNormBackend for Flex {
    fn rms_norm(x: FlexTensor, gamma: FlexTensor, eps: f32) -> FlexTensor {
        forward_flex(x, gamma, eps).0
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// (x, γ) checkpoints and `r` per row.
    type State = ([NodeId; 2], Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let ([x_id, gamma_id], r) = ops.state;
        let x: FlexTensor = contiguous(checkpointer.retrieve_node_output(x_id));
        let gamma: FlexTensor = contiguous(checkpointer.retrieve_node_output(gamma_id));
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (dx, dgamma) = backward(slice(&x), &r, slice(&gamma), slice(&dy));
        let [x_node, gamma_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, from_vec(dx, x.shape()));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, from_vec(dgamma, gamma.shape()));
        }
    }
}

impl<C: CheckpointStrategy> RmsNormBackend for Autodiff<Flex, C> {
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        match RmsNormBackward.prepare::<C>([x.node(), gamma.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let ids = [prep.checkpoint(&x), prep.checkpoint(&gamma)];
                let (y, r) = forward_flex(x.primitive().clone(), gamma.primitive().clone(), eps);
                prep.finish((ids, r), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::rms_norm(x.into_primitive(), gamma.into_primitive(), eps)),
        }
    }
}

/// `norm.forward(x)` for burn's [`RmsNorm`]: one fused op (and backward) on the CPU backend.
/// In a half-precision forward (x or the gain not f32) the statistics are computed in f32 and
/// the result is in the gain's type: `(x / √(mean(x²) + ε)) · γ`, x cast to f32 first.
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    let gamma = norm.gamma.val();
    if crate::fused(&x) && gamma.dtype() == DType::F32 {
        let out = Dispatch::rms_norm(x.into_dispatch(), gamma.into_dispatch(), norm.epsilon as f32);
        Tensor::from_dispatch(out)
    } else if x.dtype() == DType::F32 && gamma.dtype() == DType::F32 {
        norm.forward(x)
    } else {
        let x = x.cast(DType::F32);
        let inv = (x.clone().square().mean_dim(D - 1) + norm.epsilon).sqrt().recip();
        (x * inv).cast(gamma.dtype()) * gamma.unsqueeze()
    }
}
