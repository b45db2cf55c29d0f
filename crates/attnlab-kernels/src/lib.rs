//! Fused kernels for the CPU backend (burn-flex), as Burn backend extensions.
//!
//! Burn's CPU backend runs each tensor op as its own pass over memory with a fresh output
//! allocation, and evaluates transcendental functions with scalar libm calls. For the small
//! models attnlab trains on a CPU that overhead is a large part of a step. Each op here is one
//! extension trait (`#[backend_extension(Flex, Autodiff)]`) with
//! - a Flex implementation: one vectorised, multi-threaded pass (gemm for the products),
//! - an `Autodiff<Flex>` implementation with its own backward.
//!
//! `linear`, `rms_norm`, `gelu_tanh` and `silu` use the fused op where [`fused`] says so (Flex device,
//! f32) and otherwise run the same computation composed from Burn's ops (GELU's trait carries
//! it as default bodies). `causal_attention`, `qkv_attention`, `rope`, `delta_rule`, `short_conv_silu` and `map_conv` require the Flex
//! device; their callers in attnlab-attn keep the composed path for every other device. Results
//! never depend on which path ran beyond float rounding; each op's tests check it against an
//! independent reference.

pub mod causal_attention;
pub mod delta_rule;
pub mod gelu;
#[cfg(feature = "wgpu")]
pub mod gpu_attention;
pub mod linear;
pub mod map_conv;
pub mod matmul;
pub mod qkv_attention;
pub mod rms_norm;
pub mod rope;
pub mod short_conv;
pub mod silu;
mod tensor;
pub mod vector_math;

pub use causal_attention::causal_attention;
pub use delta_rule::{delta_rule, RuleOptions};
pub use gelu::gelu_tanh;
#[cfg(feature = "wgpu")]
pub use gpu_attention::{gpu_causal_attention, gpu_fused};
pub use linear::linear;
pub use map_conv::map_conv;
pub use qkv_attention::qkv_attention;
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use short_conv::short_conv_silu;
pub use silu::silu;

use burn::tensor::{DType, Device, Tensor};

/// Whether `x` takes the fused CPU kernels: f32 data on the burn-flex device, unless the
/// environment sets `ATTNLAB_FUSED=0` (to measure or debug against the composed ops).
pub fn fused<const D: usize>(x: &Tensor<D>) -> bool {
    fusion_enabled() && x.dtype() == DType::F32 && x.device() == Device::flex()
}

/// False when the environment sets `ATTNLAB_FUSED=0`: every fused op (CPU and GPU) then gives
/// way to Burn's composed ops.
pub fn fusion_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("ATTNLAB_FUSED").map_or(true, |v| v != "0"))
}

/// Without the `wgpu` feature there is no GPU device, so never the fused GPU attention.
#[cfg(not(feature = "wgpu"))]
pub fn gpu_fused<const D: usize>(_x: &Tensor<D>) -> bool {
    false
}

/// Never called without the `wgpu` feature ([`gpu_fused`] is false there).
#[cfg(not(feature = "wgpu"))]
pub fn gpu_causal_attention(_q: Tensor<4>, _k: Tensor<4>, _v: Tensor<4>, _t: usize, _offset: usize, _scale: f32, _window: Option<(usize, usize)>) -> Tensor<4> {
    unreachable!("gpu_causal_attention without the wgpu feature")
}
