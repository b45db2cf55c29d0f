//! Rotary position embedding ("rotate-half" layout) as one op with its own backward.
//!
//! x: `[batch, heads, seq, d]`, tables cos/sin: `[positions, d/2]`, row τ at position `start + τ`:
//! `y = [x₁ cos − x₂ sin, x₂ cos + x₁ sin]`. The rotation is orthogonal, so the backward is the
//! rotation by −θ: `dx = [dy₁ cos + dy₂ sin, dy₂ cos − dy₁ sin]`.
//! Composed from backend ops this is ~9 passes forward (narrows, products, a concatenation).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::tensor::{contiguous, from_vec, slice};
use crate::vector_math::with_avx2;

/// Vectors per parallel task.
const ROWS: usize = 256;

/// `y = x` rotated by `sign·θ` (tables `c`, `s` hold cos θ, sin θ of each of the d/2 pairs).
#[inline(always)]
pub(crate) fn rotate_vector(y: &mut [f32], x: &[f32], c: &[f32], s: &[f32], sign: f32) {
    let half = c.len();
    let (x1, x2) = x.split_at(half);
    let (y1, y2) = y.split_at_mut(half);
    for j in 0..half {
        let sn = sign * s[j];
        y1[j] = x1[j] * c[j] - x2[j] * sn;
        y2[j] = x2[j] * c[j] + x1[j] * sn;
    }
}

/// Rotates every d-vector of `x` (row r at position `start + r mod seq`) by `sign·θ`.
fn rotate(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, start: usize, sign: f32) -> FlexTensor {
    let shape = x.shape();
    let dims = shape.as_slice();
    assert_eq!(dims.len(), 4, "rope: x must be [batch, heads, seq, d], got {dims:?}");
    let (seq, d) = (dims[2], dims[3]);
    let half = d / 2;
    assert!(d % 2 == 0 && cos.shape().as_slice() == [cos.shape()[0], half], "rope: tables {:?} do not fit d = {d}", cos.shape());
    assert!(start + seq <= cos.shape()[0], "rope: positions up to {} exceed the table ({})", start + seq, cos.shape()[0]);
    let (x, cos, sin) = (contiguous(x), contiguous(cos), contiguous(sin));
    let (xs, cs, ss) = (slice(&x), slice(&cos), slice(&sin));
    let mut y = vec![0.0; xs.len()];
    y.par_chunks_mut(ROWS * d).zip(xs.par_chunks(ROWS * d)).enumerate().for_each(|(task, (y, x))| {
        with_avx2!(for (i, (y, x)) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
            let pos = start + (task * ROWS + i) % seq;
            rotate_vector(y, x, &cs[pos * half..(pos + 1) * half], &ss[pos * half..(pos + 1) * half], sign);
        })
    });
    from_vec(y, shape)
}

/// The op as a backend extension: Flex runs the kernel, autodiff over Flex adds the backward.
#[backend_extension(Flex, Autodiff)]
pub trait RopeBackend: Backend {
    /// Rotates x `[batch, heads, seq, d]` as positions `start..start + seq`; cos/sin are constants.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, start: usize) -> FloatTensor<Self>;
}

impl RopeBackend for Flex {
    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, start: usize) -> FlexTensor {
        rotate(x, cos, sin, start, 1.0)
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, start) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| rotate(dy, cos, sin, start, -1.0));
    }
}

impl<C: CheckpointStrategy> RopeBackend for Autodiff<Flex, C> {
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, start: usize) -> FloatTensor<Self> {
        // The tables are constants: only x is a parent.
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RopeBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = rotate(x.primitive().clone(), cos.clone(), sin.clone(), start, 1.0);
                prep.finish((cos, sin, start), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(rotate(x.into_primitive(), cos, sin, start, 1.0)),
        }
    }
}

/// Rotary embedding of x `[batch, heads, seq, d]` at positions `start..start + seq` with tables
/// cos/sin `[positions, d/2]`. Only for tensors where [`crate::fused`] is true.
pub fn rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>, start: usize) -> Tensor<4> {
    assert!(crate::fused(&x), "rope: the fused kernel needs f32 tensors on the CPU (flex) device");
    Tensor::from_dispatch(Dispatch::rope(x.into_dispatch(), cos.into_dispatch(), sin.into_dispatch(), start))
}
