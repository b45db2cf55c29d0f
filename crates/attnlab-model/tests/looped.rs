//! Looped depth (`model.loops`, Ouro without its exit gate): the loop plumbing against the
//! stack composed by hand, decode with one state per (loop, layer) against the forward, state
//! bytes and FLOPs scaled by R.
//!
//! Mutations planted and seen to fail:
//! - no final norm between loops → `two_loops_are_the_stack_twice_with_the_final_norm_between`;
//! - the embedding re-injected into every loop (`h + embed`) → the same test;
//! - decode states indexed layer-major (loop r, layer l in slot l·R + r) → `decode_with_one_state_per_loop_and_layer_equals_forward`;
//! - state bytes not multiplied by R → `state_bytes_and_flops_scale_with_the_loops`.

use attnlab_attn::burn::tensor::{Device, Int, Tensor, TensorData};
use attnlab_attn::AttentionConfig;
use attnlab_model::{Gpt, ModelConfig};

fn config(loops: usize, attention: AttentionConfig) -> ModelConfig {
    ModelConfig { vocab: 29, d_model: 32, layers: 2, heads: 4, max_seq: 24, loops, attention, ..ModelConfig::default() }
}

fn tokens(b: usize, t: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 7 + 3) % 29) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [b, t]), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn two_loops_are_the_stack_twice_with_the_final_norm_between() {
    let dev = Device::flex();
    let m = Gpt::seeded(&config(2, AttentionConfig::Mha {}), 1, &dev);
    let ids = tokens(2, 9, &dev);
    // By hand: loop 1 on the embedding, the shared final norm, loop 2, the LM head.
    let stack = |h: Tensor<3>| m.blocks.iter().fold(h, |h, b| b.forward(h, 0.0));
    let h = stack(m.embed.forward(ids.clone()));
    let h = stack(m.norm.forward(h));
    let want = to_vec(attnlab_kernels::linear(m.norm.forward(h), m.embed.weight.val().transpose()));
    let err = rel_err(&to_vec(m.forward(ids.clone())), &want);
    assert!(err < 1e-5, "relative error {err}");
    // One loop is the plain model.
    let one = Gpt::seeded(&config(1, AttentionConfig::Mha {}), 1, &dev);
    let plain = stack(one.embed.forward(ids.clone()));
    let want = to_vec(attnlab_kernels::linear(one.norm.forward(plain), one.embed.weight.val().transpose()));
    assert!(rel_err(&to_vec(one.forward(ids)), &want) < 1e-5);
}

#[test]
fn decode_with_one_state_per_loop_and_layer_equals_forward() {
    let dev = Device::flex();
    for attention in [AttentionConfig::Mha {}, toml::from_str("kind = \"kda\"\nchunk = 4").unwrap()] {
        let m = Gpt::seeded(&config(3, attention.clone()), 2, &dev);
        let (b, t) = (2, 11);
        let ids = tokens(b, t, &dev);
        let full = to_vec(m.forward(ids.clone()));
        let mut states = m.init_states(b, t, &dev);
        assert_eq!(states.len(), 3 * 2, "one state per loop and layer");
        let mut parts = vec![m.step(ids.clone().narrow(1, 0, 4), &mut states)];
        for p in 4..t {
            parts.push(m.step(ids.clone().narrow(1, p, 1), &mut states));
        }
        let err = rel_err(&to_vec(Tensor::cat(parts, 1)), &full);
        assert!(err < 1e-4, "{attention:?}: decode vs forward relative error {err}");
    }
}

#[test]
fn state_bytes_and_flops_scale_with_the_loops() {
    let dev = Device::flex();
    let one = Gpt::seeded(&config(1, AttentionConfig::Mha {}), 3, &dev);
    let four = Gpt::seeded(&config(4, AttentionConfig::Mha {}), 3, &dev);
    assert_eq!(four.state_bytes(20), 4 * one.state_bytes(20));
    let mut states = four.init_states(1, 20, &dev);
    four.step(tokens(1, 20, &dev), &mut states);
    assert_eq!(states.iter().map(|s| s.bytes()).sum::<usize>(), four.state_bytes(20));
    let head = 2 * 29 * 32;
    assert_eq!(four.flops_per_token(20) - head, 4 * (one.flops_per_token(20) - head));
    assert_eq!(four.param_counts(), one.param_counts(), "loops share the weights");
}

#[test]
fn loops_out_of_range_are_refused() {
    for (loops, head) in [(0, attnlab_model::Head::Lm), (17, attnlab_model::Head::Lm), (2, attnlab_model::Head::Autoencoder)] {
        let err = ModelConfig { loops, head, ..config(1, AttentionConfig::Mha {}) }.validate().expect_err("refused");
        assert_eq!(err.field, "model.loops");
    }
}
