//! The GPT: cached generation equals the full forward, gradients reach every parameter,
//! parameter and state accounting.

use attnlab_attn::burn::module::{Module, ModuleVisitor, Param};
use attnlab_attn::burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use attnlab_attn::AttentionConfig;
use attnlab_model::{Gpt, MlpKind, ModelConfig};

fn config(attention: AttentionConfig, mlp: MlpKind) -> ModelConfig {
    ModelConfig { vocab: 29, d_model: 32, layers: 2, heads: 4, max_seq: 24, mlp, attention, ..ModelConfig::default() }
}

fn kinds() -> Vec<AttentionConfig> {
    vec![
        AttentionConfig::Mha {},
        AttentionConfig::Mqa {},
        AttentionConfig::Gqa { kv_heads: 2 },
        AttentionConfig::Mla { kv_latent: Some(8), q_latent: Some(16), rope_dim: Some(4), rope: true },
        toml::from_str("kind = \"linear\"").unwrap(),
        toml::from_str("kind = \"gated_deltanet\"\nchunk = 4").unwrap(),
        toml::from_str("kind = \"kda\"\nchunk = 4").unwrap(),
        toml::from_str("kind = \"log_linear\"").unwrap(),
        // No adapters: at B = 0 (their init) A's gradient is exactly zero.
        toml::from_str("kind = \"lolcats\"\nwindow = 4\nfeature_dim = 4\nkv_heads = 2\nlora_rank = 0").unwrap(),
        toml::from_str("kind = \"dsa\"\ntop_k = 4\nkv_latent = 8\nrope_dim = 4\nindex_dim = 8").unwrap(),
        toml::from_str("kind = \"mta\"\nquery_kernel = 3\nkey_kernel = 5\nkv_heads = 2\nconv_layers = [1]").unwrap(),
        toml::from_str("kind = \"mosa\"\nrho = 2").unwrap(),
        // Kimi Linear's NoPE MLA and Qwen3-Next's gated attention (partial RoPE, q/k norm).
        toml::from_str("kind = \"mla\"\nkv_latent = 8\nrope_dim = 4\nrope = false").unwrap(),
        toml::from_str("kind = \"gated\"\nkv_heads = 2\npartial_rope = 0.25\nqk_norm = true").unwrap(),
    ]
}

fn tokens(b: usize, t: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 7 + 3) % 29) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [b, t]), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn cached_decode_logits_equal_the_full_forward() {
    let dev = Device::flex();
    for attention in kinds() {
        for mlp in [MlpKind::Gelu, MlpKind::Swiglu] {
            dev.seed(1);
            let model = Gpt::new(&config(attention.clone(), mlp), &dev);
            let (b, t) = (2, 11);
            let ids = tokens(b, t, &dev);
            let full = to_vec(model.forward(ids.clone()));
            let mut states = model.init_states(b, t, &dev);
            let mut parts = vec![model.step(ids.clone().narrow(1, 0, 4), &mut states)];
            for p in 4..t {
                parts.push(model.step(ids.clone().narrow(1, p, 1), &mut states));
            }
            let cached = to_vec(Tensor::cat(parts, 1));
            let err = full.iter().zip(&cached).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-4, "{attention:?} {mlp:?}: max |decode − forward| = {err}");
        }
    }
}

/// On the training path (autodiff device: the fused CPU ops a run trains with), changing the
/// tokens from position P on leaves every logit before P unchanged: no future-token leak in the
/// whole model (embedding, mixers, MLP, norms, head). A leak would make a too-good loss.
#[test]
fn later_tokens_do_not_change_earlier_logits_on_the_training_path() {
    let dev = Device::flex().autodiff();
    let (b, t, p) = (2, 13, 7);
    for attention in kinds() {
        dev.seed(3);
        let model = Gpt::new(&config(attention.clone(), MlpKind::Gelu), &dev);
        let ids = tokens(b, t, &dev);
        let later: Vec<i64> = (0..b * (t - p)).map(|i| ((i * 5 + 1) % 29) as i64).collect();
        let changed = Tensor::cat(vec![ids.clone().narrow(1, 0, p), Tensor::from_data(TensorData::new(later, [b, t - p]), &dev)], 1);
        let a = to_vec(model.forward(ids).narrow(1, 0, p));
        let c = to_vec(model.forward(changed).narrow(1, 0, p));
        let err = a.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-5, "{attention:?}: a later token moved an earlier logit by {err}");
    }
}

struct DeadParams<'a> {
    grads: &'a Gradients,
    dead: usize,
    total: usize,
}

impl ModuleVisitor for DeadParams<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.total += 1;
        let ok = param.val().grad(self.grads).map(|g| to_vec(g.abs().max())[0] > 0.0).unwrap_or(false);
        if !ok {
            self.dead += 1;
        }
    }
}

#[test]
fn every_parameter_of_the_model_gets_a_gradient() {
    let dev = Device::flex().autodiff();
    for attention in kinds() {
        dev.seed(3);
        let model = Gpt::new(&config(attention.clone(), MlpKind::Swiglu), &dev);
        // With the model's auxiliary losses: DSA's indexer trains only on its KL.
        let aux = attnlab_attn::AuxRequest(model.aux_losses().into_iter().filter(|a| !a.is_metric()).collect());
        let (logits, losses) = model.forward_aux(tokens(2, 9, &dev), &aux);
        let grads = losses.into_iter().fold(logits.powi_scalar(2).mean(), |l, (_, v)| l + v).backward();
        let mut v = DeadParams { grads: &grads, dead: 0, total: 0 };
        model.visit(&mut v);
        assert!(v.total > 10);
        assert_eq!(v.dead, 0, "{attention:?}: {} of {} parameters got no gradient", v.dead, v.total);
    }
}

#[test]
fn parameter_counts_and_state_bytes_follow_the_shapes() {
    let dev = Device::flex();
    let model = Gpt::new(&config(AttentionConfig::Mha {}, MlpKind::Gelu), &dev);
    let c = model.param_counts();
    // Per layer: qkv 32·96 + out 32·32; MLP 32·128·2; two norms 2·32. Embedding 29·32, final norm 32.
    let mixer = 32 * 96 + 32 * 32;
    assert_eq!(c.mixer, 2 * mixer);
    assert_eq!(c.embedding, 29 * 32);
    assert_eq!(c.total, 29 * 32 + 32 + 2 * (mixer + 2 * 32 * 128 + 2 * 32));
    assert_eq!(model.state_bytes(10), 2 * (2 * 32) * 4 * 10);
    let gqa = Gpt::new(&config(AttentionConfig::Gqa { kv_heads: 2 }, MlpKind::Gelu), &dev);
    assert_eq!(gqa.state_bytes(10), 2 * (2 * 2 * 8) * 4 * 10);
}
