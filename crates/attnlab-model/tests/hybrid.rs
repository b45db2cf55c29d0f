//! Hybrid layer schedules (`model.pattern`, `model.overrides`): Kimi Linear's KDA:MLA-NoPE and
//! Qwen3-Next's Gated DeltaNet:gated attention. The pattern plumbing against the plain model,
//! the papers' index conventions, whole-model decode stepping both state kinds, state bytes.
//!
//! Mutations planted and seen to fail:
//! - `Gpt::new` passing a patterned layer its index in the pattern (`layer mod len`, so
//!   differential attention's depth-dependent λ_init is wrong) → `an_all_attention_pattern_equals_the_plain_model_bit_for_bit`;
//! - pattern indexed one-based (`pattern[(i + 1) mod len]`) → `layer_schedules_follow_the_papers_index_conventions`;
//! - overrides ignored → `layer_schedules_follow_the_papers_index_conventions`;
//! - `Gpt::step` pairing layers with the states in reverse order → `whole_model_step_equals_forward_for_mixed_patterns`
//!   (a state of the wrong kind panics; the same kind would mix layers);
//! - `state_bytes` as layers × the first layer's → `state_bytes_are_the_per_layer_sum_of_the_real_tensors`.

mod common;

use attnlab_attn::burn::tensor::{Device, Int, Tensor, TensorData};
use attnlab_attn::{Attention, AttentionConfig};
use common::{rel_err, to_vec, tokens};
use attnlab_model::{Gpt, ModelConfig};

fn attn(src: &str) -> AttentionConfig {
    toml::from_str(src).unwrap()
}

fn kda() -> AttentionConfig {
    attn("kind = \"kda\"\nchunk = 4")
}
fn mla_nope() -> AttentionConfig {
    attn("kind = \"mla\"\nkv_latent = 8\nrope_dim = 4\nrope = false")
}
fn gdn() -> AttentionConfig {
    attn("kind = \"gated_deltanet\"\nchunk = 4")
}
fn qwen_gated() -> AttentionConfig {
    attn("kind = \"gated\"\nkv_heads = 2\npartial_rope = 0.25\nqk_norm = true")
}

fn model(layers: usize) -> ModelConfig {
    ModelConfig { vocab: 29, d_model: 32, layers, heads: 4, max_seq: 24, ..ModelConfig::default() }
}

fn hybrid(layers: usize, pattern: Vec<AttentionConfig>) -> ModelConfig {
    ModelConfig { pattern, ..model(layers) }
}

fn seeded_logits(config: &ModelConfig, seed: u64, ids: Tensor<2, Int>, dev: &Device) -> Vec<f32> {
    to_vec(Gpt::seeded(config, seed, dev).forward(ids))
}

fn kinds_of(config: &ModelConfig) -> Vec<&'static str> {
    config.layer_attentions().map(|a| a.kind()).collect()
}

#[test]
fn an_all_attention_pattern_equals_the_plain_model_bit_for_bit() {
    let dev = Device::flex();
    for a in [mla_nope(), qwen_gated(), AttentionConfig::Differential {}, kda()] {
        let plain = ModelConfig { attention: a.clone(), ..model(3) };
        let patterned = hybrid(3, vec![a.clone()]);
        plain.validate().unwrap();
        patterned.validate().unwrap();
        let ids = tokens(2, 9, &dev);
        let want = seeded_logits(&plain, 5, ids.clone(), &dev);
        assert!(seeded_logits(&plain, 5, ids.clone(), &dev) == want, "{}: the plain model is not reproducible from its seed", a.label());
        let got = seeded_logits(&patterned, 5, ids, &dev);
        assert!(got == want, "{}: pattern [{0}] differs from model.attention = {0} (relative error {})", a.label(), rel_err(&got, &want));
        assert_eq!(patterned.mixer_label(), plain.mixer_label(), "a one-entry pattern is labelled as the kind");
    }
}

#[test]
fn layer_schedules_follow_the_papers_index_conventions() {
    // Qwen3-Next (configuration_qwen3_next.py): layer i (0-based) is attention iff (i + 1) mod 4 = 0.
    let qwen = hybrid(48, vec![gdn(), gdn(), gdn(), qwen_gated()]);
    let attention: Vec<usize> = kinds_of(&qwen).iter().enumerate().filter(|(_, k)| **k == "gated").map(|(i, _)| i).collect();
    assert_eq!(attention, (0..48).filter(|i| (i + 1) % 4 == 0).collect::<Vec<_>>());
    assert_eq!(attention.first(), Some(&3));
    assert_eq!(attention.last(), Some(&47));
    // Kimi Linear 48B: 27 layers, one-based full_attn_layers [4, 8, …, 24, 27]: a 3:1 repeat
    // plus the last layer forced to MLA.
    let mut kimi = hybrid(27, vec![kda(), kda(), kda(), mla_nope()]);
    kimi.overrides.insert("26".into(), mla_nope());
    kimi.validate().unwrap();
    let mla: Vec<usize> = kinds_of(&kimi).iter().enumerate().filter(|(_, k)| **k == "mla").map(|(i, _)| i).collect();
    assert_eq!(mla, vec![3, 7, 11, 15, 19, 23, 26]);
    assert_eq!(kimi.mixer_label(), "kda-C4×3+mla-c8-r4-nope,L26=mla-c8-r4-nope");
    assert_eq!(hybrid(8, vec![kda(), mla_nope()]).mixer_label(), "kda-C4+mla-c8-r4-nope");
    // The built model has those mixers in those layers.
    let small = hybrid(5, vec![kda(), kda(), mla_nope()]);
    let built = Gpt::seeded(&ModelConfig { d_model: 16, ..small }, 0, &Device::flex());
    let is_mla: Vec<bool> = built.blocks.iter().map(|b| matches!(b.attn, Attention::Latent(_))).collect();
    assert_eq!(is_mla, vec![false, false, true, false, false]);
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let cases: Vec<(ModelConfig, &str)> = vec![
        (hybrid(4, vec![kda(), AttentionConfig::Gqa { kv_heads: 3 }]), "model.pattern[1].kv_heads"),
        (ModelConfig { attention: AttentionConfig::Mqa {}, ..hybrid(4, vec![kda()]) }, "model.attention"),
        (hybrid(2, vec![kda(), kda(), kda(), mla_nope()]), "model.pattern"),
        (ModelConfig { overrides: [("4".to_string(), mla_nope())].into(), ..hybrid(4, vec![kda()]) }, "model.overrides"),
        (ModelConfig { overrides: [("last".to_string(), mla_nope())].into(), ..model(4) }, "model.overrides"),
        (ModelConfig { overrides: [("03".to_string(), mla_nope())].into(), ..model(4) }, "model.overrides"),
        (ModelConfig { overrides: [("2".to_string(), AttentionConfig::Gqa { kv_heads: 0 })].into(), ..model(4) }, "model.overrides.2.kv_heads"),
    ];
    for (config, field) in cases {
        let err = config.validate().expect_err(&format!("{} should be refused", config.mixer_label()));
        assert_eq!(err.field, field, "{err}");
    }
}

/// Decode steps both state kinds in one `Gpt::step`: patterns ending in attention, in
/// recurrence, with an override, fed as a prefill then token by token, equal the forward.
#[test]
fn whole_model_step_equals_forward_for_mixed_patterns() {
    let dev = Device::flex();
    let mut kimi = hybrid(5, vec![kda(), kda(), kda(), mla_nope()]);
    kimi.overrides.insert("4".into(), mla_nope());
    for config in [hybrid(4, vec![kda(), kda(), kda(), mla_nope()]), hybrid(3, vec![gdn(), qwen_gated()]), hybrid(3, vec![qwen_gated(), gdn()]), kimi] {
        config.validate().unwrap();
        let m = Gpt::seeded(&config, 2, &dev);
        let (b, t) = (2, 13);
        let ids = tokens(b, t, &dev);
        let full = to_vec(m.forward(ids.clone()));
        let mut states = m.init_states(b, t, &dev);
        let mut parts = vec![m.step(ids.clone().narrow(1, 0, 5), &mut states)];
        for p in 5..t {
            parts.push(m.step(ids.clone().narrow(1, p, 1), &mut states));
        }
        let err = rel_err(&to_vec(Tensor::cat(parts, 1)), &full);
        assert!(err < 1e-4, "{}: decode vs forward relative error {err}", config.mixer_label());
    }
}

/// On the training path, later tokens leave earlier logits of a hybrid unchanged.
#[test]
fn a_hybrid_does_not_leak_future_tokens() {
    let dev = Device::flex().autodiff();
    let (b, t, p) = (1, 13, 6);
    let config = hybrid(4, vec![kda(), kda(), kda(), mla_nope()]);
    let m = Gpt::seeded(&config, 4, &dev);
    let ids = tokens(b, t, &dev);
    let later: Vec<i64> = (0..b * (t - p)).map(|i| ((i * 5 + 1) % 29) as i64).collect();
    let changed = Tensor::cat(vec![ids.clone().narrow(1, 0, p), Tensor::from_data(TensorData::new(later, [b, t - p]), &dev)], 1);
    let a = to_vec(m.forward(ids).narrow(1, 0, p));
    let c = to_vec(m.forward(changed).narrow(1, 0, p));
    assert!(rel_err(&c, &a) < 1e-6, "a later token moved an earlier logit");
}

/// `state_bytes` of a hybrid is the sum over its layers, each sized as its own kind: MLA
/// `(d_c + d_R)·context·4` (NoPE keeps the d_R slice), KDA a fixed state, equal to the bytes of the
/// real state tensors after decoding `context` tokens. At 3:1 the growing part is ¼ of all-MLA's.
#[test]
fn state_bytes_are_the_per_layer_sum_of_the_real_tensors() {
    let dev = Device::flex();
    let config = hybrid(8, vec![kda(), kda(), kda(), mla_nope()]);
    let m = Gpt::seeded(&config, 0, &dev);
    let context = 20;
    let mut states = m.init_states(1, context, &dev);
    m.step(tokens(1, context, &dev), &mut states);
    let real: usize = states.iter().map(|s| s.bytes()).sum();
    assert_eq!(m.state_bytes(context), real);
    let kda_layer = Gpt::seeded(&ModelConfig { attention: kda(), ..model(1) }, 0, &dev).state_bytes(context);
    assert_eq!(m.state_bytes(context), 6 * kda_layer + 2 * (8 + 4) * context * 4);
    assert_eq!(m.state_bytes(2 * context) - m.state_bytes(context), 2 * (8 + 4) * context * 4, "only the 2 MLA layers grow");
    let all_mla = Gpt::seeded(&ModelConfig { attention: mla_nope(), ..model(8) }, 0, &dev);
    assert_eq!(4 * (m.state_bytes(2 * context) - m.state_bytes(context)), all_mla.state_bytes(2 * context) - all_mla.state_bytes(context));
    // Qwen3-Next's 3:1 with grouped value heads: GDN sized by H_v (8 value heads of d_k = d_v
    // = 8 at model.heads = 4, conv tails over 2·4·8 + 8·8 channels), gated attention's KV cache
    // (2 KV heads of d_h = 8).
    let qwen = hybrid(4, vec![attn("kind = \"gated_deltanet\"\nvalue_heads = 8\nexpand_v = 1"), attn("kind = \"gated_deltanet\"\nvalue_heads = 8\nexpand_v = 1"), attn("kind = \"gated_deltanet\"\nvalue_heads = 8\nexpand_v = 1"), qwen_gated()]);
    let m = Gpt::seeded(&qwen, 0, &dev);
    let mut states = m.init_states(1, context, &dev);
    m.step(tokens(1, context, &dev), &mut states);
    let gdn_floats = 8 * 8 * 8 + 3 * (2 * 4 * 8 + 8 * 8);
    let kv_floats = 2 * 2 * 8 * context;
    assert_eq!(m.state_bytes(context), 4 * (3 * gdn_floats + kv_floats));
    assert_eq!(states.iter().map(|s| s.bytes()).sum::<usize>(), m.state_bytes(context));
}
