//! Short causal depthwise convolution (H3, Mamba, Gated DeltaNet's "short conv") with its decode
//! tail.
//!
//! Per channel c, kernel K, no bias: `y_{t,c} = Σ_{j=0}^{K−1} w_{c,j} · x_{t−K+1+j, c}`, with the
//! K − 1 inputs before the sequence taken from the tail (zeros for a fresh sequence). The decode
//! state is the last K − 1 *inputs*, `[batch, K − 1, channels]`: without it `step` ≠ `forward`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::config::ConvInit;
use crate::linear::INIT_STD;

/// Kernel of the short convolutions (fla and NVlabs: 4).
pub const KERNEL: usize = 4;

/// Depthwise causal conv over the last axis of `[batch, time, channels]`.
#[derive(Module, Debug)]
pub struct ShortConv {
    /// `[channels, kernel]`; tap K − 1 multiplies the current input.
    pub weight: Param<Tensor<2>>,
}

impl ShortConv {
    pub fn new(channels: usize, init: ConvInit, device: &Device) -> Self {
        let dist = match init {
            // PyTorch's Conv1d default: kaiming-uniform with a = √5, i.e. U(±1/√fan_in), fan_in = K.
            ConvInit::Kaiming => {
                let bound = 1.0 / (KERNEL as f64).sqrt();
                Distribution::Uniform(-bound, bound)
            }
            ConvInit::Fla => Distribution::Normal(0.0, INIT_STD),
        };
        Self { weight: Param::from_tensor(Tensor::random([channels, KERNEL], dist, device)) }
    }

    /// An empty tail for `batch` sequences.
    pub fn empty_tail(&self, batch: usize, device: &Device) -> Tensor<3> {
        Tensor::zeros([batch, KERNEL - 1, self.weight.dims()[0]], device)
    }

    /// x `[b, t, c]` after `tail` `[b, K − 1, c]` → (y `[b, t, c]`, the new tail).
    pub fn forward(&self, x: Tensor<3>, tail: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let [_, t, c] = x.dims();
        // The tail in x's type (a fresh f32 tail meets a half-precision training forward).
        let padded = Tensor::cat(vec![tail.cast(x.dtype()), x], 1);
        let w = self.weight.val();
        let y = (0..KERNEL)
            .map(|j| padded.clone().narrow(1, j, t) * w.clone().narrow(1, j, 1).reshape([1, 1, c]))
            .reduce(|a, b| a + b)
            .expect("kernel ≥ 1");
        (y, padded.narrow(1, t, KERNEL - 1))
    }
}
