//! Attention configuration: picks the mechanism at run time (`kind = "..."` in TOML).

use serde::{Deserialize, Serialize};

/// Which mixer a layer uses, with its own hyper-parameters. Head count and width come from the
/// model (`model.heads`, `model.d_model`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttentionConfig {
    /// Multi-head attention (Vaswani et al. 2017): one K/V head per query head.
    Mha {},
    /// Multi-query attention (Shazeer 2019): one K/V head shared by all query heads.
    Mqa {},
    /// Grouped-query attention (Ainslie et al. 2023): `kv_heads` K/V heads, each shared by
    /// `heads / kv_heads` query heads.
    Gqa { kv_heads: usize },
    /// Multi-head latent attention (DeepSeek-V2, 2024): K and V rebuilt from a shared latent
    /// `c_kv` of size `kv_latent`; optional query latent `q_latent`; a decoupled rotary key of
    /// size `rope_dim` shared by all heads.
    Mla {
        kv_latent: usize,
        #[serde(default)]
        q_latent: Option<usize>,
        #[serde(default = "default_rope_dim")]
        rope_dim: usize,
    },
}

fn default_rope_dim() -> usize {
    16
}

/// The kinds a user can write, for error messages.
pub const KINDS: &[&str] = &["mha", "mqa", "gqa", "mla"];

/// A config value that cannot work, with the field, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {allowed}")]
pub struct ConfigError {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

impl ConfigError {
    pub fn new(field: &str, value: impl ToString, allowed: impl Into<String>) -> Self {
        Self { field: field.into(), value: value.to_string(), allowed: allowed.into() }
    }
}

impl AttentionConfig {
    /// The `kind` string as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Mha {} => "mha",
            Self::Mqa {} => "mqa",
            Self::Gqa { .. } => "gqa",
            Self::Mla { .. } => "mla",
        }
    }

    /// Short label for tables, e.g. `gqa-2`, `mla-32`.
    pub fn label(&self) -> String {
        match self {
            Self::Gqa { kv_heads } => format!("gqa-{kv_heads}"),
            Self::Mla { kv_latent, .. } => format!("mla-{kv_latent}"),
            other => other.kind().to_string(),
        }
    }

    /// K/V heads for the grouped-query family, `None` for other kinds.
    pub fn kv_heads(&self, heads: usize) -> Option<usize> {
        match self {
            Self::Mha {} => Some(heads),
            Self::Mqa {} => Some(1),
            Self::Gqa { kv_heads } => Some(*kv_heads),
            Self::Mla { .. } => None,
        }
    }

    /// Checks the shape against the model's width and head count (fields named as in TOML).
    pub fn validate(&self, d_model: usize, heads: usize) -> Result<(), ConfigError> {
        if heads == 0 {
            return Err(ConfigError::new("model.heads", heads, "must be ≥ 1"));
        }
        if d_model == 0 || d_model % heads != 0 {
            return Err(ConfigError::new(
                "model.d_model",
                d_model,
                format!("must be a positive multiple of model.heads = {heads}"),
            ));
        }
        let head_dim = d_model / heads;
        match self {
            Self::Mha {} | Self::Mqa {} => {
                if head_dim % 2 != 0 {
                    return Err(ConfigError::new("model.d_model", d_model, format!("head_dim = d_model / heads = {head_dim} must be even for RoPE")));
                }
            }
            Self::Gqa { kv_heads } => {
                if *kv_heads == 0 || heads % kv_heads != 0 {
                    return Err(ConfigError::new(
                        "model.attention.kv_heads",
                        kv_heads,
                        format!("must divide model.heads = {heads} (allowed: {})", divisors(heads)),
                    ));
                }
                if head_dim % 2 != 0 {
                    return Err(ConfigError::new("model.d_model", d_model, format!("head_dim = d_model / heads = {head_dim} must be even for RoPE")));
                }
            }
            Self::Mla { kv_latent, q_latent, rope_dim } => {
                if *kv_latent == 0 {
                    return Err(ConfigError::new("model.attention.kv_latent", kv_latent, "must be ≥ 1"));
                }
                if q_latent == &Some(0) {
                    return Err(ConfigError::new("model.attention.q_latent", 0, "must be ≥ 1, or left out for no query compression"));
                }
                if *rope_dim == 0 || rope_dim % 2 != 0 || *rope_dim > head_dim {
                    return Err(ConfigError::new(
                        "model.attention.rope_dim",
                        rope_dim,
                        format!("must be even, ≥ 2 and ≤ head_dim = {head_dim}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn divisors(n: usize) -> String {
    (1..=n).filter(|d| n % d == 0).map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}
