//! `attnlab linearize RUN --to lolcats`: the experiment that turns a trained softmax run into
//! a LoLCATs run (MECHANISMS.md §10, Zhang et al. 2024).
//!
//! The new experiment keeps the source run's data, model shape, batch, block, seed and
//! evaluation; its layers become `kind = "lolcats"` (same K/V heads), `train.init_from` names the
//! source run, and two stages follow the paper's recipe:
//! 1. `transfer` — attention transfer: only the feature maps and the window mixing factors
//!    train (lr 1e-2, AdamW without weight decay), on the mean over layers of the MSE between
//!    each layer's per-head outputs and its softmax teacher's, × 1000 (no LM loss); every layer
//!    passes the teacher's output on.
//! 2. `lora` — LoRA fine-tuning (rank 8, α 16 on W_q, W_k, W_v, W_o; lr 1e-4): only the adapters
//!    train, on the next-token loss.
//!
//! `no_transfer` (the paper's "no attention transfer" ablation) replaces both by one stage that
//! trains maps, mixing factors and adapters together on the next-token loss, for the same total
//! steps. Other ablations are `--set`s, applied before the stages are chosen (`model.attention.window=0`:
//! no γ to train; `model.attention.feature_map=elu1`: no maps to train).

use std::path::Path;

use attnlab_attn::{AttentionConfig, LolcatsMap};

use crate::stages::StageConfig;
use crate::ExperimentSpec;

/// Path prefix of a LoLCATs layer's parameters.
const LAYER: &str = "blocks.*.attn.Lolcats";

/// Choices of [`lolcats_spec`].
#[derive(Clone, Debug)]
pub struct Options {
    pub transfer_steps: usize,
    pub lora_steps: usize,
    pub transfer_lr: f64,
    pub lora_lr: f64,
    /// One stage training maps and adapters together on the LM loss instead.
    pub no_transfer: bool,
    /// The new experiment's name (default `<source>_lolcats`).
    pub name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { transfer_steps: 200, lora_steps: 200, transfer_lr: 1e-2, lora_lr: 1e-4, no_transfer: false, name: None }
    }
}

/// The LoLCATs experiment for the finished softmax run in `run_dir`, as TOML text. Errors say
/// why the run cannot be linearised (not finished, not grouped-query softmax attention).
/// `sets` (`--set key=value`) apply to the new experiment before its stages are chosen; the
/// text holds them.
pub fn lolcats_spec(run_dir: &Path, options: &Options, sets: &[String]) -> Result<String, crate::SpecError> {
    let bad = |what: String| crate::SpecError::new(format!("linearize {}: {what}", run_dir.display()));
    if !run_dir.join("summary.json").is_file() || !run_dir.join("checkpoint").join("model.bpk").is_file() {
        return Err(bad("not a finished run folder (it needs summary.json and checkpoint/model.bpk): give runs/<experiment>/<run-id>".into()));
    }
    let text = crate::spec::read_spec_file(&run_dir.join("config.toml"))?;
    let source: ExperimentSpec = toml::from_str(&text).map_err(|e| bad(format!("config.toml: {}", crate::spec::one_line(&e.to_string()))))?;
    let kv_heads = softmax_kv_heads(&source.model).map_err(bad)?;
    if options.transfer_steps == 0 || options.lora_steps == 0 {
        return Err(bad(format!("--transfer-steps = {}, --lora-steps = {}: both must be ≥ 1", options.transfer_steps, options.lora_steps)));
    }
    let mut spec = source.clone();
    spec.name = options.name.clone().unwrap_or_else(|| format!("{}_lolcats", source.name));
    spec.model.attention = AttentionConfig::Lolcats {
        kv_heads,
        window: attnlab_attn::config::LOLCATS_WINDOW,
        feature_dim: attnlab_attn::config::LOLCATS_WINDOW,
        feature_map: Default::default(),
        lora_rank: 8,
        lora_alpha: 16.0,
    };
    let t = &mut spec.train;
    t.weight_decay = 0.0;
    t.epochs = None;
    t.warmup = 0;
    t.init_from = Some(run_dir.to_path_buf());
    t.steps = options.transfer_steps + options.lora_steps;
    // The --set overrides first: which parameters exist (maps, γ, adapters) depends on them.
    let text = toml::to_string(&spec).map_err(|e| bad(format!("cannot write the experiment: {e}")))?;
    let mut spec = ExperimentSpec::from_toml_str(&text, "linearize", sets)?;
    let AttentionConfig::Lolcats { window, feature_map, lora_rank, .. } = spec.model.attention else {
        return Err(bad(format!("--set changed model.attention.kind to {:?}; linearize --to lolcats needs lolcats", spec.model.attention.kind())));
    };
    let mut transfer: Vec<String> = Vec::new();
    if feature_map == LolcatsMap::Softmax {
        transfer.extend([format!("{LAYER}.q_map"), format!("{LAYER}.k_map")]);
    }
    if window > 0 {
        transfer.push(format!("{LAYER}.window_logit"));
    }
    let lora = (lora_rank > 0).then(|| format!("{LAYER}.lora"));
    let stage = |name: &str, steps: usize, lr: f64, trainable: Vec<String>| StageConfig {
        name: name.into(),
        steps,
        lr,
        min_lr: None,
        warmup: 0,
        trainable,
        aux: Default::default(),
        lm_loss: true,
    };
    spec.train.stages = if options.no_transfer {
        let all: Vec<String> = transfer.into_iter().chain(lora).collect();
        if all.is_empty() {
            return Err(bad("this layer has nothing to train (feature_map = \"elu1\", window = 0, lora_rank = 0)".into()));
        }
        vec![stage("finetune", options.transfer_steps + options.lora_steps, options.lora_lr, all)]
    } else {
        if transfer.is_empty() {
            return Err(bad("attention transfer has nothing to train with feature_map = \"elu1\" and window = 0 (no maps, no γ); use --no-transfer".into()));
        }
        let Some(lora) = lora else {
            return Err(bad("model.attention.lora_rank = 0: stage 2 has no adapters to train (set a rank ≥ 1)".into()));
        };
        let mut first = stage("transfer", options.transfer_steps, options.transfer_lr, transfer);
        first.aux.insert("attention_transfer".into(), 1000.0);
        first.lm_loss = false;
        vec![first, stage("lora", options.lora_steps, options.lora_lr, vec![lora])]
    };
    let mut header = format!(
        "# Written by `attnlab linearize {} --to lolcats`: LoLCATs from that trained softmax run\n\
         # (README \"Linearising a trained model\"). train.lr, train.min_lr and train.warmup are not\n\
         # used: each stage has its own.\n",
        run_dir.display()
    );
    if !sets.is_empty() {
        header.push_str(&format!("# With --set {}.\n", sets.join(" --set ")));
    }
    let body = toml::to_string(&spec).map_err(|e| bad(format!("cannot write the experiment: {e}")))?;
    Ok(format!("{header}{body}"))
}

/// The K/V heads of a model `linearize` can start from (`None` = as many as query heads):
/// a plain stack of `mha`, `mqa` or `gqa` layers with the LM head. Err says why not.
fn softmax_kv_heads(m: &attnlab_model::ModelConfig) -> Result<Option<usize>, String> {
    if m.is_hybrid() || m.loops != 1 || m.head != attnlab_model::Head::Lm {
        return Err("its model has a layer pattern, loops or a non-LM head; linearize takes a plain stack of softmax layers".into());
    }
    match &m.attention {
        AttentionConfig::Mha {} => Ok(None),
        AttentionConfig::Mqa {} => Ok(Some(1)),
        AttentionConfig::Gqa { kv_heads } => Ok(Some(*kv_heads)),
        other => Err(format!("its attention is {:?}; linearize takes mha, mqa or gqa (W_qkv, W_o and RoPE are kept)", other.kind())),
    }
}

/// Whether `model` (this run's) can start from the trained `teacher` (`train.init_from`): a plain
/// stack of LoLCATs layers over the teacher's softmax layers (the same K/V heads), or of DSA
/// layers over its MLA layers (the same latent sizes, with RoPE) or, with `kv_heads` set, over
/// its softmax layers (the same K/V heads); the same width, depth, heads,
/// vocabulary, MLP and RoPE base, and no longer context than the teacher's RoPE tables cover.
/// Err says what differs.
pub fn check_source(teacher: &attnlab_model::ModelConfig, model: &attnlab_model::ModelConfig) -> Result<(), String> {
    if model.is_hybrid() || model.loops != 1 || model.head != attnlab_model::Head::Lm {
        return Err("this model has a layer pattern, loops or a non-LM head; start a plain stack".into());
    }
    match &model.attention {
        AttentionConfig::Lolcats { kv_heads, .. } => {
            let kv = softmax_kv_heads(teacher)?.unwrap_or(teacher.heads);
            if kv_heads.unwrap_or(model.heads) != kv {
                return Err(format!("its layers have {kv} K/V heads; set model.attention.kv_heads = {kv}"));
            }
        }
        AttentionConfig::Dsa { kv_heads: Some(g), .. } => {
            let kv = softmax_kv_heads(teacher)?.unwrap_or(teacher.heads);
            if *g != kv {
                return Err(format!("its layers have {kv} K/V heads; set model.attention.kv_heads = {kv}"));
            }
        }
        AttentionConfig::Dsa { q_latent, .. } => {
            let AttentionConfig::Mla { q_latent: tq, rope: true, .. } = &teacher.attention else {
                return Err(format!("a dsa model starts from an mla run with RoPE; the source's attention is {:?}", teacher.attention.kind()));
            };
            if teacher.is_hybrid() || teacher.loops != 1 {
                return Err("the source has a layer pattern or loops".into());
            }
            let head_dim = model.d_model / model.heads.max(1);
            if (teacher.attention.mla_dims(head_dim), tq) != (model.attention.mla_dims(head_dim), q_latent) {
                return Err(format!(
                    "its MLA (kv_latent, rope_dim, q_latent) = {:?}, {tq:?}; this model's {:?}, {q_latent:?}",
                    teacher.attention.mla_dims(head_dim),
                    model.attention.mla_dims(head_dim)
                ));
            }
        }
        other => return Err(format!("starts a lolcats model from a softmax run, or a dsa model from an mla run (a grouped-query run with kv_heads set); this model's attention is {:?}", other.kind())),
    }
    let shape = |m: &attnlab_model::ModelConfig| format!("d_model {}, layers {}, heads {}, vocab {}, mlp {:?} × {}, rope_base {}, positions {:?}", m.d_model, m.layers, m.heads, m.vocab, m.mlp, m.mlp_hidden(), m.rope_base, m.positions);
    if shape(teacher) != shape(model) {
        return Err(format!("its model ({}) differs from this one ({})", shape(teacher), shape(model)));
    }
    if model.max_seq > teacher.max_seq {
        return Err(format!("model.max_seq = {} exceeds the source's {} (its RoPE tables are kept)", model.max_seq, teacher.max_seq));
    }
    Ok(())
}
