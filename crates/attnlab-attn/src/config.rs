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
    /// size `rope_dim` shared by all heads. Left out, `kv_latent` and `rope_dim` take
    /// DeepSeek-V2's ratios to the head width: d_c = 4·d_h, d_R = d_h / 2. `rope = false`:
    /// NoPE as Kimi Linear's MLA (the `rope_dim` slices stay, unrotated).
    Mla {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kv_latent: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        q_latent: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rope_dim: Option<usize>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        rope: bool,
    },
    /// Sliding-window attention (Longformer / Mistral): each token sees the last `window`
    /// tokens (itself included) plus the first `global_tokens` of the sequence (attention
    /// sinks, Xiao et al. 2023). Decode keeps a ring buffer of `global_tokens + window` tokens.
    SlidingWindow {
        window: usize,
        #[serde(default)]
        global_tokens: usize,
        #[serde(default)]
        kv_heads: Option<usize>,
    },
    /// Strided sparse attention (Child et al. 2019, strided pattern): the first half of the
    /// heads see the last `block` tokens, the second half every `stride`-th token back.
    StridedSparse {
        block: usize,
        stride: usize,
        #[serde(default)]
        kv_heads: Option<usize>,
    },
    /// Fixed sparse attention (Child et al. 2019, fixed pattern): every head sees its own
    /// `block` (block-local, causal) and the last `summary` positions of every earlier block
    /// (summary columns). `stride` is only read to say that the strided pattern is now
    /// `strided_sparse` (runs and files from before the rename).
    FixedSparse {
        block: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<usize>,
        #[serde(default)]
        kv_heads: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// Causal attention computed tile by tile with an online softmax (FlashAttention's
    /// algorithm, Dao et al. 2022): `block_q × block_k` score tiles, never the `T × T` matrix.
    Tiled {
        #[serde(default = "default_block")]
        block_q: usize,
        #[serde(default = "default_block")]
        block_k: usize,
        #[serde(default)]
        kv_heads: Option<usize>,
    },
    /// Gated attention (Qiu et al. 2025, Qwen3-Next): the SDPA output times an elementwise
    /// sigmoid gate `σ(x W_θ)` per head (bias-free, as the paper: σ(0) = 0.5 at init).
    /// `gate_bias = b` adds a learnable bias initialised to b (e.g. 3: the gate starts at
    /// σ(3) ≈ 0.95 and does not halve the output).
    ///
    /// Qwen3-Next's attention adds `partial_rope = 0.25` (RoPE on the first quarter of each
    /// head's dims, rotate-half within them; 0 = NoPE, left out = all) and `qk_norm = true`
    /// (per-head RMSNorm of q and k over d_h, before RoPE; eps 1e-5 as attnlab's other norms,
    /// Qwen's is 1e-6).
    Gated {
        #[serde(default)]
        kv_heads: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate_bias: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partial_rope: Option<f64>,
        #[serde(default, skip_serializing_if = "is_false")]
        qk_norm: bool,
    },
    /// Differential attention (Ye et al. 2024): `heads / 2` heads, each the difference of two
    /// softmax maps, `(softmax(Q₁K₁ᵀ) − λ softmax(Q₂K₂ᵀ)) V`.
    Differential {},
    /// Linear attention (Katharopoulos et al. 2020): softmax replaced by a feature map φ,
    /// `S_t = S_{t−1} + φ(k_t) v_tᵀ`, `o_t = φ(q_t)ᵀ S_t`; a `d_φ × d_h` state per head instead
    /// of a KV cache. Default output: RMSNorm over each head (fla's layer), not the normaliser
    /// `φ(q)ᵀS / φ(q)ᵀz` (`normalize = true`), whose denominator can approach 0 and diverge.
    Linear {
        #[serde(default)]
        feature_map: FeatureMap,
        #[serde(default, skip_serializing_if = "is_false")]
        normalize: bool,
        #[serde(default = "default_linear_chunk", skip_serializing_if = "is_default_linear_chunk")]
        chunk: usize,
    },
    /// Log-linear attention (Guo et al. 2025) over linear attention: keys in Fenwick buckets by
    /// level `bit-length(t XOR s)`, each weighted per query by `λ = softplus(Λ ⊙ x W_l)`; decode
    /// keeps one state per level (grows with log t). `levels` = L (positions < 2^(L−1)); left
    /// out, enough for `model.max_seq`. Training: the chunked O(T log T) form, `chunk` a power
    /// of two (64).
    ///
    /// `base = "gated_deltanet"`: over Gated DeltaNet at its defaults (one delta-rule state per
    /// level, every level taking the transition), trained by the token recurrence (slow);
    /// `feature_map` and `chunk` are the linear base's.
    LogLinear {
        #[serde(default, skip_serializing_if = "LogLinearBase::is_default")]
        base: LogLinearBase,
        #[serde(default)]
        feature_map: FeatureMap,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        levels: Option<usize>,
        #[serde(default = "default_linear_chunk", skip_serializing_if = "is_default_linear_chunk")]
        chunk: usize,
    },
    /// Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025): the delta rule with a per-head decay,
    /// `S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`; short convs on q, k, v, L2-normalised
    /// q and k, output RMSNorm ⊙ SiLU gate. `head_dim` (d_k) defaults to d_model / heads,
    /// d_v = `expand_v`·d_k. `conv`, `gate`, `l2_norm` switch parts off for ablations.
    /// `value_heads = H_v` (a multiple of `model.heads` = H_k): Qwen3-Next's grouped value
    /// heads, each key head serving H_v / H_k consecutive value heads, with β, the decay and
    /// the state per value head.
    GatedDeltanet {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value_heads: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_dim: Option<usize>,
        #[serde(default = "default_gdn_expand_v", skip_serializing_if = "is_two")]
        expand_v: usize,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        conv: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        gate: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        l2_norm: bool,
        #[serde(default, skip_serializing_if = "ConvInit::is_default")]
        conv_init: ConvInit,
        #[serde(default = "default_delta_chunk", skip_serializing_if = "is_default_delta_chunk")]
        chunk: usize,
    },
    /// Kimi Delta Attention (Kimi Linear, Moonshot AI 2025): Gated DeltaNet with a per-channel
    /// (per key dimension) decay from a low-rank gate projection,
    /// `S_t = (I − β_t k_t k_tᵀ) Diag(α_t) S_{t−1} + β_t k_t v_tᵀ`, and a low-rank sigmoid output
    /// gate. `lower_bound = lb` ∈ [−5, 0) uses fla's bounded "safe" gate `g = lb·σ(e^{A_log}(raw + dt_bias))`.
    Kda {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_dim: Option<usize>,
        #[serde(default = "default_kda_expand_v", skip_serializing_if = "is_one")]
        expand_v: usize,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        conv: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lower_bound: Option<f64>,
        #[serde(default, skip_serializing_if = "ConvInit::is_default")]
        conv_init: ConvInit,
        #[serde(default = "default_kda_chunk", skip_serializing_if = "is_default_kda_chunk")]
        chunk: usize,
    },
    /// DeepSeek Sparse Attention (DeepSeek-V3.2-Exp, 2025) on MLA (or on GQA with `kv_heads`
    /// K/V heads when that is set): a lightning indexer
    /// (`index_heads` heads of `index_dim`, one shared key) scores the earlier keys of each query,
    /// which then attends (MLA, every head) to its `top_k` best only. The MLA fields as `mla`
    /// (with RoPE). The indexer trains on its own KL loss (`[[train.stages]]` with
    /// `aux = { indexer_kl_dense = 1.0 }` for the dense warm-up, `{ indexer_kl = 1.0 }` sparse).
    Dsa {
        /// Set: DSA on grouped-query attention with this many K/V heads instead of MLA.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kv_heads: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kv_latent: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        q_latent: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rope_dim: Option<usize>,
        /// Always serialised (run ids of runs that set it stay as they were).
        #[serde(default = "default_top_k")]
        top_k: usize,
        #[serde(default = "default_index_heads", skip_serializing_if = "is_default_index_heads")]
        index_heads: usize,
        #[serde(default = "default_index_dim", skip_serializing_if = "is_default_index_dim")]
        index_dim: usize,
    },
    /// LoLCATs (Zhang et al. 2024): a softmax layer linearised after training
    /// (`attnlab linearize`): its W_qkv, W_o and RoPE kept, a learned feature map per query head
    /// `φ(x) = [softmax(xW), softmax(−xW)]` (`feature_dim` = f, d_φ = 2f; `feature_map = "elu1"`:
    /// elu + 1, nothing learned), a softmax window over the previous and the current block of
    /// `window` tokens plus linear attention over everything before (`window = 0`: linear
    /// attention only), mixed by γ_h = σ(w_h) (0.1 at init), and LoRA adapters of rank
    /// `lora_rank` (0 = none) and `lora_alpha` on W_q, W_k, W_v, W_o (B = 0 at init).
    Lolcats {
        #[serde(default)]
        kv_heads: Option<usize>,
        #[serde(default = "default_lolcats_window", skip_serializing_if = "is_default_lolcats_window")]
        window: usize,
        #[serde(default = "default_lolcats_window", skip_serializing_if = "is_default_lolcats_window")]
        feature_dim: usize,
        #[serde(default, skip_serializing_if = "LolcatsMap::is_default")]
        feature_map: LolcatsMap,
        #[serde(default = "default_lora_rank", skip_serializing_if = "is_default_lora_rank")]
        lora_rank: usize,
        #[serde(default = "default_lora_alpha", skip_serializing_if = "is_default_lora_alpha")]
        lora_alpha: f64,
    },
    /// Multi-Token Attention (Golovneva et al. 2025): grouped-query attention whose score map
    /// goes through a depthwise key–query convolution (`query_kernel` × `key_kernel`, identity
    /// at init; masked entries 0 before it, −∞ after), a pre-softmax H×H head mixing
    /// (`pre_mix`), an optional post-softmax convolution (`post_conv`), post-softmax head
    /// mixing in groups of `mix_group` heads (`post_mix`; left out: all heads), then a per-head
    /// RMSNorm with one shared scale (`norm`; `depth_scale`: × (1 − λ_init(layer))) and a
    /// sigmoid gate (`gate`). Defaults: the paper's 830M model (6 × 11 kernels, both
    /// convolutions, both mixings over all heads, norm and gate), with the convolutions in
    /// every layer unless `conv_layers` lists them (0-based; the paper: 2, 6, 10, …).
    Mta {
        #[serde(default)]
        kv_heads: Option<usize>,
        #[serde(default = "default_mta_query_kernel", skip_serializing_if = "is_default_mta_query_kernel")]
        query_kernel: usize,
        #[serde(default = "default_mta_key_kernel", skip_serializing_if = "is_default_mta_key_kernel")]
        key_kernel: usize,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        post_conv: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        pre_mix: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        post_mix: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mix_group: Option<usize>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        norm: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        depth_scale: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        gate: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv_layers: Option<Vec<usize>>,
    },
    /// Mixture of Sparse Attention (Piękos et al. 2025): `dense_heads` causal heads beside
    /// `mosa_heads` routed heads (left out: model.heads − dense_heads), all of width `head_dim`
    /// (left out: d_model / model.heads). Each routed head has a sigmoid router, chooses about
    /// T/`rho` tokens and attends among them at their original positions, its output scaled by
    /// the router score. `routing = "prefix"` (default, causal: a token is chosen iff its score
    /// ranks in the top ⌈(t + 1)/ρ⌉ of the prefix, within that budget) or `"expert_choice"` (the
    /// paper's top-k over the whole sequence: **not causal**, no decode).
    Mosa {
        #[serde(default = "default_mosa_rho", skip_serializing_if = "is_default_mosa_rho")]
        rho: usize,
        #[serde(default, skip_serializing_if = "MosaRouting::is_default")]
        routing: MosaRouting,
        #[serde(default = "default_mosa_dense", skip_serializing_if = "is_default_mosa_dense")]
        dense_heads: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mosa_heads: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_dim: Option<usize>,
    },
}

/// How MoSA's routed heads choose their tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MosaRouting {
    /// Causal: chosen iff the score ranks in the top ⌈(t + 1)/ρ⌉ of the prefix (budgeted).
    #[default]
    Prefix,
    /// The paper's expert choice: the top min(max(⌊T/ρ⌋, 2), T) of the whole sequence (not
    /// causal).
    ExpertChoice,
}

impl MosaRouting {
    fn is_default(&self) -> bool {
        *self == Self::Prefix
    }
}

fn default_mosa_rho() -> usize {
    4
}
fn is_default_mosa_rho(v: &usize) -> bool {
    *v == 4
}
fn default_mosa_dense() -> usize {
    1
}
fn is_default_mosa_dense(v: &usize) -> bool {
    *v == 1
}

/// MTA's kernel at the paper's 830M config: c_q = 6 queries × c_k = 11 keys.
fn default_mta_query_kernel() -> usize {
    6
}
fn is_default_mta_query_kernel(v: &usize) -> bool {
    *v == 6
}
fn default_mta_key_kernel() -> usize {
    11
}
fn is_default_mta_key_kernel(v: &usize) -> bool {
    *v == 11
}

/// DSA's keys per query when left out: sparse from T = 65 on (DeepSeek-V3.2 keeps 2,048 of
/// up to 128K; a run whose block is ≤ top_k gets a warning, its layer being dense).
fn default_top_k() -> usize {
    64
}

/// DSA's indexer heads and width at baby scale (MECHANISMS.md §5: H_I = 4, d_I = 32).
fn default_index_heads() -> usize {
    4
}
fn is_default_index_heads(v: &usize) -> bool {
    *v == 4
}
fn default_index_dim() -> usize {
    32
}
fn is_default_index_dim(v: &usize) -> bool {
    *v == 32
}

/// LoLCATs' feature map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LolcatsMap {
    /// `[softmax(xW_h), softmax(−xW_h)]`, a learned `d_h × f` map per query head (the paper's).
    #[default]
    Softmax,
    /// `elu(x) + 1`, nothing learned (the paper's ablation).
    Elu1,
}

impl LolcatsMap {
    fn is_default(&self) -> bool {
        *self == Self::Softmax
    }
}

/// LoLCATs' window block and feature width (64 both, as the paper's Llama 3 8B config).
pub const LOLCATS_WINDOW: usize = 64;
fn default_lolcats_window() -> usize {
    LOLCATS_WINDOW
}
fn is_default_lolcats_window(v: &usize) -> bool {
    *v == LOLCATS_WINDOW
}
fn default_lora_rank() -> usize {
    8
}
fn is_default_lora_rank(v: &usize) -> bool {
    *v == 8
}
fn default_lora_alpha() -> f64 {
    16.0
}
fn is_default_lora_alpha(v: &f64) -> bool {
    *v == 16.0
}

/// Linear attention's feature map φ, applied per head after the head split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMap {
    /// `elu(x) + 1` (Katharopoulos et al. 2020): positive, d_φ = d_h.
    #[default]
    Elu1,
    /// `relu(x)`: non-negative, can vanish on every feature.
    Relu,
    /// `x`: no map (changes sign; only with the RMSNorm output).
    Identity,
    /// fla's Hedgehog map (Zhang et al. 2024): `softmax([2(xW + b), −2(xW + b)])`, d_φ = 2·d_h,
    /// one learnable `d_h × d_h` map shared by heads (W = I, b = 0 at init), separate for q and k.
    Hedgehog,
}

impl FeatureMap {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Elu1 => "elu1",
            Self::Relu => "relu",
            Self::Identity => "identity",
            Self::Hedgehog => "hedgehog",
        }
    }
}

/// The mixer log-linear attention is built over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLinearBase {
    #[default]
    Linear,
    GatedDeltanet,
}

impl LogLinearBase {
    fn is_default(&self) -> bool {
        *self == Self::Linear
    }
}

/// Initial weights of the short convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvInit {
    /// PyTorch's Conv1d default, as NVlabs' Gated DeltaNet: U(±1/√kernel).
    #[default]
    Kaiming,
    /// fla's `_init_weights`: N(0, 0.02²) (shrinks the signal ≈ 25× at kernel 4).
    Fla,
}

impl ConvInit {
    fn is_default(&self) -> bool {
        *self == Self::Kaiming
    }
}

fn default_block() -> usize {
    64
}

/// Chunk of linear attention's chunkwise-parallel form.
pub const LINEAR_CHUNK: usize = 64;
/// Chunk of Gated DeltaNet's WY form.
pub const DELTA_CHUNK: usize = 32;
/// Chunk of KDA's WY form (its intra-chunk terms are C × C × d_k).
pub const KDA_CHUNK: usize = 16;

fn default_linear_chunk() -> usize {
    LINEAR_CHUNK
}
fn is_default_linear_chunk(c: &usize) -> bool {
    *c == LINEAR_CHUNK
}
fn default_delta_chunk() -> usize {
    DELTA_CHUNK
}
fn is_default_delta_chunk(c: &usize) -> bool {
    *c == DELTA_CHUNK
}
fn default_kda_chunk() -> usize {
    KDA_CHUNK
}
fn is_default_kda_chunk(c: &usize) -> bool {
    *c == KDA_CHUNK
}
fn default_gdn_expand_v() -> usize {
    2
}
fn default_kda_expand_v() -> usize {
    1
}
fn is_two(v: &usize) -> bool {
    *v == 2
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The kinds a user can write, for error messages.
pub const KINDS: &[&str] = &[
    "mha", "mqa", "gqa", "mla", "sliding_window", "strided_sparse", "fixed_sparse", "tiled", "gated", "differential", "linear",
    "log_linear", "gated_deltanet", "kda", "dsa", "lolcats", "mta", "mosa",
];

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

    /// The same error with the field's prefix `from` written as `to` (an attention config
    /// validated as `model.pattern[2]` rather than `model.attention`).
    pub fn renamed(mut self, from: &str, to: &str) -> Self {
        if let Some(rest) = self.field.strip_prefix(from) {
            self.field = format!("{to}{rest}");
        }
        self
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
            Self::SlidingWindow { .. } => "sliding_window",
            Self::StridedSparse { .. } => "strided_sparse",
            Self::FixedSparse { .. } => "fixed_sparse",
            Self::Tiled { .. } => "tiled",
            Self::Gated { .. } => "gated",
            Self::Differential {} => "differential",
            Self::Linear { .. } => "linear",
            Self::LogLinear { .. } => "log_linear",
            Self::GatedDeltanet { .. } => "gated_deltanet",
            Self::Kda { .. } => "kda",
            Self::Lolcats { .. } => "lolcats",
            Self::Dsa { .. } => "dsa",
            Self::Mta { .. } => "mta",
            Self::Mosa { .. } => "mosa",
        }
    }

    /// Short label for tables naming every hyper-parameter set away from its default, e.g.
    /// `gqa-2`, `mla` (DeepSeek-V2 ratios), `mla-c16-r4`, `swa-64`, `gated-b3-kv2`.
    pub fn label(&self) -> String {
        let base = match self {
            Self::Gqa { kv_heads } => return format!("gqa-{kv_heads}"),
            Self::Mla { kv_latent, q_latent, rope_dim, rope } => {
                let mut label = "mla".to_string();
                for (tag, v) in [("c", kv_latent), ("q", q_latent), ("r", rope_dim)] {
                    if let Some(v) = v {
                        label.push_str(&format!("-{tag}{v}"));
                    }
                }
                if !rope {
                    label.push_str("-nope");
                }
                return label;
            }
            Self::SlidingWindow { window, global_tokens: 0, .. } => format!("swa-{window}"),
            Self::SlidingWindow { window, global_tokens, .. } => format!("swa-{window}+{global_tokens}"),
            Self::StridedSparse { block, stride, .. } => format!("strided-{block}/{stride}"),
            Self::FixedSparse { block, summary, .. } => format!("fixed-{block}/{}", summary.unwrap_or(0)),
            Self::Gated { gate_bias, partial_rope, qk_norm, .. } => {
                let mut label = "gated".to_string();
                if let Some(b) = gate_bias {
                    label.push_str(&format!("-b{b}"));
                }
                if let Some(f) = partial_rope {
                    label.push_str(&format!("-p{f}"));
                }
                if *qk_norm {
                    label.push_str("-qkn");
                }
                label
            }
            Self::Tiled { block_q, block_k, .. } => format!("tiled-{block_q}x{block_k}"),
            Self::Differential {} => "diff".to_string(),
            Self::Linear { feature_map, normalize, chunk } => {
                let mut label = "linear".to_string();
                if *feature_map != FeatureMap::Elu1 {
                    label.push_str(&format!("-{}", feature_map.name()));
                }
                if *normalize {
                    label.push_str("-norm");
                }
                push_chunk(&mut label, *chunk, LINEAR_CHUNK);
                return label;
            }
            Self::LogLinear { base, feature_map, levels, chunk } => {
                let mut label = "loglinear".to_string();
                if *base == LogLinearBase::GatedDeltanet {
                    label.push_str("-gdn");
                }
                if *feature_map != FeatureMap::Elu1 {
                    label.push_str(&format!("-{}", feature_map.name()));
                }
                if let Some(l) = levels {
                    label.push_str(&format!("-L{l}"));
                }
                push_chunk(&mut label, *chunk, LINEAR_CHUNK);
                return label;
            }
            Self::GatedDeltanet { value_heads, head_dim, expand_v, conv, gate, l2_norm, conv_init, chunk } => {
                let mut label = "gdn".to_string();
                push_delta_common(&mut label, *head_dim, *expand_v, 2, *conv, *conv_init);
                if let Some(hv) = value_heads {
                    label.push_str(&format!("-hv{hv}"));
                }
                for (off, tag) in [(!gate, "nogate"), (!l2_norm, "nol2")] {
                    if off {
                        label.push_str(&format!("-{tag}"));
                    }
                }
                push_chunk(&mut label, *chunk, DELTA_CHUNK);
                return label;
            }
            Self::Kda { head_dim, expand_v, conv, lower_bound, conv_init, chunk } => {
                let mut label = "kda".to_string();
                push_delta_common(&mut label, *head_dim, *expand_v, 1, *conv, *conv_init);
                if let Some(lb) = lower_bound {
                    label.push_str(&format!("-lb{lb}"));
                }
                push_chunk(&mut label, *chunk, KDA_CHUNK);
                return label;
            }
            Self::Dsa { kv_heads, kv_latent, q_latent, rope_dim, top_k, index_heads, index_dim } => {
                let mut label = format!("dsa-k{top_k}");
                if let Some(g) = kv_heads {
                    label.push_str(&format!("-gqa{g}"));
                }
                for (tag, v) in [("c", kv_latent), ("q", q_latent), ("r", rope_dim)] {
                    if let Some(v) = v {
                        label.push_str(&format!("-{tag}{v}"));
                    }
                }
                if *index_heads != 4 {
                    label.push_str(&format!("-ih{index_heads}"));
                }
                if *index_dim != 32 {
                    label.push_str(&format!("-id{index_dim}"));
                }
                return label;
            }
            Self::Lolcats { window, feature_dim, feature_map, lora_rank, lora_alpha, .. } => {
                let mut label = "lolcats".to_string();
                match window {
                    0 => label.push_str("-nowin"),
                    w if *w != LOLCATS_WINDOW => label.push_str(&format!("-w{w}")),
                    _ => {}
                }
                if *feature_map == LolcatsMap::Elu1 {
                    label.push_str("-elu1");
                } else if *feature_dim != LOLCATS_WINDOW {
                    label.push_str(&format!("-f{feature_dim}"));
                }
                if *lora_rank != 8 {
                    label.push_str(&format!("-r{lora_rank}"));
                }
                if *lora_alpha != 16.0 {
                    label.push_str(&format!("-a{lora_alpha}"));
                }
                label
            }
            Self::Mta { query_kernel, key_kernel, post_conv, pre_mix, post_mix, mix_group, norm, depth_scale, gate, conv_layers, .. } => {
                let mut label = "mta".to_string();
                if (*query_kernel, *key_kernel) != (6, 11) {
                    label.push_str(&format!("-{query_kernel}x{key_kernel}"));
                }
                match conv_layers.as_deref() {
                    Some([]) => label.push_str("-noconv"),
                    Some(layers) => {
                        let list: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
                        label.push_str(&format!("-L{}", list.join(",")));
                    }
                    None => {}
                }
                if let Some(c) = mix_group {
                    label.push_str(&format!("-g{c}"));
                }
                for (off, tag) in [(!post_conv, "nopost"), (!pre_mix, "noprem"), (!post_mix, "nopostm"), (!norm, "nonorm"), (*depth_scale, "ds"), (!gate, "nogate")] {
                    if off {
                        label.push_str(&format!("-{tag}"));
                    }
                }
                label
            }
            Self::Mosa { rho, routing, dense_heads, mosa_heads, head_dim } => {
                let mut label = format!("mosa-r{rho}");
                if let Some(e) = mosa_heads {
                    label.push_str(&format!("-e{e}"));
                }
                if *dense_heads != 1 {
                    label.push_str(&format!("-dense{dense_heads}"));
                }
                if let Some(h) = head_dim {
                    label.push_str(&format!("-h{h}"));
                }
                if *routing == MosaRouting::ExpertChoice {
                    label.push_str("-noncausal");
                }
                return label;
            }
            other => other.kind().to_string(),
        };
        match self.explicit_kv_heads() {
            Some(kv) => format!("{base}-kv{kv}"),
            None => base,
        }
    }

    /// `kv_heads` where the user may set it on a softmax-family kind.
    fn explicit_kv_heads(&self) -> Option<usize> {
        match self {
            Self::SlidingWindow { kv_heads, .. }
            | Self::StridedSparse { kv_heads, .. }
            | Self::FixedSparse { kv_heads, .. }
            | Self::Tiled { kv_heads, .. }
            | Self::Gated { kv_heads, .. }
            | Self::Lolcats { kv_heads, .. }
            | Self::Mta { kv_heads, .. } => *kv_heads,
            _ => None,
        }
    }

    /// K/V heads for the grouped-query family, `None` for other kinds.
    pub fn kv_heads(&self, heads: usize) -> Option<usize> {
        match self {
            Self::Mha {} => Some(heads),
            Self::Mqa {} => Some(1),
            Self::Gqa { kv_heads } => Some(*kv_heads),
            Self::Dsa { kv_heads, .. } => *kv_heads,
            Self::Mla { .. } | Self::Mosa { .. } | Self::Differential {} | Self::Linear { .. } | Self::LogLinear { .. } | Self::GatedDeltanet { .. } | Self::Kda { .. } => None,
            other => Some(other.explicit_kv_heads().unwrap_or(heads)),
        }
    }

    /// MLA's latent width and rotary width for head width `head_dim`: as set, or DeepSeek-V2's
    /// ratios (d_c = 4·d_h, d_R = d_h / 2). `None` for other kinds.
    pub fn mla_dims(&self, head_dim: usize) -> Option<(usize, usize)> {
        match self {
            Self::Mla { kv_latent, rope_dim, .. } | Self::Dsa { kv_latent, rope_dim, kv_heads: None, .. } => Some((kv_latent.unwrap_or(4 * head_dim), rope_dim.unwrap_or(head_dim / 2))),
            _ => None,
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
        let even_head_dim = || {
            if head_dim % 2 != 0 {
                return Err(ConfigError::new("model.d_model", d_model, format!("head_dim = d_model / heads = {head_dim} must be even for RoPE")));
            }
            Ok(())
        };
        let positive = |field: &str, value: usize| {
            if value == 0 {
                return Err(ConfigError::new(&format!("model.attention.{field}"), value, "must be ≥ 1"));
            }
            Ok(())
        };
        if let Some(kv_heads) = self.kv_heads(heads) {
            if kv_heads == 0 || heads % kv_heads != 0 {
                return Err(ConfigError::new(
                    "model.attention.kv_heads",
                    kv_heads,
                    format!("must divide model.heads = {heads} (allowed: {})", divisors(heads)),
                ));
            }
            even_head_dim()?;
        }
        match self {
            Self::Dsa { kv_heads: Some(_), kv_latent, q_latent, rope_dim, top_k, index_heads, index_dim } => {
                for (field, value) in [("kv_latent", kv_latent), ("q_latent", q_latent)] {
                    if let Some(v) = value {
                        return Err(ConfigError::new(&format!("model.attention.{field}"), v, "is an MLA field; with kv_heads set dsa is on grouped-query attention (leave kv_heads out for MLA)"));
                    }
                }
                match rope_dim {
                    Some(r) if *r == 0 || r % 2 != 0 || r > index_dim => {
                        return Err(ConfigError::new("model.attention.rope_dim", r, format!("must be even, ≥ 2 and ≤ index_dim = {index_dim} (the indexer's rotated dims)")));
                    }
                    None if head_dim / 2 < 2 || (head_dim / 2) % 2 != 0 || head_dim / 2 > *index_dim => {
                        return Err(ConfigError::new(
                            "model.attention.index_dim",
                            index_dim,
                            format!("must be ≥ the indexer's rotated dims, head_dim / 2 = {} when rope_dim is left out (or set rope_dim: even, ≥ 2, ≤ index_dim)", head_dim / 2),
                        ));
                    }
                    _ => {}
                }
                positive("top_k", *top_k)?;
                positive("index_heads", *index_heads)?;
            }
            Self::Mla { q_latent, rope_dim: set_rope_dim, .. } | Self::Dsa { q_latent, rope_dim: set_rope_dim, .. } => {
                let (kv_latent, rope_dim) = self.mla_dims(head_dim).expect("mla");
                positive("kv_latent", kv_latent)?;
                if q_latent == &Some(0) {
                    return Err(ConfigError::new("model.attention.q_latent", 0, "must be ≥ 1, or left out for no query compression"));
                }
                if rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim {
                    let default = if set_rope_dim.is_none() { " (left out, it is head_dim / 2: set it)" } else { "" };
                    return Err(ConfigError::new(
                        "model.attention.rope_dim",
                        rope_dim,
                        format!("must be even, ≥ 2 and ≤ head_dim = {head_dim}{default}"),
                    ));
                }
                if let Self::Dsa { top_k, index_heads, index_dim, .. } = self {
                    positive("top_k", *top_k)?;
                    positive("index_heads", *index_heads)?;
                    if *index_dim < rope_dim {
                        return Err(ConfigError::new("model.attention.index_dim", index_dim, format!("must be ≥ rope_dim = {rope_dim} (RoPE covers the indexer's first rope_dim dims)")));
                    }
                }
            }
            Self::SlidingWindow { window, .. } => positive("window", *window)?,
            Self::StridedSparse { block, stride, .. } => {
                positive("block", *block)?;
                positive("stride", *stride)?;
                if heads < 2 {
                    return Err(ConfigError::new("model.heads", heads, "strided_sparse needs ≥ 2 heads (half local, half strided)"));
                }
            }
            Self::FixedSparse { block, summary, stride, .. } => {
                if let Some(stride) = stride {
                    return Err(ConfigError::new(
                        "model.attention.stride",
                        stride,
                        "fixed_sparse is now Child et al.'s fixed pattern (block, summary); the strided pattern (block, stride) is kind = \"strided_sparse\"",
                    ));
                }
                positive("block", *block)?;
                match summary {
                    None => {
                        return Err(ConfigError::new(
                            "model.attention.summary",
                            "(missing)",
                            format!("required: how many last positions of each block later blocks see, 1..={block} (model.attention.block)"),
                        ))
                    }
                    Some(c) if *c == 0 || c > block => {
                        return Err(ConfigError::new("model.attention.summary", c, format!("must be in 1..={block} (model.attention.block)")))
                    }
                    Some(_) => {}
                }
            }
            Self::Tiled { block_q, block_k, .. } => {
                positive("block_q", *block_q)?;
                positive("block_k", *block_k)?;
            }
            Self::Differential {} => {
                if heads % 2 != 0 {
                    return Err(ConfigError::new("model.heads", heads, "differential attention needs an even head count (it uses heads / 2 differential heads)"));
                }
                even_head_dim()?;
            }
            Self::Gated { gate_bias, partial_rope, .. } => {
                if let Some(b) = gate_bias.filter(|b| !b.is_finite()) {
                    return Err(ConfigError::new("model.attention.gate_bias", b, "must be a finite number"));
                }
                if let Some(f) = partial_rope {
                    let dims = self.rope_dims(head_dim);
                    if !(0.0..=1.0).contains(f) || dims.is_some_and(|r| r % 2 != 0) {
                        return Err(ConfigError::new(
                            "model.attention.partial_rope",
                            f,
                            format!("must be in [0, 1] with an even number of rotated dims, round(partial_rope · head_dim = {head_dim}) (0 = NoPE)"),
                        ));
                    }
                }
            }
            Self::Linear { feature_map, normalize, chunk } => {
                positive("chunk", *chunk)?;
                if *normalize && *feature_map == FeatureMap::Identity {
                    return Err(ConfigError::new(
                        "model.attention.normalize",
                        true,
                        "needs a positive feature map (elu1, hedgehog; relu may vanish): with identity the denominator φ(q)ᵀz changes sign",
                    ));
                }
            }
            Self::LogLinear { base, feature_map, levels, chunk } => {
                if *base == LogLinearBase::GatedDeltanet && (*feature_map != FeatureMap::Elu1 || *chunk != LINEAR_CHUNK) {
                    return Err(ConfigError::new(
                        "model.attention.base",
                        "\"gated_deltanet\"",
                        "takes Gated DeltaNet's own q, k (no feature_map) and its chunk (32): leave feature_map and chunk out",
                    ));
                }
                if !chunk.is_power_of_two() {
                    return Err(ConfigError::new("model.attention.chunk", chunk, "must be a power of two (chunks start at multiples of it, so that whole chunks share a Fenwick level)"));
                }
                if let Some(l) = levels {
                    if !(1..=40).contains(l) {
                        return Err(ConfigError::new("model.attention.levels", l, "must be in 1..=40 (positions < 2^(levels − 1)); left out, enough for model.max_seq"));
                    }
                }
            }
            Self::GatedDeltanet { head_dim: dk, expand_v, chunk, .. } | Self::Kda { head_dim: dk, expand_v, chunk, .. } => {
                if let Some(dk) = dk {
                    positive("head_dim", *dk)?;
                }
                positive("expand_v", *expand_v)?;
                let dk_or_default = dk.unwrap_or(d_model / heads.max(1));
                if dk_or_default.checked_mul(*expand_v).is_none_or(|dv| dv > 1 << 16) {
                    return Err(ConfigError::new("model.attention.expand_v", expand_v, format!("head_dim ({dk_or_default}) × expand_v must be ≤ 65536")));
                }
                positive("chunk", *chunk)?;
                if let Self::GatedDeltanet { value_heads: Some(hv), .. } = self {
                    if *hv == 0 || hv % heads != 0 {
                        return Err(ConfigError::new("model.attention.value_heads", hv, format!("must be a positive multiple of model.heads = {heads} (each key head serves value_heads / heads value heads)")));
                    }
                }
                if let Self::Kda { lower_bound: Some(lb), .. } = self {
                    if !(-5.0..0.0).contains(lb) {
                        return Err(ConfigError::new("model.attention.lower_bound", lb, "must be in [-5, 0) (fla's safe gate; left out: the unbounded gate)"));
                    }
                }
            }
            Self::Lolcats { feature_dim, feature_map, lora_rank, lora_alpha, .. } => {
                if *feature_map == LolcatsMap::Softmax {
                    positive("feature_dim", *feature_dim)?;
                }
                if *lora_rank > 0 && !(lora_alpha.is_finite() && *lora_alpha > 0.0) {
                    return Err(ConfigError::new("model.attention.lora_alpha", lora_alpha, "must be a positive number (the adapters are scaled by lora_alpha / lora_rank)"));
                }
            }
            Self::Mta { query_kernel, key_kernel, mix_group, post_mix, .. } => {
                positive("query_kernel", *query_kernel)?;
                if key_kernel % 2 == 0 {
                    return Err(ConfigError::new("model.attention.key_kernel", key_kernel, "must be odd (the kernel is centred on the key: (key_kernel − 1)/2 keys each side)"));
                }
                if let Some(c) = mix_group {
                    if !post_mix {
                        return Err(ConfigError::new("model.attention.mix_group", c, "only applies with post_mix = true"));
                    }
                    if *c == 0 || heads % c != 0 {
                        return Err(ConfigError::new("model.attention.mix_group", c, format!("must divide model.heads = {heads} (allowed: {})", divisors(heads))));
                    }
                }
            }
            Self::Mosa { rho, .. } => {
                positive("rho", *rho)?;
                let (mosa_heads, h) = self.mosa_dims(d_model, heads).expect("mosa");
                if mosa_heads == 0 {
                    return Err(ConfigError::new("model.attention.mosa_heads", mosa_heads, "must be ≥ 1 (left out: model.heads − dense_heads)"));
                }
                if h < 4 || h % 2 != 0 {
                    return Err(ConfigError::new("model.attention.head_dim", h, "must be even and ≥ 4 (RoPE on its first half, an even number of dims)"));
                }
            }
            Self::Mha {} | Self::Mqa {} | Self::Gqa { .. } => {}
        }
        Ok(())
    }

    /// Rotated dims per head of a gated layer with `partial_rope` set: round(f · head_dim);
    /// `None` otherwise (every dim rotated).
    pub fn rope_dims(&self, head_dim: usize) -> Option<usize> {
        match self {
            Self::Gated { partial_rope: Some(f), .. } => Some((f * head_dim as f64).round() as usize),
            _ => None,
        }
    }

    /// MoSA's routed heads and head width at `d_model / heads`, `None` for other kinds.
    pub fn mosa_dims(&self, d_model: usize, heads: usize) -> Option<(usize, usize)> {
        match self {
            Self::Mosa { dense_heads, mosa_heads, head_dim, .. } => Some((mosa_heads.unwrap_or(heads.saturating_sub(*dense_heads)), head_dim.unwrap_or(d_model / heads))),
            _ => None,
        }
    }

    /// Key and value head widths (d_k, d_v) of a delta-rule kind at `d_model / heads`, `None`
    /// for other kinds.
    pub fn delta_dims(&self, d_model: usize, heads: usize) -> Option<(usize, usize)> {
        match self {
            Self::GatedDeltanet { head_dim, expand_v, .. } | Self::Kda { head_dim, expand_v, .. } => {
                let dk = head_dim.unwrap_or(d_model / heads);
                Some((dk, dk * expand_v))
            }
            _ => None,
        }
    }
}

fn push_chunk(label: &mut String, chunk: usize, default: usize) {
    if chunk != default {
        label.push_str(&format!("-C{chunk}"));
    }
}

fn push_delta_common(label: &mut String, head_dim: Option<usize>, expand_v: usize, default_expand: usize, conv: bool, conv_init: ConvInit) {
    if let Some(dk) = head_dim {
        label.push_str(&format!("-d{dk}"));
    }
    if expand_v != default_expand {
        label.push_str(&format!("-v{expand_v}"));
    }
    if !conv {
        label.push_str("-noconv");
    } else if conv_init == ConvInit::Fla {
        label.push_str("-convfla");
    }
}

fn divisors(n: usize) -> String {
    (1..=n).filter(|d| n % d == 0).map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}
