//! SiLU (swish), fused: one pass forward, one pass backward.
//!
//! `y = x·σ(x)`, `dy/dx = s·(1 + x·(1 − s))` with `s = σ(x)`. Composed from backend ops this is
//! ~4 passes forward (libm's `expf` per element) and ~6 backward, each allocating.

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

/// Fused SiLU and its backward. The default bodies are the composed reference.
#[backend_extension(Flex, Autodiff)]
pub trait SiluBackend: Backend {
    /// `x·σ(x)`, any shape.
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(x.clone(), Self::sigmoid(x))
    }

    /// `grad · σ(x)(1 + x(1 − σ(x)))`.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let s = Self::sigmoid(x.clone());
        let one_minus_s = Self::float_add_scalar(Self::float_neg(s.clone()), 1.0.into());
        let inner = Self::float_add_scalar(Self::float_mul(x, one_minus_s), 1.0.into());
        Self::float_mul(grad, Self::float_mul(s, inner))
    }
}

#[inline(always)]
fn silu_scalar(x: f32) -> f32 {
    x * sigmoid(x)
}

#[inline(always)]
fn silu_grad_scalar(x: f32, g: f32) -> f32 {
    let s = sigmoid(x);
    g * s * (1.0 + x * (1.0 - s))
}

impl SiluBackend for Flex {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = contiguous(x);
        from_vec(map1(slice(&x), silu_scalar), x.shape())
    }

    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, grad) = (contiguous(x), contiguous(grad));
        from_vec(map2(slice(&x), slice(&grad), silu_grad_scalar), x.shape())
    }
}

impl<B: SiluBackend, C: CheckpointStrategy> SiluBackend for Autodiff<B, C> {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Silu;

        impl<B: SiluBackend> Backward<B, 1> for Silu {
            type State = NodeId;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let input = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::silu_backward(input, grad));
            }
        }

        match Silu.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                let out = B::silu(x.primitive().clone());
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::silu(x.into_primitive())),
        }
    }
}

/// SiLU `x·σ(x)`, any shape: one fused pass (and one for the backward) on the CPU backend,
/// Burn's `silu` elsewhere.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if crate::fused(&x) {
        Tensor::from_dispatch(Dispatch::silu(x.into_dispatch()))
    } else {
        burn::tensor::activation::silu(x)
    }
}
