//! Model configuration (the `[model]` table).

use std::collections::BTreeMap;

use attnlab_attn::{AttentionConfig, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `W₂(SiLU(x W₁) ⊙ x W₃)` (Shazeer 2020).
    Swiglu,
    /// `W₂ GELU(x W₁)` (GPT-2), tanh approximation.
    Gelu,
}

/// `model.head`: what reads the last layer's hidden states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// Final norm and the tied LM head at every position.
    #[default]
    Lm,
    /// MAD's compression head ([`crate::autoencoder`]): the hidden state at the last position
    /// is the only path to a per-position MLP decoder.
    Autoencoder,
}

impl Head {
    pub fn is_lm(&self) -> bool {
        *self == Head::Lm
    }
}

/// `model.positions`: position information outside the mixers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// None (default): positions reach the model only through its mixers (RoPE in softmax
    /// attention, order in a recurrence).
    #[default]
    None,
    /// Learned absolute position embeddings `[max_seq, d_model]` added to the token embeddings
    /// (GPT-2; the models of Zoology's MQAR study), on top of whatever the mixers do.
    Learned,
}

impl Positions {
    pub fn is_none(&self) -> bool {
        *self == Positions::None
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size; 0 = taken from the tokenizer.
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Longest context the model supports (RoPE tables, decode capacity).
    pub max_seq: usize,
    pub mlp: MlpKind,
    /// MLP hidden width; 0 = 4·d_model for GELU, the 8/3·d_model rounded up to a multiple of
    /// 8 for SwiGLU (equal parameters).
    pub mlp_hidden: usize,
    pub rope_base: f32,
    /// The mixer of every layer, unless `pattern` is set.
    pub attention: AttentionConfig,
    /// A hybrid layer schedule: layer i uses `pattern[i mod len]` (0-based), e.g. Kimi Linear's
    /// 3:1 `[{kind = "kda"}, {kind = "kda"}, {kind = "kda"}, {kind = "mla", rope = false}]`:
    /// layers 3, 7, 11, … are MLA. Replaces `attention` (which must then be left out). Empty
    /// (the default, left out of the saved config and the run id): every layer is `attention`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pattern: Vec<AttentionConfig>,
    /// Per-layer mixers that replace the schedule's, keyed by the 0-based layer index, e.g.
    /// `overrides = { 26 = { kind = "mla", rope = false } }` (Kimi Linear's last layer).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, AttentionConfig>,
    /// Dropout probability in training (nanoGPT's places but the attention weights): on the
    /// embeddings, and on the mixer's and the MLP's outputs before each residual add. 0 = off
    /// (left out of the saved config and the run id then).
    #[serde(skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// Ouro's looped depth (Zhu et al. 2025; the exit gate is `exit`): the layer stack applied
    /// `loops` = R times with shared weights, the final norm between loops (the normalised state
    /// is the next loop's input), the LM head after the last; one decode state per loop and
    /// layer (R× the state bytes), R× the FLOPs at the same parameters. 1 (default; left out of
    /// the saved config and the run id) = the plain model.
    #[serde(skip_serializing_if = "is_one")]
    pub loops: usize,
    /// With `loops` > 1: `"none"` (default; the last loop's logits) or `"learned"` (Ouro's
    /// exit gate `λ_r = σ(w·h_r + b)` after every loop and its stage-I objective, the expected
    /// cross-entropy under the exit distribution minus `exit_entropy` × its entropy; evaluation
    /// and decode read the last loop).
    #[serde(skip_serializing_if = "Exit::is_none")]
    pub exit: Exit,
    /// β of the exit objective's entropy term (Ouro: 0.05 at 4 loops).
    #[serde(skip_serializing_if = "is_default_entropy")]
    pub exit_entropy: f64,
    /// `"lm"` (default; left out of the saved config and the run id) or `"autoencoder"`
    /// (`mad_compression` only).
    #[serde(skip_serializing_if = "Head::is_lm")]
    pub head: Head,
    /// `"none"` (default; left out of the saved config and the run id) or `"learned"`
    /// ([`Positions::Learned`]).
    #[serde(skip_serializing_if = "Positions::is_none")]
    pub positions: Positions,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// `model.exit`: how a looped model leaves its loops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Every loop runs; the last loop's logits.
    #[default]
    None,
    /// Ouro's learned exit gate and stage-I objective ([`crate::looped::exit_loss`]).
    Learned,
}

impl Exit {
    pub fn is_none(&self) -> bool {
        *self == Exit::None
    }
}

/// Default β of the exit objective.
pub const EXIT_ENTROPY: f64 = 0.05;

fn is_default_entropy(v: &f64) -> bool {
    *v == EXIT_ENTROPY
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab: 0,
            d_model: 128,
            layers: 4,
            heads: 4,
            max_seq: 256,
            mlp: MlpKind::Gelu,
            mlp_hidden: 0,
            rope_base: 10_000.0,
            attention: AttentionConfig::Mha {},
            pattern: Vec::new(),
            overrides: BTreeMap::new(),
            dropout: 0.0,
            loops: 1,
            exit: Exit::None,
            exit_entropy: EXIT_ENTROPY,
            head: Head::Lm,
            positions: Positions::None,
        }
    }
}

impl ModelConfig {
    /// The MLP hidden width after defaults.
    pub fn mlp_hidden(&self) -> usize {
        match (self.mlp_hidden, self.mlp) {
            (0, MlpKind::Gelu) => 4 * self.d_model,
            (0, MlpKind::Swiglu) => (8 * self.d_model / 3).div_ceil(8) * 8,
            (h, _) => h,
        }
    }

    /// Checks every field; errors name the field (as in TOML), the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [("model.d_model", self.d_model), ("model.layers", self.layers), ("model.heads", self.heads), ("model.max_seq", self.max_seq)] {
            if value == 0 {
                return Err(ConfigError::new(field, value, "must be ≥ 1"));
            }
        }
        if !(self.rope_base > 1.0 && self.rope_base.is_finite()) {
            return Err(ConfigError::new("model.rope_base", self.rope_base, "must be finite and > 1"));
        }
        if !(1..=16).contains(&self.loops) {
            return Err(ConfigError::new("model.loops", self.loops, "must be in 1..=16 (1 = no looping)"));
        }
        if self.exit == Exit::Learned && self.loops < 2 {
            return Err(ConfigError::new("model.exit", "\"learned\"", "needs model.loops ≥ 2 (an exit gate after each loop)"));
        }
        if self.exit == Exit::None && self.exit_entropy != EXIT_ENTROPY {
            return Err(ConfigError::new("model.exit_entropy", self.exit_entropy, "only applies with model.exit = \"learned\""));
        }
        if !(self.exit_entropy >= 0.0 && self.exit_entropy.is_finite()) {
            return Err(ConfigError::new("model.exit_entropy", self.exit_entropy, "must be finite and ≥ 0"));
        }
        if self.loops > 1 && self.head == Head::Autoencoder {
            return Err(ConfigError::new("model.loops", self.loops, "must be 1 with model.head = \"autoencoder\""));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::new("model.dropout", self.dropout, "must be in [0, 1)"));
        }
        if self.head == Head::Autoencoder && (self.d_model < 4 || self.d_model % 2 != 0) {
            return Err(ConfigError::new("model.d_model", self.d_model, "must be even and ≥ 4 with model.head = \"autoencoder\" (its sinusoidal position table)"));
        }
        if !self.pattern.is_empty() && !matches!(self.attention, AttentionConfig::Mha {}) {
            return Err(ConfigError::new(
                "model.attention",
                self.attention.label(),
                "must be left out when model.pattern is set (the pattern names every layer's mixer)",
            ));
        }
        if self.pattern.is_empty() {
            self.attention.validate(self.d_model, self.heads)?;
        }
        if self.pattern.len() > self.layers {
            return Err(ConfigError::new(
                "model.pattern",
                format!("{} entries", self.pattern.len()),
                format!("must have at most model.layers = {} entries (later ones would never be used)", self.layers),
            ));
        }
        for (i, a) in self.pattern.iter().enumerate() {
            a.validate(self.d_model, self.heads).map_err(|e| e.renamed("model.attention", &format!("model.pattern[{i}]")))?;
        }
        for (i, a) in self.layer_attentions().enumerate() {
            if let AttentionConfig::Mta { conv_layers: Some(layers), .. } = a {
                if let Some(l) = layers.iter().find(|l| **l >= self.layers) {
                    return Err(ConfigError::new(
                        "model.attention.conv_layers",
                        l,
                        format!("layer {i}: entries are 0-based layer indices, 0..={} (model.layers = {})", self.layers - 1, self.layers),
                    ));
                }
            }
            if let AttentionConfig::LogLinear { levels: Some(l), .. } = a {
                let need = attnlab_attn::recurrent::log_linear::levels_for(self.max_seq);
                if *l < need {
                    return Err(ConfigError::new(
                        "model.attention.levels",
                        l,
                        format!("layer {i}: must be ≥ {need} to cover model.max_seq = {} positions (positions < 2^(levels − 1))", self.max_seq),
                    ));
                }
            }
        }
        for (key, a) in &self.overrides {
            match key.parse::<usize>() {
                Ok(layer) if layer < self.layers && key == &layer.to_string() => {}
                _ => {
                    return Err(ConfigError::new(
                        "model.overrides",
                        key,
                        format!("keys are 0-based layer indices, 0..={} (model.layers = {})", self.layers.saturating_sub(1), self.layers),
                    ))
                }
            }
            a.validate(self.d_model, self.heads).map_err(|e| e.renamed("model.attention", &format!("model.overrides.{key}")))?;
        }
        Ok(())
    }

    /// Why this model cannot decode token by token (`None`: it can): a MoSA layer with the
    /// paper's expert-choice routing (not causal: it has no decode).
    pub fn decode_error(&self) -> Option<ConfigError> {
        self.layer_attentions().find(|a| matches!(a, AttentionConfig::Mosa { routing: attnlab_attn::config::MosaRouting::ExpertChoice, .. })).map(|a| {
            ConfigError::new(
                "model.attention.routing",
                "\"expert_choice\"",
                format!("{} chooses tokens by scores of later tokens (not causal) and has no token-by-token decode (allowed for generate and bench decode: routing = \"prefix\")", a.label()),
            )
        })
    }

    /// Whether the layers mix kinds (a pattern or overrides).
    pub fn is_hybrid(&self) -> bool {
        !self.pattern.is_empty() || !self.overrides.is_empty()
    }

    /// The mixer of layer `layer` (0-based): its override, else the pattern's entry
    /// `layer mod len`, else `attention`.
    pub fn layer_attention(&self, layer: usize) -> &AttentionConfig {
        if let Some(a) = self.overrides.get(&layer.to_string()) {
            return a;
        }
        if self.pattern.is_empty() {
            &self.attention
        } else {
            &self.pattern[layer % self.pattern.len()]
        }
    }

    /// Every layer's mixer, in order.
    pub fn layer_attentions(&self) -> impl Iterator<Item = &AttentionConfig> {
        (0..self.layers).map(|i| self.layer_attention(i))
    }

    /// The mixers' label for tables: `attention`'s label (`gqa-2`) for a uniform model; for a
    /// schedule its run-length form in layer order, so the ratio shows (`kda×3+mla-nope`), then
    /// any overrides (`,L26=mla-nope`).
    pub fn mixer_label(&self) -> String {
        if !self.is_hybrid() {
            return self.attention.label();
        }
        let base = if self.pattern.is_empty() { std::slice::from_ref(&self.attention) } else { &self.pattern[..] };
        let mut runs: Vec<(String, usize)> = Vec::new();
        for a in base {
            let label = a.label();
            match runs.last_mut() {
                Some((last, n)) if *last == label => *n += 1,
                _ => runs.push((label, 1)),
            }
        }
        let mut label = runs.iter().map(|(l, n)| if *n == 1 { l.clone() } else { format!("{l}×{n}") }).collect::<Vec<_>>().join("+");
        let mut overrides: Vec<(usize, &AttentionConfig)> = self.overrides.iter().filter_map(|(k, a)| Some((k.parse().ok()?, a))).collect();
        overrides.sort_by_key(|(i, _)| *i);
        for (i, a) in overrides {
            label.push_str(&format!(",L{i}={}", a.label()));
        }
        label
    }
}
