//! The mixer enum: one Burn module per mechanism, one contract for all.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::AttentionConfig;
use crate::grouped_query::GroupedQuery;
use crate::latent::LatentAttention;
use crate::state::State;

/// A token mixer chosen at run time by [`AttentionConfig`].
#[derive(Module, Debug)]
pub enum Attention {
    /// MHA, MQA and GQA.
    GroupedQuery(GroupedQuery),
    /// MLA.
    Latent(LatentAttention),
}

impl AttentionConfig {
    /// Builds the mixer for a model of width `d_model` with `heads` query heads and a context
    /// of up to `max_seq` tokens. Call [`AttentionConfig::validate`] first.
    pub fn init(&self, d_model: usize, heads: usize, max_seq: usize, rope_base: f32, device: &Device) -> Attention {
        match self {
            AttentionConfig::Mla { kv_latent, q_latent, rope_dim } => Attention::Latent(LatentAttention::new(
                d_model, heads, *kv_latent, *q_latent, *rope_dim, max_seq, rope_base, device,
            )),
            other => {
                let kv_heads = other.kv_heads(heads).expect("grouped-query kind");
                Attention::GroupedQuery(GroupedQuery::new(d_model, heads, kv_heads, max_seq, rope_base, device))
            }
        }
    }
}

impl Attention {
    /// Causal training forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Attention::GroupedQuery(m) => m.forward(x),
            Attention::Latent(m) => m.forward(x),
        }
    }

    /// Empty decode state for `batch` sequences of up to `capacity` tokens.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> State {
        match self {
            Attention::GroupedQuery(m) => State::Kv(m.init_state(batch, capacity, device)),
            Attention::Latent(m) => State::Latent(m.init_state(batch, capacity, device)),
        }
    }

    /// Incremental forward of new tokens x: `[batch, new, d_model]` (prefill when new > 1).
    pub fn step(&self, x: Tensor<3>, state: &mut State) -> Tensor<3> {
        match (self, state) {
            (Attention::GroupedQuery(m), State::Kv(c)) => m.step(x, c),
            (Attention::Latent(m), State::Latent(c)) => m.step(x, c),
            _ => panic!("decode state does not belong to this mixer"),
        }
    }

    /// Bytes the decode state holds for one sequence of `context` tokens (f32).
    pub fn state_bytes(&self, context: usize) -> usize {
        match self {
            Attention::GroupedQuery(m) => m.state_bytes(context),
            Attention::Latent(m) => m.state_bytes(context),
        }
    }

    /// Forward FLOPs per token at `context` (for MFU).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        match self {
            Attention::GroupedQuery(m) => m.flops_per_token(context),
            Attention::Latent(m) => m.flops_per_token(context),
        }
    }
}
