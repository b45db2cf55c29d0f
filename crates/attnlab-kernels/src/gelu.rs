//! GELU with the tanh approximation (GPT-2), fused: one pass forward, one pass backward.
//!
//! `y = x·σ(2z)`, `z = c·(x + a·x³)`, `c = √(2/π)`, `a = 0.044715` (`0.5·(1 + tanh z) = σ(2z)`).
//! `dy/dx = s + 2c·x·s·(1 − s)·(1 + 3a·x²)` with `s = σ(2z)`.
//! Composed from backend ops this is ~7 passes forward and ~12 backward, each allocating.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::Tensor;

use crate::tensor::{contiguous, from_vec, slice};
use crate::vector_math::{map1, map2, sigmoid};

const C: f32 = 0.797_884_6; // √(2/π)
const A: f32 = 0.044_715;

/// Fused tanh-GELU and its backward. The default bodies are the composed reference.
#[backend_extension(Flex, Autodiff)]
pub trait GeluBackend: Backend {
    /// `x·σ(2c(x + a x³))`, any shape.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x2 = Self::float_mul(x.clone(), x.clone());
        let inner = Self::float_add_scalar(Self::float_mul_scalar(x2, A.into()), 1.0.into());
        let two_z = Self::float_mul_scalar(Self::float_mul(x.clone(), inner), (2.0 * C).into());
        Self::float_mul(x, Self::sigmoid(two_z))
    }

    /// `grad · dy/dx` at `x`.
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let x2 = Self::float_mul(x.clone(), x.clone());
        let inner = Self::float_add_scalar(Self::float_mul_scalar(x2.clone(), A.into()), 1.0.into());
        let two_z = Self::float_mul_scalar(Self::float_mul(x.clone(), inner), (2.0 * C).into());
        let s = Self::sigmoid(two_z);
        let one_minus_s = Self::float_add_scalar(Self::float_neg(s.clone()), 1.0.into());
        let dz = Self::float_add_scalar(Self::float_mul_scalar(x2, (3.0 * A).into()), 1.0.into());
        let tail = Self::float_mul(Self::float_mul(s.clone(), one_minus_s), Self::float_mul(x, dz));
        let dy_dx = Self::float_add(s, Self::float_mul_scalar(tail, (2.0 * C).into()));
        Self::float_mul(grad, dy_dx)
    }
}

#[inline(always)]
fn gelu_scalar(x: f32) -> f32 {
    x * sigmoid(2.0 * C * x * (1.0 + A * x * x))
}

#[inline(always)]
fn gelu_grad_scalar(x: f32, g: f32) -> f32 {
    let x2 = x * x;
    let s = sigmoid(2.0 * C * x * (1.0 + A * x2));
    g * (s + 2.0 * C * x * s * (1.0 - s) * (1.0 + 3.0 * A * x2))
}

impl GeluBackend for Flex {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = contiguous(x);
        from_vec(map1(slice(&x), gelu_scalar), x.shape())
    }

    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, grad) = (contiguous(x), contiguous(grad));
        from_vec(map2(slice(&x), slice(&grad), gelu_grad_scalar), x.shape())
    }
}

impl<B: GeluBackend, C: CheckpointStrategy> GeluBackend for Autodiff<B, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluTanh;

        impl<B: GeluBackend> Backward<B, 1> for GeluTanh {
            type State = NodeId;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let input = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::gelu_tanh_backward(input, grad));
            }
        }

        match GeluTanh.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                let out = B::gelu_tanh(x.primitive().clone());
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_tanh(x.into_primitive())),
        }
    }
}

/// GELU (tanh approximation), `y = x·σ(2·√(2/π)·(x + 0.044715·x³))`, any shape. One fused pass
/// (and one for the backward) on the CPU backend, composed ops elsewhere.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if crate::fused(&x) {
        Tensor::from_dispatch(Dispatch::gelu_tanh(x.into_dispatch()))
    } else {
        let two_z = (x.clone() * x.clone() * A + 1.0) * x.clone() * (2.0 * C);
        x * burn::tensor::activation::sigmoid(two_z)
    }
}
