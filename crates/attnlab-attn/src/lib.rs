//! Attention mechanisms ("mixers") for attnlab, as Burn modules.
//!
//! Every mechanism implements one contract (see [`Attention`]): a causal training `forward`,
//! an incremental `step` over a decode [`State`], `state_bytes` and `flops_per_token`.
//! A config ([`AttentionConfig`]) picks the mechanism at run time.

pub mod attention;
pub mod adamas;
pub mod config;
pub mod differential;
pub mod dsa;
pub mod grouped_query;
pub mod key_selection;
pub mod kinds;
pub mod latent;
pub mod linear;
pub mod lolcats;
pub mod mask;
pub mod mosa;
pub mod mta;
pub mod recurrent;
pub mod rope;
pub mod softmax_attention;
pub mod star;
pub mod state;
pub mod tiled_attention;

pub use attention::{Attention, AuxLoss, AuxRequest};
pub use burn;
pub use config::{AttentionConfig, ConfigError, ConvInit, FeatureMap, LolcatsMap};
pub use lolcats::Lolcats;
pub use differential::Differential;
pub use grouped_query::{GroupedQuery, Kernel, Variant};
pub use latent::LatentAttention;
pub use linear::linear;
pub use rope::Rope;
pub use mask::Pattern;
pub use softmax_attention::{causal_softmax_attention, softmax_attention};
pub use tiled_attention::tiled_attention;
pub use recurrent::gated_deltanet::GatedDeltaNet;
pub use recurrent::kda::Kda;
pub use recurrent::linear_attention::LinearAttention;
pub use recurrent::log_linear::LogLinearAttention;
pub use recurrent::log_linear_gdn::LogLinearGdn;
pub use recurrent::Recurrent;
pub use dsa::Dsa;
pub use mta::Mta;
pub use mosa::Mosa;
pub use state::{DsaState, KvCache, LatentCache, LolcatsState, MosaState, MtaState, RecurrentState, State, WindowCache};

/// Bytes of one element of the default float dtype (f32).
pub const F32_BYTES: usize = 4;
