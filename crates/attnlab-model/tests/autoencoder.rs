//! MAD's compression head (`model.head = "autoencoder"`) against its definition (MAD.md §1.5):
//! the decoder reads only the last position's hidden state; its logits at position t equal a
//! plain f64 evaluation of `W_out·n₂(GELU(W₂·n₁(GELU(W₁·n₀(z + P[t])))))` with P written out
//! from fairseq's formula; gradients reach every layer of the encoder.
//!
//! Planted, and seen to fail: the decoder reading the mean of the hidden states instead of the
//! last one (`only_the_bottleneck`); sine and cosine halves swapped in P, and the first norm
//! left out (`hand_formula`); the bottleneck detached (`gradients`).

use attnlab_attn::burn::module::{Module, ModuleVisitor, Param};
use attnlab_attn::burn::tensor::{Device, Distribution, Gradients, Int, Tensor, TensorData};
use attnlab_attn::AttentionConfig;
use attnlab_model::{Gpt, Head, MlpKind, ModelConfig};

const D: usize = 16;
const VOCAB: usize = 11;

fn model(device: &Device) -> Gpt {
    let config = ModelConfig { vocab: VOCAB, d_model: D, layers: 2, heads: 2, max_seq: 12, mlp: MlpKind::Swiglu, head: Head::Autoencoder, attention: AttentionConfig::Mha {}, ..ModelConfig::default() };
    config.validate().unwrap();
    device.seed(5);
    Gpt::new(&config, device)
}

fn to_vec<const N: usize>(t: Tensor<N>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn the_decoder_reads_only_the_bottleneck() {
    let dev = Device::flex();
    let m = model(&dev);
    let (b, t) = (2, 9);
    let h: Tensor<3> = Tensor::random([b, t, D], Distribution::Normal(0.0, 2.0), &dev);
    let base = to_vec(m.logits(h.clone()));
    let noise: Tensor<3> = Tensor::random([b, t - 1, D], Distribution::Normal(0.0, 3.0), &dev);
    let earlier = h.clone().slice_assign([0..b, 0..t - 1, 0..D], h.clone().narrow(1, 0, t - 1) + noise);
    assert_eq!(to_vec(m.logits(earlier)), base, "positions before the last changed a logit");
    let last = h.clone().slice_assign([0..b, t - 1..t, 0..D], h.narrow(1, t - 1, 1) * 0.5);
    let moved = to_vec(m.logits(last)).iter().zip(&base).map(|(a, c)| (a - c).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the last position must reach every logit (max change {moved})");
}

fn erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0 - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t + 0.254_829_592) * t * (-x * x).exp();
    s * y
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn rms(x: &[f64], gamma: &[f32]) -> Vec<f64> {
    let r = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + 1e-5).sqrt();
    x.iter().zip(gamma).map(|(v, &g)| v / r * g as f64).collect()
}

/// `x · W` with W `[d_in, d_out]` row-major.
fn matvec(x: &[f64], w: &[f32], d_out: usize) -> Vec<f64> {
    (0..d_out).map(|j| x.iter().enumerate().map(|(i, v)| v * w[i * d_out + j] as f64).sum()).collect()
}

#[test]
fn logits_at_t_follow_the_hand_formula_from_the_bottleneck_and_t() {
    let dev = Device::flex();
    let mut m = model(&dev);
    // Gains away from 1, so a norm applied at the wrong place shows.
    let decoder = m.decoder.as_mut().unwrap();
    decoder.norm1.gamma = Param::from_tensor(Tensor::random([D], Distribution::Uniform(0.5, 1.5), &dev));
    decoder.norm2.gamma = Param::from_tensor(Tensor::random([D], Distribution::Uniform(0.5, 1.5), &dev));
    m.norm.gamma = Param::from_tensor(Tensor::random([D], Distribution::Uniform(0.5, 1.5), &dev));
    let t = 7;
    let h: Tensor<3> = Tensor::random([1, t, D], Distribution::Normal(0.0, 1.0), &dev);
    let z: Vec<f64> = to_vec(h.clone().narrow(1, t - 1, 1)).iter().map(|&v| v as f64).collect();
    let got = to_vec(m.logits(h));
    let dec = m.decoder.as_ref().unwrap();
    let (w1, w2, wo) = (to_vec(dec.fc1.weight.val()), to_vec(dec.fc2.weight.val()), to_vec(dec.out.weight.val()));
    let (g0, g1, g2) = (to_vec(m.norm.gamma.val()), to_vec(dec.norm1.gamma.val()), to_vec(dec.norm2.gamma.val()));
    let half = D / 2;
    let mut worst = 0.0f64;
    for pos in 0..t {
        let p: Vec<f64> = (0..D)
            .map(|c| {
                let i = c % half;
                let freq = (-(i as f64) * (10_000f64).ln() / (half as f64 - 1.0)).exp();
                if c < half { (pos as f64 * freq).sin() } else { (pos as f64 * freq).cos() }
            })
            .collect();
        let x: Vec<f64> = z.iter().zip(&p).map(|(a, b)| a + b).collect();
        let x = rms(&x, &g0);
        let x = rms(&matvec(&x, &w1, D).into_iter().map(gelu).collect::<Vec<_>>(), &g1);
        let x = rms(&matvec(&x, &w2, D).into_iter().map(gelu).collect::<Vec<_>>(), &g2);
        let want = matvec(&x, &wo, VOCAB);
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (j, w) in want.iter().enumerate() {
            worst = worst.max((got[pos * VOCAB + j] as f64 - w).abs() / scale);
        }
    }
    assert!(worst < 1e-4, "max relative error {worst}");
}

struct DeadParams<'a> {
    grads: &'a Gradients,
    dead: Vec<String>,
    total: usize,
}

impl ModuleVisitor for DeadParams<'_> {
    fn visit_float<const N: usize>(&mut self, param: &Param<Tensor<N>>) {
        self.total += 1;
        let ok = param.val().grad(self.grads).map(|g| to_vec(g.abs().max())[0] > 0.0).unwrap_or(false);
        if !ok {
            self.dead.push(format!("{:?}", param.id));
        }
    }
}

#[test]
fn gradients_reach_every_encoder_layer() {
    let dev = Device::flex().autodiff();
    let m = model(&dev);
    let ids: Vec<i64> = (0..2 * 10).map(|i| ((i * 7 + 3) % (VOCAB - 1)) as i64).collect();
    let logits = m.forward(Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 10]), &dev));
    assert_eq!(logits.dims(), [2, 10, VOCAB]);
    let grads = logits.powi_scalar(2).mean().backward();
    let mut v = DeadParams { grads: &grads, dead: vec![], total: 0 };
    m.visit(&mut v);
    // Embedding; per block two norms, q/k/v and output, MLP up and down; final norm; decoder 5.
    assert_eq!(v.total, 1 + 2 * 6 + 1 + 5);
    assert!(v.dead.is_empty(), "{} of {} parameters got no gradient: {:?}", v.dead.len(), v.total, v.dead);
}
