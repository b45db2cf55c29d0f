//! Moving between Flex tensors and the plain `f32` slices the kernels work on.

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape};

/// `x` with a contiguous, zero-offset layout (a no-op when it already has one).
pub(crate) fn contiguous(x: FlexTensor) -> FlexTensor {
    if x.as_slice::<f32>().is_some() {
        x
    } else {
        x.to_contiguous()
    }
}

/// The elements of a contiguous f32 tensor.
pub(crate) fn slice(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// A contiguous f32 tensor of `shape` holding `data` (no copy).
pub(crate) fn from_vec(data: Vec<f32>, shape: Shape) -> FlexTensor {
    assert_eq!(data.len(), shape.num_elements(), "from_vec: {} values for shape {shape:?}", data.len());
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), DType::F32)
}

