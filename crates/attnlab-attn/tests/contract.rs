//! The mixer contract for every kind: cached decode equals the full forward at every position
//! (peaked attention), `state_bytes` equals the bytes of the real state tensors and the
//! formula written out here, every parameter gets a gradient (their *values* are checked
//! against finite differences in each kind's own test file).

mod common;

use attnlab_attn::burn::module::{Module, ModuleVisitor, Param};
use attnlab_attn::burn::tensor::Tensor;
use attnlab_attn::config::{LogLinearBase, MosaRouting};
use attnlab_attn::{AttentionConfig, AuxRequest, ConvInit, FeatureMap, LolcatsMap};
use common::*;

fn kinds() -> Vec<AttentionConfig> {
    vec![
        AttentionConfig::Mha {},
        AttentionConfig::Mqa {},
        AttentionConfig::Gqa { kv_heads: 2 },
        AttentionConfig::Mla { kv_latent: Some(12), q_latent: None, rope_dim: Some(4), rope: true },
        AttentionConfig::Mla { kv_latent: Some(12), q_latent: Some(16), rope_dim: Some(8), rope: true },
        AttentionConfig::SlidingWindow { window: 4, global_tokens: 0, kv_heads: None },
        AttentionConfig::SlidingWindow { window: 3, global_tokens: 2, kv_heads: Some(2) },
        AttentionConfig::Mla { kv_latent: None, q_latent: None, rope_dim: None, rope: true },
        AttentionConfig::StridedSparse { block: 3, stride: 4, kv_heads: None },
        AttentionConfig::FixedSparse { block: 4, summary: Some(2), kv_heads: Some(2), stride: None },
        AttentionConfig::Tiled { block_q: 4, block_k: 5, kv_heads: Some(2) },
        AttentionConfig::Gated { kv_heads: None, gate_bias: None, partial_rope: None, qk_norm: false },
        AttentionConfig::Gated { kv_heads: Some(1), gate_bias: Some(3.0), partial_rope: None, qk_norm: false },
        AttentionConfig::Differential {},
        AttentionConfig::Linear { feature_map: FeatureMap::Elu1, normalize: false, chunk: 4 },
        AttentionConfig::Linear { feature_map: FeatureMap::Hedgehog, normalize: true, chunk: 64 },
        AttentionConfig::LogLinear { base: LogLinearBase::Linear, feature_map: FeatureMap::Elu1, levels: None, chunk: 4 },
        AttentionConfig::LogLinear { base: LogLinearBase::Linear, feature_map: FeatureMap::Hedgehog, levels: Some(9), chunk: 64 },
        AttentionConfig::LogLinear { base: LogLinearBase::GatedDeltanet, feature_map: FeatureMap::Elu1, levels: None, chunk: 64 },
        AttentionConfig::GatedDeltanet { value_heads: None, head_dim: None, expand_v: 2, conv: true, gate: true, l2_norm: true, conv_init: ConvInit::Kaiming, chunk: 4 },
        AttentionConfig::GatedDeltanet { value_heads: None, head_dim: Some(6), expand_v: 1, conv: false, gate: false, l2_norm: true, conv_init: ConvInit::Kaiming, chunk: 32 },
        // Qwen3-Next's grouped value heads (state sized by the value heads).
        AttentionConfig::GatedDeltanet { value_heads: Some(16), head_dim: None, expand_v: 1, conv: true, gate: true, l2_norm: true, conv_init: ConvInit::Kaiming, chunk: 4 },
        // Kimi Linear's NoPE MLA and Qwen3-Next's gated attention.
        AttentionConfig::Mla { kv_latent: Some(12), q_latent: None, rope_dim: Some(4), rope: false },
        AttentionConfig::Gated { kv_heads: Some(2), gate_bias: None, partial_rope: Some(0.25), qk_norm: true },
        AttentionConfig::Kda { head_dim: None, expand_v: 1, conv: true, lower_bound: None, conv_init: ConvInit::Kaiming, chunk: 4 },
        AttentionConfig::Kda { head_dim: Some(4), expand_v: 2, conv: true, lower_bound: Some(-5.0), conv_init: ConvInit::Fla, chunk: 16 },
        // LoLCATs: a window of 3-token blocks (linear part from position 6), GQA; and linear-only
        // with elu + 1. No adapters: with B = 0 (as initialised) A gets an exactly zero gradient;
        // adapters with B ≠ 0 are checked in lolcats.rs (decode, gradients).
        AttentionConfig::Lolcats { kv_heads: Some(2), window: 3, feature_dim: 4, feature_map: LolcatsMap::Softmax, lora_rank: 0, lora_alpha: 4.0 },
        AttentionConfig::Lolcats { kv_heads: None, window: 0, feature_dim: 4, feature_map: LolcatsMap::Elu1, lora_rank: 0, lora_alpha: 16.0 },
        // DSA with top_k < T (sparse from position 4 on), with and without a query latent; on GQA-2.
        AttentionConfig::Dsa { kv_heads: None, kv_latent: Some(12), q_latent: None, rope_dim: Some(4), top_k: 4, index_heads: 2, index_dim: 8 },
        AttentionConfig::Dsa { kv_heads: None, kv_latent: Some(12), q_latent: Some(16), rope_dim: Some(4), top_k: 3, index_heads: 4, index_dim: 32 },
        AttentionConfig::Dsa { kv_heads: Some(2), kv_latent: None, q_latent: None, rope_dim: None, top_k: 3, index_heads: 2, index_dim: 8 },
        // MTA: the paper's layer (6 × 11, both convolutions, both mixings, norm, gate) at GQA;
        // 3 × 3 with groups of 2, depth scale; a layer outside `conv_layers` (no convolutions).
        // At init the kernels are the identity: decode with trained-looking kernels is in mta.rs.
        mta(Some(2), 6, 11, None, None),
        mta(None, 3, 3, Some(2), None),
        mta(None, 3, 3, None, Some(vec![1])),
        // MoSA with prefix (causal) routing: one dense head beside 3 routed ones; routed heads
        // only, of another width, at ρ = 2.
        AttentionConfig::Mosa { rho: 3, routing: MosaRouting::Prefix, dense_heads: 1, mosa_heads: Some(3), head_dim: None },
        AttentionConfig::Mosa { rho: 2, routing: MosaRouting::Prefix, dense_heads: 0, mosa_heads: Some(2), head_dim: Some(12) },
    ]
}

fn mta(kv_heads: Option<usize>, query_kernel: usize, key_kernel: usize, mix_group: Option<usize>, conv_layers: Option<Vec<usize>>) -> AttentionConfig {
    AttentionConfig::Mta {
        kv_heads,
        query_kernel,
        key_kernel,
        post_conv: true,
        pre_mix: true,
        post_mix: true,
        depth_scale: mix_group.is_some(),
        mix_group,
        norm: true,
        gate: true,
        conv_layers,
    }
}

#[test]
fn prefill_then_token_by_token_equals_the_full_forward() {
    let dev = cpu();
    let (d_model, heads, t) = (32, 4, 13);
    for config in kinds() {
        let m = sharpen(seeded(&dev, 7, || config.init(d_model, heads, 32, 10_000.0, &dev)), SHARP);
        let x = random_input(2, t, d_model, 3, &dev);
        let full = m.forward(x.clone());
        for prefill in [1, 5] {
            let mut state = m.init_state(2, t, &dev);
            let mut parts = vec![m.step(x.clone().narrow(1, 0, prefill), &mut state)];
            for p in prefill..t {
                parts.push(m.step(x.clone().narrow(1, p, 1), &mut state));
            }
            assert_eq!(state.len(), t);
            let err = rel_err(&to_vec(Tensor::cat(parts, 1)), &to_vec(full.clone()));
            assert!(err < 1e-4, "{config:?} prefill {prefill}: relative |decode − forward| = {err}");
        }
    }
}

#[test]
fn state_bytes_match_the_real_state_tensors_and_the_formulas() {
    let dev = cpu();
    let (d_model, heads, head_dim) = (64, 8, 8);
    for config in kinds() {
        let m = locked(|| config.init(d_model, heads, 64, 10_000.0, &dev));
        let state = m.init_state(2, 50, &dev);
        assert_eq!(m.state_bytes(50), state.bytes(), "{config:?}");
        let kv_floats = |kv_heads: Option<usize>| 2 * kv_heads.unwrap_or(heads) * head_dim;
        let (floats_per_token, tokens) = match &config {
            AttentionConfig::Mha {} | AttentionConfig::Differential {} => (2 * heads * head_dim, 50),
            AttentionConfig::Mqa {} => (2 * head_dim, 50),
            AttentionConfig::Gqa { kv_heads } => (2 * kv_heads * head_dim, 50),
            AttentionConfig::Mla { .. } => {
                let (kv_latent, rope_dim) = config.mla_dims(head_dim).unwrap();
                (kv_latent + rope_dim, 50)
            }
            // GQA's K/V plus the indexer key.
            AttentionConfig::Dsa { kv_heads: Some(g), index_dim, .. } => (2 * g * head_dim + index_dim, 50),
            // MLA's latent and rotary key plus the indexer key.
            AttentionConfig::Dsa { index_dim, .. } => {
                let (kv_latent, rope_dim) = config.mla_dims(head_dim).unwrap();
                (kv_latent + rope_dim + index_dim, 50)
            }
            // The ring buffer holds the window and the global tokens, whatever the context.
            AttentionConfig::SlidingWindow { window, global_tokens, kv_heads } => (kv_floats(*kv_heads), window + global_tokens),
            AttentionConfig::StridedSparse { kv_heads, .. }
            | AttentionConfig::FixedSparse { kv_heads, .. }
            | AttentionConfig::Tiled { kv_heads, .. }
            | AttentionConfig::Gated { kv_heads, .. } => {
                (kv_floats(*kv_heads), 50)
            }
            // A fixed state: per head d_φ × d_h (+ z), no tokens.
            AttentionConfig::Linear { feature_map, normalize, .. } => {
                let phi = if *feature_map == FeatureMap::Hedgehog { 2 * head_dim } else { head_dim };
                (heads * phi * (head_dim + usize::from(*normalize)), 1)
            }
            // One d_φ × d_h state per level: bit-length(49) + 1 = 7 levels at 50 tokens.
            AttentionConfig::LogLinear { base: LogLinearBase::Linear, feature_map, .. } => {
                let phi = if *feature_map == FeatureMap::Hedgehog { 2 * head_dim } else { head_dim };
                (heads * phi * head_dim * 7, 1)
            }
            // Over Gated DeltaNet (d_v = 2·d_k): 7 levels of d_k × d_v, plus the conv tails.
            AttentionConfig::LogLinear { base: LogLinearBase::GatedDeltanet, .. } => (heads * head_dim * 2 * head_dim * 7 + 3 * (2 * heads * head_dim + heads * 2 * head_dim), 1),
            // S per value head d_k × d_v, plus the conv tails: 3 inputs of 2·h·d_k + h_v·d_v
            // channels (h_v = value_heads, else h).
            AttentionConfig::GatedDeltanet { conv, value_heads, .. } => {
                let (dk, dv) = config.delta_dims(d_model, heads).unwrap();
                let hv = value_heads.unwrap_or(heads);
                (hv * dk * dv + if *conv { 3 * (2 * heads * dk + hv * dv) } else { 0 }, 1)
            }
            // Ring of 2·window keys and values at the K/V heads (fixed), plus S (d_φ × d_h) and z
            // per query head: counted as floats per "token" of the ring with the linear part
            // spread over it is awkward, so as one block of floats (tokens = 1).
            AttentionConfig::Lolcats { kv_heads, window, feature_dim, feature_map, .. } => {
                let phi = if *feature_map == LolcatsMap::Softmax { 2 * feature_dim } else { head_dim };
                (kv_floats(*kv_heads) * (2 * window).min(50) + heads * phi * (head_dim + 1), 1)
            }
            // MHA's K/V plus the last (c_q − 1)·convolutions queries (a fixed block: layer 0 is
            // outside conv_layers = [1], so it keeps none).
            AttentionConfig::Mta { kv_heads, query_kernel, conv_layers, .. } => {
                let convs = if conv_layers.as_ref().is_some_and(|l| !l.contains(&0)) { 0 } else { 2 };
                (kv_floats(*kv_heads) * 50 + (query_kernel - 1) * convs * heads * head_dim, 1)
            }
            // Dense heads' K/V for every token; routed heads' K/V for ⌈50/ρ⌉ chosen tokens and one
            // router score per token and head.
            AttentionConfig::Mosa { rho, dense_heads, .. } => {
                let (e, h) = config.mosa_dims(d_model, heads).unwrap();
                (2 * dense_heads * h * 50 + 2 * e * h * 50usize.div_ceil(*rho) + e * 50, 1)
            }
            AttentionConfig::Kda { conv, .. } => {
                let (dk, dv) = config.delta_dims(d_model, heads).unwrap();
                (heads * dk * dv + if *conv { 3 * (2 * heads * dk + heads * dv) } else { 0 }, 1)
            }
        };
        assert_eq!(state.bytes(), floats_per_token * tokens * 4, "{config:?}");
        if config.delta_dims(d_model, heads).is_some() || matches!(config, AttentionConfig::Linear { .. }) {
            assert_eq!(m.state_bytes(100_000), m.state_bytes(50), "{config:?}: a recurrent state grew with the context");
        }
    }
}

/// Counts parameters whose gradient is missing or all zero.
struct GradCheck<'a> {
    grads: &'a attnlab_attn::burn::tensor::Gradients,
    total: usize,
    dead: Vec<String>,
}

impl ModuleVisitor for GradCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.total += 1;
        let alive = param
            .val()
            .grad(self.grads)
            .map(|g| to_vec(g.abs().max()).into_iter().next().unwrap_or(0.0) > 0.0)
            .unwrap_or(false);
        if !alive {
            self.dead.push(format!("{:?}", param.shape()));
        }
    }
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let dev = cpu().autodiff();
    for config in kinds() {
        let m = seeded(&dev, 2, || config.init(32, 4, 16, 10_000.0, &dev));
        let x = random_input(2, 9, 32, 1, &dev).require_grad();
        // With the mixer's auxiliary losses: a part that trains only on its own loss (DSA's
        // indexer, LoLCATs' maps) gets its gradient there.
        let aux = AuxRequest(m.aux_losses().into_iter().filter(|a| !a.is_metric()).collect());
        let (y, losses) = m.forward_aux(x.clone(), &aux);
        let loss = losses.into_iter().fold(y.powi_scalar(2).mean(), |l, (_, v)| l + v);
        let grads = loss.backward();
        let mut check = GradCheck { grads: &grads, total: 0, dead: vec![] };
        m.visit(&mut check);
        assert!(check.total >= 2, "{config:?}: no parameters visited");
        assert!(check.dead.is_empty(), "{config:?}: parameters without gradient: {:?}", check.dead);
        let gx = x.grad(&grads).expect("input gradient");
        assert!(to_vec(gx.abs().sum()).iter().all(|v| *v > 0.0 && v.is_finite()));
    }
}

/// Changing tokens after position P leaves every output before P unchanged (no future leak,
/// including through a ragged last chunk and the short convs).
#[test]
fn changing_later_tokens_leaves_earlier_outputs_unchanged() {
    let dev = cpu();
    let (d_model, heads, t, p) = (32, 4, 13, 9);
    for config in kinds() {
        let m = sharpen(seeded(&dev, 4, || config.init(d_model, heads, 32, 10_000.0, &dev)), SHARP);
        let x = random_input(2, t, d_model, 8, &dev);
        let later = random_input(2, t - p, d_model, 9, &dev);
        let changed = Tensor::cat(vec![x.clone().narrow(1, 0, p), later], 1);
        let a = to_vec(m.forward(x).narrow(1, 0, p));
        let b = to_vec(m.forward(changed).narrow(1, 0, p));
        assert!(max_abs_diff(&a, &b) <= 1e-5 * a.iter().fold(1.0f64, |m, v| m.max(v.abs())), "{config:?}: a later token changed an earlier output");
    }
}

/// `keys_attended` against counts made by hand at T = 8 (36 causal pairs) and T = 4 (10):
/// a window of 3 with 1 sink scores 1 + 2 + 3 + 4·5 = 26 pairs; DSA with top_k 2 at T = 4
/// scores 1 + 2 + 2 + 2 = 7; MoSA expert choice ρ 2 (k = 4, 10 pairs per routed head) with one
/// dense head and two routed ones: (1 + 2·10/36)/3; MHA all; GDN none (a state, no scores).
///
/// Planted and seen to fail: DSA counting min(k, t) keys; MoSA's routed pairs k² (no causal
/// triangle).
#[test]
fn keys_attended_matches_hand_counts() {
    let dev = cpu();
    let at = |toml_text: &str, t: usize| {
        let config: AttentionConfig = toml::from_str(toml_text).unwrap();
        locked(|| config.init(32, 4, 64, 10_000.0, &dev)).keys_attended(t)
    };
    let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1e-12);
    assert!(close(at("kind = \"sliding_window\"\nwindow = 3\nglobal_tokens = 1", 8), 26.0 / 36.0), "{:?}", at("kind = \"sliding_window\"\nwindow = 3\nglobal_tokens = 1", 8));
    assert!(close(at("kind = \"dsa\"\ntop_k = 2", 4), 0.7));
    assert!(close(at("kind = \"dsa\"\ntop_k = 2\nkv_heads = 2", 4), 0.7));
    let mosa = at("kind = \"mosa\"\nrho = 2\nmosa_heads = 2\nrouting = \"expert_choice\"", 8);
    assert!(close(mosa, (1.0 + 2.0 * 10.0 / 36.0) / 3.0), "{mosa:?}");
    assert!(close(at("kind = \"mha\"", 8), 1.0));
    assert_eq!(at("kind = \"gated_deltanet\"", 8), None);
}
