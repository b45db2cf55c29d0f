//! MAD's compression head (Poli et al. 2024; `../shared/MAD.md` §1.5): an encoder–bottleneck–
//! decoder. The layer stack encodes the sequence; the hidden state at the last position (the
//! compression token), `z ∈ R^d`, is the only path to the decoder, which rebuilds every position
//! t < T from `h_t = z + P[t]` alone:
//!
//! `logits_t = W_out · norm₂(GELU(W₂ · norm₁(GELU(W₁ · norm₀(z + P[t])))))`
//!
//! with P the fixed sinusoidal table of fairseq (first half `sin(t·f_i)`, second half
//! `cos(t·f_i)`, `f_i = exp(−i·ln 10⁴ / (d/2 − 1))`, i < d/2). norm₀ is the model's final norm.
//! Shapes: hidden `[b, T, d]` → logits `[b, T, vocab]`. Linear weights ~ N(0, 0.02²); the
//! reference's zero-initialised biases are left out (attnlab's projections are bias-free).

use attnlab_attn::linear::{apply, linear};
use burn::module::Module;
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};

#[derive(Module, Debug)]
pub struct Decoder {
    pub fc1: Linear,
    pub norm1: RmsNorm,
    pub fc2: Linear,
    pub norm2: RmsNorm,
    /// `d → vocab` (not tied to the embedding).
    pub out: Linear,
}

/// The fixed sinusoidal table `P`, `[t, d]` row-major (`d` even, ≥ 4).
pub fn sinusoids(t: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let step = (10_000f64).ln() / (half as f64 - 1.0);
    let mut table = vec![0f32; t * d];
    for pos in 0..t {
        for i in 0..half {
            let angle = pos as f64 * (-(i as f64) * step).exp();
            table[pos * d + i] = angle.sin() as f32;
            table[pos * d + half + i] = angle.cos() as f32;
        }
    }
    table
}

impl Decoder {
    pub fn new(d: usize, vocab: usize, device: &Device) -> Self {
        Self {
            fc1: linear(d, d, device),
            norm1: RmsNormConfig::new(d).init(device),
            fc2: linear(d, d, device),
            norm2: RmsNormConfig::new(d).init(device),
            out: linear(d, vocab, device),
        }
    }

    /// The bottleneck of `hidden` `[b, T, d]`: its last position, `[b, 1, d]`.
    pub fn bottleneck(hidden: Tensor<3>) -> Tensor<3> {
        let t = hidden.dims()[1];
        hidden.narrow(1, t - 1, 1)
    }

    /// Logits `[b, T, vocab]` from the bottleneck `z` `[b, 1, d]`; `norm0` is the model's final norm.
    pub fn forward(&self, z: Tensor<3>, t: usize, norm0: &RmsNorm) -> Tensor<3> {
        let d = z.dims()[2];
        let table = Tensor::<2>::from_data(TensorData::new(sinusoids(t, d), [t, d]), &z.device()).unsqueeze_dim::<3>(0);
        let h = attnlab_kernels::rms_norm(norm0, z + table);
        let h = attnlab_kernels::rms_norm(&self.norm1, gelu(apply(&self.fc1, h)));
        let h = attnlab_kernels::rms_norm(&self.norm2, gelu(apply(&self.fc2, h)));
        apply(&self.out, h)
    }
}
