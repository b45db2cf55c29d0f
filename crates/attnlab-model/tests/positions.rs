//! `model.positions = "learned"`: absolute position embeddings added to the token embeddings.
//!
//! Planted and seen to fail: the position rows taken from 1.. instead of 0.. (the forward
//! reference); `step` adding the rows of 0.. on every call instead of the state's length (decode
//! = forward); the position embedding left out of the forward (the reference); the check that
//! refuses Star / key selection removed (the refusal test). The source-table check compares the
//! table's shape (a kind-only check lets a source with another `max_seq` through: the message
//! assertion of the refusal test fails on the layer error that follows).

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::nn::Embedding;
use attnlab_attn::burn::tensor::{Device, Int, Tensor, TensorData};
use attnlab_attn::{AttentionConfig, AuxRequest};
use attnlab_model::{Gpt, ModelConfig, Positions};

const VOCAB: usize = 29;
const D: usize = 32;
const MAX_SEQ: usize = 24;

fn config(attention: AttentionConfig) -> ModelConfig {
    ModelConfig { vocab: VOCAB, d_model: D, layers: 2, heads: 4, max_seq: MAX_SEQ, attention, positions: Positions::Learned, ..ModelConfig::default() }
}

fn tokens(b: usize, t: usize) -> Vec<i64> {
    (0..b * t).map(|i| ((i * 7 + 3) % VOCAB) as i64).collect()
}

fn to_vec<const D2: usize>(t: Tensor<D2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale
}

/// A model whose position rows are large (std ≈ 1, fifty times the token embeddings' init), so
/// that a wrong or missing row changes the logits by far more than rounding.
fn model(attention: AttentionConfig, dev: &Device) -> (Gpt, Vec<f32>) {
    dev.seed(5);
    let mut model = Gpt::new(&config(attention), dev);
    let rows: Vec<f32> = (0..MAX_SEQ * D).map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 3.4).collect();
    let weight = Tensor::<2>::from_data(TensorData::new(rows.clone(), [MAX_SEQ, D]), dev);
    model.positions = Some(Embedding { weight: Param::from_tensor(weight) });
    (model, rows)
}

/// The forward equals the layers applied to E[token] + P[position], both gathered on the host
/// from the weights (position p of every sequence gets row p).
#[test]
fn the_forward_adds_the_row_of_each_position() {
    let dev = Device::flex();
    let (b, t) = (2, 13);
    let (model, rows) = model(AttentionConfig::Mha {}, &dev);
    let ids = tokens(b, t);
    let embed = to_vec(model.embed.weight.val());
    let mut h0 = Vec::with_capacity(b * t * D);
    for (i, &tok) in ids.iter().enumerate() {
        let p = i % t;
        h0.extend((0..D).map(|c| embed[tok as usize * D + c] + rows[p * D + c]));
    }
    let h0 = Tensor::<3>::from_data(TensorData::new(h0, [b, t, D]), &dev);
    let reference = to_vec(model.logits(model.blocks.iter().fold(h0, |h, block| block.forward(h, 0.0))));
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &dev);
    let forward = to_vec(model.forward(ids.clone()));
    let err = max_rel(&forward, &reference);
    assert!(err < 1e-5, "forward vs E[token] + P[position] through the layers: relative error {err}");
    // The training forward with auxiliary losses (stages) embeds the same way.
    let aux = to_vec(model.forward_aux(ids, &AuxRequest::default()).0);
    let err = max_rel(&aux, &reference);
    assert!(err < 1e-5, "forward_aux vs the reference: relative error {err}");
}

/// Decode (a prefill of 4, then one token at a time) equals the forward: `step` adds the rows of
/// the positions the state has reached, for softmax attention and a recurrent kind.
#[test]
fn decode_adds_the_rows_of_the_positions_reached() {
    let dev = Device::flex();
    let (b, t) = (2, 11);
    for attention in [AttentionConfig::Mha {}, toml::from_str("kind = \"kda\"\nchunk = 4").unwrap()] {
        let (model, _) = model(attention.clone(), &dev);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(tokens(b, t), [b, t]), &dev);
        let full = to_vec(model.forward(ids.clone()));
        let mut states = model.init_states(b, t, &dev);
        let mut parts = vec![model.step(ids.clone().narrow(1, 0, 4), &mut states)];
        for p in 4..t {
            parts.push(model.step(ids.clone().narrow(1, p, 1), &mut states));
        }
        let err = max_rel(&to_vec(Tensor::cat(parts, 1)), &full);
        assert!(err < 1e-4, "{attention:?}: decode vs forward, relative error {err}");
    }
}

/// Star Attention (anchors, shards) and decode-time key selection are not built for learned
/// positions: such a model is refused by name. A source model whose position table differs (in
/// kind or in `max_seq`) cannot start this one (`train.init_from`, `attnlab linearize`).
#[test]
fn inference_methods_over_global_attention_refuse_learned_positions() {
    let dev = Device::flex();
    let (model, _) = model(AttentionConfig::Mha {}, &dev);
    for method in ["star", "key selection"] {
        let err = model.causal_grouped_layers(method).err().expect("refused");
        assert!(err.contains("model.positions") && err.starts_with(method), "{err}");
    }
    dev.seed(5);
    let shorter = Gpt::new(&ModelConfig { max_seq: 16, ..config(AttentionConfig::Mha {}) }, &dev);
    let err = shorter.with_source_weights(model).err().expect("refused");
    assert!(err.contains("position embeddings") && err.contains("[24, 32]") && err.contains("[16, 32]"), "{err}");
}

/// The default is left out of the saved config (run ids of earlier runs do not change); the
/// field reads from TOML and names its values when wrong.
#[test]
fn the_default_is_not_saved_and_bad_values_are_named() {
    let saved = toml::to_string(&ModelConfig::default()).unwrap();
    assert!(!saved.contains("positions"), "{saved}");
    let learned: ModelConfig = toml::from_str("positions = \"learned\"").unwrap();
    assert_eq!(learned.positions, Positions::Learned);
    assert!(toml::to_string(&learned).unwrap().contains("positions = \"learned\""));
    let err = toml::from_str::<ModelConfig>("positions = \"sinusoidal\"").unwrap_err().to_string();
    assert!(err.contains("learned") && err.contains("none"), "{err}");
}
