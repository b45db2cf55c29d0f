//! Decay-gate parametrisations of the delta-rule kinds (Mamba-2's, as Gated DeltaNet and KDA use).
//!
//! `g = −e^{A_log} · softplus(raw + dt_bias) ≤ 0`, α = e^g, with `A ~ U(lo, hi)`, `A_log = ln A`
//! and `dt` log-uniform in [1e-3, 0.1] (floor 1e-4), `dt_bias = softplus⁻¹(dt) = dt + ln(1 − e^{−dt})`.
//! The bounded ("safe") gate of fla's KDA: `g = lb · σ(e^{A_log} (raw + dt_bias))` ∈ (lb, 0).
//! Both parameters are 1-D, so `train.decay = "matrices"` leaves them undecayed (as fla, NVlabs).

use burn::module::Param;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Distribution, Tensor};

/// `ln A` for `n` values `A ~ U(lo, hi)` (floored at 1e-4 so that ln stays finite).
pub fn a_log(n: usize, lo: f64, hi: f64, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::random([n], Distribution::Uniform(lo, hi), device).clamp_min(1e-4).log())
}

/// `softplus⁻¹(dt)` for `n` values of dt log-uniform in [1e-3, 0.1], floored at 1e-4.
pub fn dt_bias(n: usize, device: &Device) -> Param<Tensor<1>> {
    let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
    let dt = Tensor::<1>::random([n], Distribution::Uniform(lo, hi), device).exp().clamp_min(1e-4);
    Param::from_tensor(dt.clone() + (dt.neg().exp().neg() + 1.0).log())
}

/// `max(x, 0) + ln(1 + e^{−|x|})`: finite, with a finite gradient, for every x.
pub fn softplus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    relu(x.clone()) + x.abs().neg().exp().log1p()
}

/// `−e^{A_log} · softplus(raw + dt_bias)`; `a_log` and `dt_bias` broadcast against `raw`.
pub fn log_decay<const D: usize>(raw: Tensor<D>, a_log: Tensor<D>, dt_bias: Tensor<D>) -> Tensor<D> {
    softplus(raw + dt_bias) * a_log.exp().neg()
}

/// fla's bounded gate `lb · σ(e^{A_log} (raw + dt_bias))`.
pub fn bounded_log_decay<const D: usize>(raw: Tensor<D>, a_log: Tensor<D>, dt_bias: Tensor<D>, lower_bound: f32) -> Tensor<D> {
    sigmoid((raw + dt_bias) * a_log.exp()) * lower_bound
}
