//! Looped depth (`model.loops`, Ouro without its exit gate): the loop plumbing against the
//! stack composed by hand, decode with one state per (loop, layer) against the forward, state
//! bytes and FLOPs scaled by R.
//!
//! Mutations planted and seen to fail:
//! - no final norm between loops → `two_loops_are_the_stack_twice_with_the_final_norm_between`;
//! - the embedding re-injected into every loop (`h + embed`) → the same test;
//! - decode states indexed layer-major (loop r, layer l in slot l·R + r) → `decode_with_one_state_per_loop_and_layer_equals_forward`
//!   (its MHA + KDA pattern: the slots hold different kinds of state);
//! - state bytes not multiplied by R → `state_bytes_and_flops_scale_with_the_loops`.

mod common;

use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::AttentionConfig;
use common::{rel_err, to_vec, tokens};
use attnlab_model::{Gpt, ModelConfig};

fn config(loops: usize, attention: AttentionConfig) -> ModelConfig {
    ModelConfig { vocab: 29, d_model: 32, layers: 2, heads: 4, max_seq: 24, loops, attention, ..ModelConfig::default() }
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
    let kda: AttentionConfig = toml::from_str("kind = \"kda\"\nchunk = 4").unwrap();
    // The hybrid's two layers hold states of different kinds, so a layer-major slot order
    // (l·R + r) hands a layer the wrong kind of state.
    let hybrid = ModelConfig { pattern: vec![AttentionConfig::Mha {}, kda.clone()], ..config(3, AttentionConfig::Mha {}) };
    for c in [config(3, AttentionConfig::Mha {}), config(3, kda), hybrid] {
        let attention = c.mixer_label();
        let m = Gpt::seeded(&c, 2, &dev);
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
        assert!(err < 1e-4, "{attention}: decode vs forward relative error {err}");
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

// ---- Ouro's learned exit (stage I) ----

use attnlab_model::looped::{exit_log_probs, exit_loss};
use attnlab_model::Exit;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The stage-I loss of one token written out: p = [λ₀, (1−λ₀)λ₁, (1−λ₀)(1−λ₁)] for R = 3.
fn hand_loss(ce: [f64; 3], g: [f64; 2], beta: f64) -> f64 {
    let (l0, l1) = (sigmoid(g[0]), sigmoid(g[1]));
    let p = [l0, (1.0 - l0) * l1, (1.0 - l0) * (1.0 - l1)];
    let expected: f64 = p.iter().zip(ce).map(|(p, c)| p * c).sum();
    let entropy: f64 = -p.iter().map(|p| p * p.ln()).sum::<f64>();
    expected - beta * entropy
}

fn t2(rows: &[[f64; 2]], dev: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|v| *v as f32)).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 2]), dev)
}

/// Two tokens, R = 3, β = 0.1: the loss and its gradient w.r.t. the gate logits against the
/// formula written out (finite differences for the gradient). Planted, and seen to fail: the
/// entropy added instead of subtracted; p(R) = λ_R Π(1 − λ_j) (the last gate used).
#[test]
fn the_exit_loss_is_the_expected_cross_entropy_minus_beta_entropy() {
    let dev = Device::flex().autodiff();
    let ce = [[2.0, 1.0], [1.5, 0.5], [1.0, 0.2]];
    let gates = [[0.0, 1.0], [-1.0, 2.0], [3.0, -3.0]];
    let beta = 0.1;
    let g = t2(&gates, &dev).require_grad();
    let loss = exit_loss(t2(&ce, &dev), g.clone(), Tensor::ones([2], &dev), beta);
    let want = |gates: [[f64; 2]; 3]| (0..2).map(|i| hand_loss([ce[0][i], ce[1][i], ce[2][i]], [gates[0][i], gates[1][i]], beta)).sum::<f64>() / 2.0;
    let got = loss.clone().into_scalar::<f32>() as f64;
    assert!((got - want(gates)).abs() < 1e-5, "loss {got} vs {}", want(gates));
    let grad = g.grad(&loss.backward()).unwrap().into_data().try_into_vec::<f32>().unwrap();
    for r in 0..3 {
        for i in 0..2 {
            let (mut up, mut down) = (gates, gates);
            up[r][i] += 1e-4;
            down[r][i] -= 1e-4;
            let fd = (want(up) - want(down)) / 2e-4;
            assert!((grad[r * 2 + i] as f64 - fd).abs() < 1e-3, "d loss / d gate[{r}][{i}]: {} vs {fd}", grad[r * 2 + i]);
        }
    }
    assert!(grad[4].abs() < 1e-7 && grad[5].abs() < 1e-7, "the last loop's gate is unused");
}

/// A task's loss mask weights whole tokens: with weights [1, 0] the loss is token 0's alone.
#[test]
fn the_exit_loss_counts_only_the_masked_tokens() {
    let dev = Device::flex();
    let ce = [[2.0, 1.0], [1.5, 0.5], [1.0, 0.2]];
    let gates = [[0.0, 1.0], [-1.0, 2.0], [3.0, -3.0]];
    let weights = Tensor::<1>::from_data(TensorData::new(vec![1f32, 0.0], [2]), &dev);
    let got = exit_loss(t2(&ce, &dev), t2(&gates, &dev), weights, 0.1).into_scalar::<f32>() as f64;
    let want = hand_loss([2.0, 1.5, 1.0], [0.0, -1.0], 0.1);
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn exit_probabilities_sum_to_one_and_a_closed_gate_is_the_last_loop() {
    let dev = Device::flex();
    let g = Tensor::<2>::random([4, 5], attnlab_attn::burn::tensor::Distribution::Normal(0.0, 3.0), &dev);
    let sums = to_vec(exit_log_probs(g, 4, 5).exp().sum_dim(0));
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    // λ ≈ 0 everywhere (logit −40): p(R) = 1, no entropy, the loss is the last loop's CE.
    let ce = t2(&[[2.0, 1.0], [1.5, 0.5], [1.0, 0.2]], &dev);
    let loss = exit_loss(ce, Tensor::full([3, 2], -40.0, &dev), Tensor::ones([2], &dev), 0.1).into_scalar::<f32>();
    assert!((loss - 0.6).abs() < 1e-5, "{loss}");
}

/// The learned-exit forward: the last loop's logits are the plain forward's; the gate and every
/// block get gradients from the objective.
#[test]
fn a_learned_exit_model_reads_every_loop() {
    let dev = Device::flex().autodiff();
    let learned = ModelConfig { exit: Exit::Learned, ..config(3, AttentionConfig::Mha {}) };
    learned.validate().unwrap();
    let m = Gpt::seeded(&learned, 4, &dev);
    let ids = tokens(1, 7, &dev);
    let loops = m.forward_loops(ids.clone());
    assert_eq!(loops.len(), 3);
    let err = rel_err(&to_vec(loops[2].0.clone()), &to_vec(m.forward(ids.clone())));
    assert!(err < 1e-6, "last loop vs forward: {err}");
    let ce: Vec<Tensor<2>> = loops.iter().map(|(l, _)| l.clone().mean_dim(2).reshape([1, 7])).collect();
    let gates: Vec<Tensor<2>> = loops.into_iter().map(|(_, g)| g.reshape([1, 7])).collect();
    let grads = exit_loss(Tensor::cat(ce, 0), Tensor::cat(gates, 0), Tensor::ones([7], &dev), 0.05).backward();
    let gate = m.exit_gate.as_ref().unwrap();
    assert!(gate.weight.grad(&grads).is_some_and(|g| g.abs().sum().into_scalar::<f32>() > 0.0), "the gate gets a gradient");
    let first = &m.blocks[0].mlp_norm.gamma;
    assert!(first.grad(&grads).is_some_and(|g| g.abs().sum().into_scalar::<f32>() > 0.0), "the first block gets a gradient");
    // The LM head and the gate after every loop.
    let plain = Gpt::seeded(&config(3, AttentionConfig::Mha {}), 4, &Device::flex());
    assert_eq!(m.flops_per_token(7) - plain.flops_per_token(7), (3 - 1) * 2 * 29 * 32 + 3 * 2 * 32, "R LM heads (R − 1 more) and R gates");
    assert!(ModelConfig { exit: Exit::Learned, ..config(1, AttentionConfig::Mha {}) }.validate().is_err(), "a learned exit needs loops ≥ 2");
}

/// Q-exit against a CDF computed by hand. Gate logits (loops × tokens) `[[0, 2], [0, −1], [·, ·]]`:
/// token 0 has λ = (½, ½) → CDF (0.5, 0.75); token 1 has λ = (σ(2), σ(−1)) = (0.8808, 0.2689) →
/// CDF (0.8808, 1 − 0.1192·0.7311 = 0.9129). Planted, and seen to fail: the CDF started at loop
/// 2 (`skip(1)`); the comparison `>` instead of `≥` (q = 0.5 on token 0).
#[test]
fn q_exit_picks_the_first_loop_whose_cdf_reaches_q() {
    let gates = vec![vec![0.0, 2.0], vec![0.0, -1.0], vec![5.0, 5.0]];
    assert_eq!(attnlab_model::looped::q_exit(&gates, 0.5), vec![0, 0]);
    assert_eq!(attnlab_model::looped::q_exit(&gates, 0.6), vec![1, 0]);
    assert_eq!(attnlab_model::looped::q_exit(&gates, 0.9), vec![2, 1]);
    assert_eq!(attnlab_model::looped::q_exit(&gates, 0.95), vec![2, 2], "the last loop when the CDF never reaches q");
}
