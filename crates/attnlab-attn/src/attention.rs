//! The mixer enum: one Burn module per mechanism, one contract for all.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::AttentionConfig;
use crate::differential::Differential;
use crate::grouped_query::{GroupedQuery, Kernel, Variant};
use crate::latent::LatentAttention;
use crate::mask::Pattern;
use crate::recurrent::gated_deltanet::{GatedDeltaNet, GdnOptions};
use crate::recurrent::kda::{Kda, KdaOptions};
use crate::recurrent::linear_attention::LinearAttention;
use crate::recurrent::log_linear::{levels_for, LogLinearAttention};
use crate::recurrent::log_linear_gdn::LogLinearGdn;
use crate::config::LogLinearBase;
use crate::dsa::{Dsa, IndexerLoss};
use crate::lolcats::{Lolcats, LolcatsOptions};
use crate::mta::{Mta, MtaOptions};
use crate::mosa::Mosa;
use crate::recurrent::Recurrent;
use crate::state::State;

/// A token mixer chosen at run time by [`AttentionConfig`].
#[derive(Module, Debug)]
pub enum Attention {
    /// MHA, MQA, GQA and the softmax variants built on them: sliding window, strided and fixed
    /// sparse, tiled, gated.
    GroupedQuery(GroupedQuery),
    /// MLA.
    Latent(LatentAttention),
    /// Differential attention.
    Differential(Differential),
    /// Linear attention.
    Linear(LinearAttention),
    /// Log-linear attention over linear attention.
    LogLinear(LogLinearAttention),
    /// Log-linear Gated DeltaNet.
    LogLinearGdn(LogLinearGdn),
    /// Gated DeltaNet.
    GatedDeltaNet(GatedDeltaNet),
    /// Kimi Delta Attention.
    Kda(Kda),
    /// LoLCATs: a linearised softmax layer.
    Lolcats(Lolcats),
    /// DeepSeek Sparse Attention (MLA with a lightning indexer).
    Dsa(Dsa),
    /// Multi-Token Attention (convolutions and head mixing over the attention map).
    Mta(Mta),
    /// Mixture of Sparse Attention (routed heads over chosen tokens, beside dense heads).
    Mosa(Mosa),
}

impl AttentionConfig {
    /// Builds the mixer for a model of width `d_model` with `heads` query heads and a context
    /// of up to `max_seq` tokens, as layer 0. Call [`AttentionConfig::validate`] first.
    pub fn init(&self, d_model: usize, heads: usize, max_seq: usize, rope_base: f32, device: &Device) -> Attention {
        self.init_layer(d_model, heads, max_seq, rope_base, 0, device)
    }

    /// [`AttentionConfig::init`] for layer `layer` (counted from 0; differential attention's
    /// λ_init depends on it).
    pub fn init_layer(&self, d_model: usize, heads: usize, max_seq: usize, rope_base: f32, layer: usize, device: &Device) -> Attention {
        let variant = match self {
            AttentionConfig::Mla { q_latent, rope, .. } => {
                let (kv_latent, rope_dim) = self.mla_dims(d_model / heads).expect("mla");
                return Attention::Latent(LatentAttention::new(d_model, heads, kv_latent, *q_latent, rope_dim, *rope, max_seq, rope_base, device));
            }
            AttentionConfig::Dsa { kv_heads: Some(g), rope_dim, top_k, index_heads, index_dim, .. } => {
                let gqa = GroupedQuery::new(d_model, heads, *g, max_seq, rope_base, device);
                let rope_dim = rope_dim.unwrap_or(d_model / heads / 2);
                return Attention::Dsa(Dsa::on_grouped(gqa, *index_heads, *index_dim, rope_dim, *top_k, max_seq, rope_base, device));
            }
            AttentionConfig::Dsa { q_latent, top_k, index_heads, index_dim, .. } => {
                let (kv_latent, rope_dim) = self.mla_dims(d_model / heads).expect("dsa");
                let mla = LatentAttention::new(d_model, heads, kv_latent, *q_latent, rope_dim, true, max_seq, rope_base, device);
                return Attention::Dsa(Dsa::new(mla, *index_heads, *index_dim, *top_k, max_seq, rope_base, device));
            }
            AttentionConfig::Differential {} => {
                return Attention::Differential(Differential::new(d_model, heads, max_seq, rope_base, layer, device))
            }
            AttentionConfig::Linear { feature_map, normalize, chunk } => {
                return Attention::Linear(LinearAttention::new(d_model, heads, *feature_map, *normalize, *chunk, device))
            }
            AttentionConfig::LogLinear { base, feature_map, levels, chunk } => {
                let levels = levels.unwrap_or(levels_for(max_seq));
                return match base {
                    LogLinearBase::Linear => Attention::LogLinear(LogLinearAttention::new(d_model, heads, *feature_map, levels, *chunk, device)),
                    LogLinearBase::GatedDeltanet => Attention::LogLinearGdn(LogLinearGdn::new(d_model, heads, levels, device)),
                };
            }
            AttentionConfig::GatedDeltanet { value_heads, conv, gate, l2_norm, conv_init, chunk, .. } => {
                let (key_dim, value_dim) = self.delta_dims(d_model, heads).expect("delta kind");
                let value_heads = value_heads.unwrap_or(heads);
                let options = GdnOptions { key_dim, value_dim, value_heads, conv: *conv, gate: *gate, l2: *l2_norm, conv_init: *conv_init, chunk: *chunk };
                return Attention::GatedDeltaNet(GatedDeltaNet::new(d_model, heads, options, device));
            }
            AttentionConfig::Kda { conv, lower_bound, conv_init, chunk, .. } => {
                let (key_dim, value_dim) = self.delta_dims(d_model, heads).expect("delta kind");
                let options = KdaOptions { key_dim, value_dim, conv: *conv, lower_bound: *lower_bound, conv_init: *conv_init, chunk: *chunk };
                return Attention::Kda(Kda::new(d_model, heads, options, device));
            }
            AttentionConfig::Lolcats { window, feature_dim, feature_map, lora_rank, lora_alpha, .. } => {
                let kv_heads = self.kv_heads(heads).expect("lolcats has kv_heads");
                let base = GroupedQuery::new(d_model, heads, kv_heads, max_seq, rope_base, device);
                let options = LolcatsOptions { window: *window, feature_dim: *feature_dim, map: *feature_map, lora_rank: *lora_rank, lora_alpha: *lora_alpha };
                return Attention::Lolcats(Lolcats::new(base, options, device));
            }
            AttentionConfig::Mta { query_kernel, key_kernel, post_conv, pre_mix, post_mix, mix_group, norm, depth_scale, gate, conv_layers, .. } => {
                let kv_heads = self.kv_heads(heads).expect("mta has kv_heads");
                let base = GroupedQuery::new(d_model, heads, kv_heads, max_seq, rope_base, device);
                let convs = conv_layers.as_ref().is_none_or(|l| l.contains(&layer));
                let options = MtaOptions {
                    query_kernel: *query_kernel,
                    key_kernel: *key_kernel,
                    pre_conv: convs,
                    post_conv: convs && *post_conv,
                    pre_mix: *pre_mix,
                    post_mix_group: post_mix.then(|| mix_group.unwrap_or(heads)),
                    norm: *norm,
                    depth_scale: *depth_scale,
                    gate: *gate,
                    layer,
                };
                return Attention::Mta(Mta::new(base, options, d_model, device));
            }
            AttentionConfig::Mosa { rho, routing, dense_heads, .. } => {
                let (mosa_heads, head_dim) = self.mosa_dims(d_model, heads).expect("mosa");
                return Attention::Mosa(Mosa::new(d_model, *dense_heads, mosa_heads, head_dim, *rho, *routing, max_seq, rope_base, device));
            }
            AttentionConfig::SlidingWindow { window, global_tokens, .. } => {
                Variant { pattern: Pattern::Window { window: *window, global: *global_tokens }, ..Variant::default() }
            }
            AttentionConfig::StridedSparse { block, stride, .. } => {
                Variant { pattern: Pattern::Strided { block: *block, stride: *stride }, ..Variant::default() }
            }
            AttentionConfig::FixedSparse { block, summary, .. } => {
                Variant { pattern: Pattern::Fixed { block: *block, summary: summary.expect("validated: summary is set") }, ..Variant::default() }
            }
            AttentionConfig::Tiled { block_q, block_k, .. } => {
                Variant { kernel: Kernel::Tiled { block_q: *block_q, block_k: *block_k }, ..Variant::default() }
            }
            AttentionConfig::Gated { gate_bias, qk_norm, .. } => Variant {
                gated: true,
                gate_bias: *gate_bias,
                rope_dims: self.rope_dims(d_model / heads),
                qk_norm: *qk_norm,
                ..Variant::default()
            },
            AttentionConfig::Mha {} | AttentionConfig::Mqa {} | AttentionConfig::Gqa { .. } => Variant::default(),
        };
        let kv_heads = self.kv_heads(heads).expect("grouped-query kind");
        Attention::GroupedQuery(GroupedQuery::with_variant(d_model, heads, kv_heads, max_seq, rope_base, variant, device))
    }
}

impl Attention {
    /// Causal training forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Attention::GroupedQuery(m) => m.forward(x),
            Attention::Latent(m) => m.forward(x),
            Attention::Differential(m) => m.forward(x),
            Attention::Linear(m) => m.forward(x),
            Attention::LogLinear(m) => m.forward(x),
            Attention::LogLinearGdn(m) => m.forward(x),
            Attention::GatedDeltaNet(m) => m.forward(x),
            Attention::Kda(m) => m.forward(x),
            Attention::Lolcats(m) => m.forward(x),
            Attention::Dsa(m) => m.forward(x),
            Attention::Mta(m) => m.forward(x),
            Attention::Mosa(m) => m.forward(x),
        }
    }

    /// Empty decode state for `batch` sequences of up to `capacity` tokens.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> State {
        match self {
            Attention::GroupedQuery(m) => m.init_state(batch, capacity, device),
            Attention::Latent(m) => State::Latent(m.init_state(batch, capacity, device)),
            Attention::Differential(m) => State::Kv(m.init_state(batch, capacity, device)),
            Attention::Linear(m) => State::Recurrent(m.init_state(batch, capacity, device)),
            Attention::LogLinear(m) => State::Recurrent(m.init_state(batch, capacity, device)),
            Attention::LogLinearGdn(m) => State::Recurrent(m.init_state(batch, capacity, device)),
            Attention::GatedDeltaNet(m) => State::Recurrent(m.init_state(batch, capacity, device)),
            Attention::Kda(m) => State::Recurrent(m.init_state(batch, capacity, device)),
            Attention::Lolcats(m) => State::Lolcats(m.init_state(batch, capacity, device)),
            Attention::Dsa(m) => State::Dsa(m.init_state(batch, capacity, device)),
            Attention::Mta(m) => State::Mta(m.init_state(batch, capacity, device)),
            Attention::Mosa(m) => State::Mosa(m.init_state(batch, capacity, device)),
        }
    }

    /// Incremental forward of new tokens x: `[batch, new, d_model]` (prefill when new > 1).
    pub fn step(&self, x: Tensor<3>, state: &mut State) -> Tensor<3> {
        match (self, state) {
            (Attention::GroupedQuery(m), state) => m.step(x, state),
            (Attention::Latent(m), State::Latent(c)) => m.step(x, c),
            (Attention::Differential(m), State::Kv(c)) => m.step(x, c),
            (Attention::Linear(m), State::Recurrent(c)) => m.step(x, c),
            (Attention::LogLinear(m), State::Recurrent(c)) => m.step(x, c),
            (Attention::LogLinearGdn(m), State::Recurrent(c)) => m.step(x, c),
            (Attention::GatedDeltaNet(m), State::Recurrent(c)) => m.step(x, c),
            (Attention::Kda(m), State::Recurrent(c)) => m.step(x, c),
            (Attention::Lolcats(m), State::Lolcats(c)) => m.step(x, c),
            (Attention::Dsa(m), State::Dsa(c)) => m.step(x, c),
            (Attention::Mta(m), State::Mta(c)) => m.step(x, c),
            (Attention::Mosa(m), State::Mosa(c)) => m.step(x, c),
            _ => panic!("decode state does not belong to this mixer"),
        }
    }

    /// Bytes the decode state holds for one sequence of `context` tokens (f32).
    pub fn state_bytes(&self, context: usize) -> usize {
        match self {
            Attention::GroupedQuery(m) => m.state_bytes(context),
            Attention::Latent(m) => m.state_bytes(context),
            Attention::Differential(m) => m.state_bytes(context),
            Attention::Linear(m) => m.state_bytes(context),
            Attention::LogLinear(m) => m.state_bytes(context),
            Attention::LogLinearGdn(m) => m.state_bytes(context),
            Attention::GatedDeltaNet(m) => m.state_bytes(context),
            Attention::Kda(m) => m.state_bytes(context),
            Attention::Lolcats(m) => m.state_bytes(context),
            Attention::Dsa(m) => m.state_bytes(context),
            Attention::Mta(m) => m.state_bytes(context),
            Attention::Mosa(m) => m.state_bytes(context),
        }
    }

    /// The fraction of the causal (query, key) pairs of a `context`-token sequence that enter
    /// the attention softmax (DSA's indexer scores them all to choose), averaged over the
    /// layer's heads: 1 for dense softmax attention, below 1 for
    /// sparse patterns (from the pattern's mask), DSA (`min(k, t + 1)` keys per query) and MoSA
    /// (a routed head scores the pairs among its k = the routing budget's chosen tokens: prefix
    /// routing may choose fewer, so this is its upper bound). `None` where no key is scored
    /// one by one: a recurrent state summarises them all (linear, log-linear, delta-rule kinds,
    /// and LoLCATs' linear part).
    pub fn keys_attended(&self, context: usize) -> Option<f64> {
        let t = context.max(1);
        let pairs = (t * (t + 1) / 2) as f64;
        match self {
            Attention::GroupedQuery(m) => {
                let heads = if m.pattern.is_head_independent() { 1 } else { m.heads };
                let seen: usize = (0..heads).map(|h| (0..t).map(|q| (0..=q).filter(|&k| m.pattern.allows(h, m.heads, q, k)).count()).sum::<usize>()).sum();
                Some(seen as f64 / (heads as f64 * pairs))
            }
            Attention::Latent(_) | Attention::Differential(_) | Attention::Mta(_) => Some(1.0),
            Attention::Dsa(m) => Some((0..t).map(|q| m.top_k.min(q + 1)).sum::<usize>() as f64 / pairs),
            Attention::Mosa(m) => {
                let k = match m.routing {
                    crate::config::MosaRouting::ExpertChoice => m.expert_k(t),
                    crate::config::MosaRouting::Prefix => t.div_ceil(m.rho),
                };
                let dense = m.dense.as_ref().map_or(0, |d| d.heads);
                let routed = m.heads as f64 * (k * (k + 1) / 2) as f64 / pairs;
                Some((dense as f64 + routed) / (dense + m.heads) as f64)
            }
            Attention::Linear(_) | Attention::LogLinear(_) | Attention::LogLinearGdn(_) | Attention::GatedDeltaNet(_) | Attention::Kda(_) | Attention::Lolcats(_) => None,
        }
    }

    /// Forward FLOPs per token at `context` (for MFU).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        match self {
            Attention::GroupedQuery(m) => m.flops_per_token(context),
            Attention::Latent(m) => m.flops_per_token(context),
            Attention::Differential(m) => m.flops_per_token(context),
            Attention::Linear(m) => m.flops_per_token(context),
            Attention::LogLinear(m) => m.flops_per_token(context),
            Attention::LogLinearGdn(m) => m.flops_per_token(context),
            Attention::GatedDeltaNet(m) => m.flops_per_token(context),
            Attention::Kda(m) => m.flops_per_token(context),
            Attention::Lolcats(m) => m.flops_per_token(context),
            Attention::Dsa(m) => m.flops_per_token(context),
            Attention::Mta(m) => m.flops_per_token(context),
            Attention::Mosa(m) => m.flops_per_token(context),
        }
    }

    /// The training forward with the auxiliary losses `aux` asks for (DESIGN: one channel for
    /// every mixer that trains a part by its own objective): the output and the losses this
    /// layer computes, by name. A layer with nothing to say returns [`Attention::forward`].
    pub fn forward_aux(&self, x: Tensor<3>, aux: &AuxRequest) -> (Tensor<3>, Vec<(AuxLoss, Tensor<1>)>) {
        match self {
            Attention::Lolcats(m) if aux.contains(AuxLoss::AttentionTransfer) => {
                let (y, mse) = m.forward_transfer(x);
                (y, vec![(AuxLoss::AttentionTransfer, mse)])
            }
            Attention::Dsa(m) if aux.contains(AuxLoss::IndexerKlDense) || aux.contains(AuxLoss::IndexerKl) => {
                let (mode, name) = if aux.contains(AuxLoss::IndexerKlDense) { (IndexerLoss::Dense, AuxLoss::IndexerKlDense) } else { (IndexerLoss::Sparse, AuxLoss::IndexerKl) };
                let out = m.forward_with(x, mode);
                let device = out.y.device();
                let mut losses = vec![(name, out.kl.expect("an indexer loss was asked for"))];
                if let Some(r) = out.recall {
                    losses.push((AuxLoss::IndexerRecall, Tensor::from_data(burn::tensor::TensorData::new(vec![r as f32], [1]), &device)));
                }
                (out.y, losses)
            }
            _ => (self.forward(x), Vec::new()),
        }
    }

    /// The auxiliary losses this layer can return.
    pub fn aux_losses(&self) -> Vec<AuxLoss> {
        match self {
            Attention::Lolcats(_) => vec![AuxLoss::AttentionTransfer],
            Attention::Dsa(_) => vec![AuxLoss::IndexerKlDense, AuxLoss::IndexerKl, AuxLoss::IndexerRecall],
            _ => Vec::new(),
        }
    }
}

/// An auxiliary loss a mixer returns through [`Attention::forward_aux`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxLoss {
    /// LoLCATs stage 1: MSE of the layer's per-head outputs to its softmax teacher's; the
    /// layer passes the teacher's output on.
    AttentionTransfer,
    /// DSA's dense warm-up: dense main attention, the indexer's KL to it over every earlier key.
    IndexerKlDense,
    /// DSA's sparse training: sparse main attention, the KL over the selected keys.
    IndexerKl,
    /// DSA: the indexer's recall of the dense attention's per-row top-k (a metric, logged
    /// whenever an indexer loss is computed; never a term of the objective).
    IndexerRecall,
    /// Ouro's stage II (model-level, `model.exit = "learned"`): the exit gate's BCE to the
    /// loops' loss improvements (`attnlab_model::looped::improvement_loss`).
    ExitImprovement,
}

impl AuxLoss {
    pub const ALL: [AuxLoss; 5] = [AuxLoss::AttentionTransfer, AuxLoss::IndexerKlDense, AuxLoss::IndexerKl, AuxLoss::IndexerRecall, AuxLoss::ExitImprovement];

    pub fn name(&self) -> &'static str {
        match self {
            AuxLoss::AttentionTransfer => "attention_transfer",
            AuxLoss::IndexerKlDense => "indexer_kl_dense",
            AuxLoss::IndexerKl => "indexer_kl",
            AuxLoss::IndexerRecall => "indexer_recall",
            AuxLoss::ExitImprovement => "exit_improvement",
        }
    }

    /// A logged quantity that is not a loss (it may not be weighted into an objective).
    pub fn is_metric(&self) -> bool {
        *self == AuxLoss::IndexerRecall
    }
}

/// Which auxiliary losses a training forward computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuxRequest(pub Vec<AuxLoss>);

impl AuxRequest {
    pub fn contains(&self, loss: AuxLoss) -> bool {
        self.0.contains(&loss)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
