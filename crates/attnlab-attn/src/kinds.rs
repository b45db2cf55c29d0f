//! The attention kinds as the docs describe them: one source for `attnlab kinds` and the
//! README's kinds table (a test checks that the README holds [`markdown_table`] verbatim).

/// One kind: its `kind` name, its fields with defaults, what it is, its decode state.
#[derive(Debug, Clone, Copy)]
pub struct KindDoc {
    pub kind: &'static str,
    /// Markdown: the fields and (defaults).
    pub fields: &'static str,
    /// Markdown: the mechanism, its paper, its defaults and labels.
    pub what: &'static str,
    /// Markdown: decode-state size per token and layer.
    pub state: &'static str,
}

/// Every kind, in the order of [`crate::config::KINDS`].
pub const DOCS: &[KindDoc] = &[
    KindDoc {
        kind: "mha",
        fields: r#"–"#,
        what: r#"multi-head attention (Vaswani et al. 2017)"#,
        state: r#"2·h·d_h floats"#,
    },
    KindDoc {
        kind: "mqa",
        fields: r#"–"#,
        what: r#"multi-query attention (Shazeer 2019): one K/V head"#,
        state: r#"2·d_h"#,
    },
    KindDoc {
        kind: "gqa",
        fields: r#"`kv_heads`"#,
        what: r#"grouped-query attention (Ainslie et al. 2023): `kv_heads` K/V heads, each shared by `heads/kv_heads` query heads"#,
        state: r#"2·g·d_h"#,
    },
    KindDoc {
        kind: "mla",
        fields: r#"`kv_latent` (4·d_h), `q_latent` (none), `rope_dim` (d_h/2), `rope` (true)"#,
        what: r#"multi-head latent attention (DeepSeek-V2, 2024): K and V rebuilt from a shared latent c_kv; decoupled RoPE key shared by all heads. Left out, d_c and d_R take DeepSeek-V2's ratios to the head width; labels name what is set (`mla`, `mla-c16-r4`). `rope = false`: NoPE as Kimi Linear's MLA, the d_R slices kept unrotated (`mla-nope`)"#,
        state: r#"d_c + d_R"#,
    },
    KindDoc {
        kind: "sliding_window",
        fields: r#"`window`, `global_tokens` (0), `kv_heads` (= heads)"#,
        what: r#"each token sees its last `window` tokens (itself included) plus the first `global_tokens` (attention sinks, Xiao et al. 2023; Longformer/Mistral-style window); decode keeps a ring buffer"#,
        state: r#"2·g·d_h, for at most `window + global_tokens` tokens"#,
    },
    KindDoc {
        kind: "strided_sparse",
        fields: r#"`block`, `stride`, `kv_heads` (= heads)"#,
        what: r#"Sparse Transformer's strided pattern (Child et al. 2019), factorised over heads: heads `0..h/2` see the last `block` tokens, heads `h/2..h` every `stride`-th token back"#,
        state: r#"2·g·d_h (strided heads reach the whole past)"#,
    },
    KindDoc {
        kind: "fixed_sparse",
        fields: r#"`block`, `summary`, `kv_heads` (= heads)"#,
        what: r#"Sparse Transformer's fixed pattern (Child et al. 2019): every head sees its own block of `block` tokens and the last `summary` tokens of every earlier block (the summary columns). Before this release `fixed_sparse` named the strided pattern: a file or run with `stride` gets an error naming `strided_sparse`"#,
        state: r#"2·g·d_h (full cache; a compacting cache of block + summaries is not built)"#,
    },
    KindDoc {
        kind: "tiled",
        fields: r#"`block_q` (64), `block_k` (64), `kv_heads` (= heads)"#,
        what: r#"causal attention computed tile by tile with FlashAttention's online softmax (Dao et al. 2022): same function as `mha`/`gqa`, never builds the T×T matrix"#,
        state: r#"2·g·d_h"#,
    },
    KindDoc {
        kind: "gated",
        fields: r#"`kv_heads` (= heads), `gate_bias` (none), `partial_rope` (1), `qk_norm` (false)"#,
        what: r#"gated attention (Qiu et al. 2025, Qwen3-Next): SDPA output × σ(x W_θ), an elementwise sigmoid gate per head from the block's normalised input; bias-free as the paper (σ(0) = 0.5 halves the output at init), or with a learnable bias initialised to `gate_bias` (label `gated-b3`). Qwen3-Next's layer: `qk_norm = true` (per-head RMSNorm of q and k before RoPE) and `partial_rope = 0.25` (RoPE on the first quarter of each head's dims; 0 = NoPE) (`gated-p0.25-qkn`)"#,
        state: r#"2·g·d_h"#,
    },
    KindDoc {
        kind: "differential",
        fields: r#"–"#,
        what: r#"Differential Transformer (Ye et al. 2024): h/2 heads, each (softmax(Q₁K₁ᵀ/√d) − λ softmax(Q₂K₂ᵀ/√d)) V with learnable λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init, λ_init = 0.8 − 0.6·exp(−0.3·(layer−1)), per-head RMSNorm × (1 − λ_init)"#,
        state: r#"2·h·d_h (as MHA)"#,
    },
    KindDoc {
        kind: "linear",
        fields: r#"`feature_map` (`elu1`; `relu`, `identity`, `hedgehog`), `normalize` (false), `chunk` (64)"#,
        what: r#"linear attention (Katharopoulos et al. 2020): S_t = S_{t−1} + φ(k_t)v_tᵀ, o_t = φ(q_t)ᵀS_t per head; output RMSNorm per head (fla's layer) by default, or the normaliser φ(q)ᵀS/φ(q)ᵀz with `normalize = true` (needs a positive φ: `identity` is rejected). `hedgehog`: fla's learnable map softmax([2(xW+b), −2(xW+b)]), d_φ = 2·d_h, one map for q and one for k shared by heads (W = I, b = 0 at init). Labels `linear`, `linear-hedgehog-norm`"#,
        state: r#"none: a fixed h·d_φ·d_h (+ h·d_φ) floats"#,
    },
    KindDoc {
        kind: "log_linear",
        fields: r#"`base` (`linear`; `gated_deltanet`), `feature_map` (`elu1`), `levels` (bit-length(max_seq − 1) + 1), `chunk` (64, a power of two; the `gated_deltanet` base uses Gated DeltaNet's 32)"#,
        what: r#"log-linear attention (Guo et al. 2025) over `linear`: key s of query t in Fenwick level ℓ = bit-length(t XOR s) (0 for s = t), weighted by λ_t^ℓ = softplus(Λ ⊙ x W_l) per head; with all λ equal it is its base (the output RMSNorm removes the factor). Training: the chunked O(T log T) form (masked inside a chunk, prefix sums of chunk states per cross-chunk level); decode: one state per level with a binary carry. `base = "gated_deltanet"`: Gated DeltaNet at its defaults with one delta-rule state per level, every level taking the transition α(I − βkkᵀ); trained in the chunked O(T log T) form: inside a WY chunk GDN's effective attention masked per pair, (E ⊙ M)(β ⊙ V); across chunks one delta-rule state per cross-chunk level, carried by the chunks' WY transitions with the binary carry. Labels `loglinear`, `loglinear-gdn`"#,
        state: r#"none: h·d_φ·d_h per level, (⌊log₂t⌋ + 2) levels at t: grows with log t"#,
    },
    KindDoc {
        kind: "gated_deltanet",
        fields: r#"`head_dim` (d_model/heads), `expand_v` (2), `conv` (true), `gate` (true), `l2_norm` (true), `conv_init` (`kaiming`; `fla` = N(0, 0.02²)), `chunk` (32), `value_heads` (= heads)"#,
        what: r#"Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025): S_t = α_t(I − β_t k_t k_tᵀ)S_{t−1} + β_t k_t v_tᵀ with α = e^g, g = −e^{A_log}·softplus(x W_a + dt_bias) per head, β = σ(x W_β); short causal convs (kernel 4) on q, k, v, SiLU, L2-normalised q, k; output RMSNorm ⊙ SiLU(x W_g). A ~ U(0,16), dt ∈ [1e-3, 0.1] log-uniform. `conv`/`gate`/`l2_norm = false` are the paper's ablations. `value_heads = H_v` (a multiple of heads): Qwen3-Next's grouped value heads, each q/k head serving H_v/heads consecutive value heads, β, decay and state per value head. Labels `gdn`, `gdn-noconv`, `gdn-d16-v1`, `gdn-v1-hv8`"#,
        state: r#"none: h_v·d_k·d_v + 3·(2h·d_k + h_v·d_v) floats (state + conv tails; h_v = value_heads)"#,
    },
    KindDoc {
        kind: "kda",
        fields: r#"`head_dim` (d_model/heads), `expand_v` (1), `conv` (true), `lower_bound` (none), `conv_init`, `chunk` (16)"#,
        what: r#"Kimi Delta Attention (Kimi Linear 2025): GDN's front with a per-key-channel decay S_t = (I − β_t k_t k_tᵀ)Diag(α_t)S_{t−1} + β_t k_t v_tᵀ, g = −e^{A_log_h}·softplus(x W_f↓W_f↑ + dt_bias) (low-rank gate, dt_bias per channel, A_log per head, A ~ U(1,16)), output RMSNorm ⊙ σ(x W_g↓W_g↑). `lower_bound = lb` ∈ [−5, 0): fla's bounded gate lb·σ(e^{A_log}(raw + dt_bias))"#,
        state: r#"as `gated_deltanet`"#,
    },
    KindDoc {
        kind: "dsa",
        fields: r#"`top_k` (64; ≥ the block length = dense, warned), `index_heads` (4), `index_dim` (32), and `mla`'s `kv_latent`, `q_latent`, `rope_dim`; or `kv_heads` (on GQA instead of MLA; `rope_dim` = the indexer's rotated dims)"#,
        what: r#"DeepSeek Sparse Attention (DeepSeek-V3.2-Exp 2025) on MLA with RoPE: a lightning indexer (q from MLA's query input, one LayerNorm'd key shared by its heads, RoPE on its first d_R dims, I = Σ_j w_j·ReLU(q_j·k)) picks each query's `top_k` earlier keys (ties to the lower index) and MLA attends to those only; `top_k ≥ T` equals `mla` (to float rounding: another softmax path). With `kv_heads` the same on grouped-query attention (the indexer's queries read x). The indexer trains on its KL to the main attention (`[[train.stages]]` aux `indexer_kl_dense` = dense warm-up, `indexer_kl` = sparse), its inputs detached; `indexer_recall` is logged. Labels `dsa-k32`, `dsa-k32-gqa2`"#,
        state: r#"d_c + d_R + d_I (MLA's latent + the indexer key); on GQA 2·g·d_h + d_I"#,
    },
    KindDoc {
        kind: "lolcats",
        fields: r#"`kv_heads` (= heads), `window` (64), `feature_dim` (64), `feature_map` (`softmax`; `elu1`), `lora_rank` (8; 0 = none), `lora_alpha` (16)"#,
        what: r#"LoLCATs (Zhang et al. 2024), made from a trained softmax run by `attnlab linearize RUN --to lolcats`: W_qkv, W_o and RoPE kept; a learned map per query head φ(x) = [softmax(xW), softmax(−xW)] on the post-RoPE q, k (d_φ = 2·f); softmax over the previous and the current block of `window` tokens plus linear attention over all earlier keys, mixed by γ_h = σ(w_h) (0.1 at init; `window = 0`: linear only); LoRA on W_q, W_k, W_v, W_o (B = 0). Training is the quadratic O(T²) form. Labels `lolcats`, `lolcats-nowin`, `lolcats-elu1`"#,
        state: r#"none: a fixed 2·min(2·window, context)·g·d_h + h·d_φ·(d_h + 1) floats (ring of the window's keys + linear state)"#,
    },
    KindDoc {
        kind: "mta",
        fields: r#"`kv_heads` (= heads), `query_kernel` (6), `key_kernel` (11, odd), `post_conv` (true), `pre_mix` (true), `post_mix` (true), `mix_group` (heads), `norm` (true), `depth_scale` (false), `gate` (true), `conv_layers` (all)"#,
        what: r#"Multi-Token Attention (Golovneva et al. 2025): softmax attention whose score map goes through a depthwise key–query convolution c_q × c_k (masked entries 0 before it, −∞ after; the query axis padded on the past side only), H×H head mixing, softmax, an optional post-softmax convolution (masked entries 0 after, no renormalisation) and head mixing in groups of `mix_group`; then a per-head RMSNorm with one shared scale (× (1 − λ_init) with `depth_scale`) and a sigmoid gate σ(w·o + b). Identity at init (with norm and gate off it is MHA exactly). Defaults: the paper's 830M layer; `conv_layers = [2, 6]` puts the convolutions in those layers only. O(T²) training memory. Labels `mta`, `mta-2x9-nopost-noprem-nopostm-nonorm-nogate` (the paper's toy)"#,
        state: r#"MHA's K/V (at `kv_heads`) + a fixed (c_q − 1)·(convolutions)·h·d_h floats of recent queries"#,
    },
    KindDoc {
        kind: "mosa",
        fields: r#"`rho` (4), `routing` (`prefix`; `expert_choice`), `dense_heads` (1), `mosa_heads` (heads − dense_heads), `head_dim` (d_model/heads)"#,
        what: r#"Mixture of Sparse Attention (Piękos et al. 2025): dense causal heads beside routed heads; each routed head scores tokens with a sigmoid router, chooses about T/ρ of them, attends among them at their original positions (RoPE on half of each head) and scales its output by the score; other tokens get nothing from it. `expert_choice` is the paper's top-⌊T/ρ⌋ over the whole sequence: **not causal** (label `-noncausal`), no decode. `prefix` (default) chooses token t iff its score is in the top ⌈(t+1)/ρ⌉ of the prefix, within that budget: causal, decodable. Labels `mosa-r4`, `mosa-r8-e6-noncausal`"#,
        state: r#"dense heads' 2·h_d·d_h + routed heads' 2·E·d_h per chosen token (≤ ⌈T/ρ⌉) + E router scores per token"#,
    },
];

/// The README's kinds table (Markdown).
pub fn markdown_table() -> String {
    let mut t = String::from("| `kind` | fields | what it is | decode state per token per layer |\n|---|---|---|---|\n");
    for d in DOCS {
        t.push_str(&format!("| `{}` | {} | {} | {} |\n", d.kind, d.fields, d.what, d.state));
    }
    t
}

/// Plain text for a terminal: `kind`, then its fields, description and state, wrapped to
/// `width` columns (Markdown backticks removed).
pub fn plain(width: usize) -> String {
    let width = width.max(40);
    let mut out = String::new();
    for d in DOCS {
        out.push_str(d.kind);
        out.push('\n');
        for (label, text) in [("fields", d.fields), ("what", d.what), ("state", d.state)] {
            out.push_str(&wrap(&format!("{label}: {}", text.replace('`', "")), width, "    "));
        }
    }
    out
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = format!("{indent}  ");
        }
        if !line.trim().is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}
