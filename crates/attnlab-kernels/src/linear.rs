//! Bias-free linear layer `Y = X W` as one op with its own backward (`dX = dY Wᵀ`, `dW = Xᵀ dY`).
//!
//! x: `[..., d_in]` (leading dims flattened into rows), w: `[d_in, d_out]` → `[..., d_out]`.
//! The same products burn's `linear` runs, minus what its CPU backend adds around each one
//! (a zero-filled output buffer copied once more into an aligned one).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor};

use crate::matmul::{product, View};
use crate::tensor::{contiguous, from_vec, slice};

/// (rows, d_in, d_out) of `x · w`, checked.
fn dims(x: &Shape, w: &Shape) -> (usize, usize, usize) {
    let (xs, ws) = (x.as_slice(), w.as_slice());
    assert!(ws.len() == 2 && !xs.is_empty() && xs[xs.len() - 1] == ws[0], "linear: x {xs:?} · w {ws:?} do not match");
    (x.num_elements() / ws[0], ws[0], ws[1])
}

fn out_shape(x: &Shape, d_out: usize) -> Shape {
    let mut shape = x.clone();
    let last = shape.num_dims() - 1;
    shape[last] = d_out;
    shape
}

fn forward(x: FlexTensor, w: FlexTensor) -> FlexTensor {
    let (rows, d_in, d_out) = dims(&x.shape(), &w.shape());
    let (x, w) = (contiguous(x), contiguous(w));
    let y = product(rows, d_out, d_in, View::rows(slice(&x), d_in), View::rows(slice(&w), d_out));
    from_vec(y, out_shape(&x.shape(), d_out))
}

/// The op as a backend extension: Flex runs the products, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait LinearBackend: Backend {
    /// `x · w` over the last dim of x.
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl LinearBackend for Flex {
    fn linear(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        forward(x, w)
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = [NodeId; 2];

    fn backward(self, ops: Ops<[NodeId; 2], 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        let x: FlexTensor = contiguous(checkpointer.retrieve_node_output(ops.state[0]));
        let w: FlexTensor = contiguous(checkpointer.retrieve_node_output(ops.state[1]));
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (rows, d_in, d_out) = dims(&x.shape(), &w.shape());
        if let Some(node) = x_node {
            let dx = product(rows, d_in, d_out, View::rows(slice(&dy), d_out), View::transposed(slice(&w), d_out));
            grads.register::<Flex>(node.id, from_vec(dx, x.shape()));
        }
        if let Some(node) = w_node {
            let dw = product(d_in, d_out, rows, View::transposed(slice(&x), d_in), View::rows(slice(&dy), d_out));
            grads.register::<Flex>(node.id, from_vec(dw, w.shape()));
        }
    }
}

impl<C: CheckpointStrategy> LinearBackend for Autodiff<Flex, C> {
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match LinearBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = [prep.checkpoint(&x), prep.checkpoint(&w)];
                let y = forward(x.primitive().clone(), w.primitive().clone());
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive(), w.into_primitive())),
        }
    }
}

/// Bias-free `x · w`, x: `[..., d_in]`, w: `[d_in, d_out]` → `[..., d_out]`: the fused op on the
/// CPU backend, burn's `linear` elsewhere.
pub fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    if crate::fused(&x) {
        Tensor::from_dispatch(Dispatch::linear(x.into_dispatch(), w.into_dispatch()))
    } else {
        burn::tensor::module::linear(x, w, None)
    }
}
