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
//! steps. Other ablations are `--set`s on the written file (`model.attention.window=0`,
//! `model.attention.feature_map="elu1"`).

use std::path::Path;

use attnlab_attn::AttentionConfig;

use crate::stages::StageConfig;
use crate::ExperimentSpec;

/// The parameters stage 1 trains.
pub const TRANSFER_TRAINABLE: [&str; 3] = ["blocks.*.attn.Lolcats.q_map", "blocks.*.attn.Lolcats.k_map", "blocks.*.attn.Lolcats.window_logit"];
/// The parameters stage 2 trains.
pub const LORA_TRAINABLE: &str = "blocks.*.attn.Lolcats.lora";

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
pub fn lolcats_spec(run_dir: &Path, options: &Options) -> Result<String, crate::SpecError> {
    let bad = |what: String| crate::SpecError::new(format!("linearize {}: {what}", run_dir.display()));
    if !run_dir.join("summary.json").is_file() || !run_dir.join("checkpoint").join("model.bpk").is_file() {
        return Err(bad("not a finished run folder (it needs summary.json and checkpoint/model.bpk): give runs/<experiment>/<run-id>".into()));
    }
    let text = crate::spec::read_spec_file(&run_dir.join("config.toml"))?;
    let source: ExperimentSpec = toml::from_str(&text).map_err(|e| bad(format!("config.toml: {}", crate::spec::one_line(&e.to_string()))))?;
    let m = &source.model;
    if m.is_hybrid() || m.loops != 1 || m.head != attnlab_model::Head::Lm {
        return Err(bad("its model has a layer pattern, loops or a non-LM head; linearize takes a plain stack of softmax layers".into()));
    }
    let kv_heads = match &m.attention {
        AttentionConfig::Mha {} => None,
        AttentionConfig::Mqa {} => Some(1),
        AttentionConfig::Gqa { kv_heads } => Some(*kv_heads),
        other => {
            return Err(bad(format!("its attention is {:?}; linearize takes mha, mqa or gqa (W_qkv, W_o and RoPE are kept)", other.kind())));
        }
    };
    if options.transfer_steps == 0 && !options.no_transfer || options.lora_steps == 0 {
        return Err(bad("--transfer-steps and --lora-steps must be ≥ 1".into()));
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
    t.init_from = Some(run_dir.to_path_buf());
    let stage = |name: &str, steps: usize, lr: f64, trainable: Vec<&str>| StageConfig {
        name: name.into(),
        steps,
        lr,
        min_lr: None,
        warmup: 0,
        trainable: trainable.into_iter().map(String::from).collect(),
        aux: Default::default(),
        lm_loss: true,
    };
    t.stages = if options.no_transfer {
        let mut all = TRANSFER_TRAINABLE.to_vec();
        all.push(LORA_TRAINABLE);
        vec![stage("finetune", options.transfer_steps + options.lora_steps, options.lora_lr, all)]
    } else {
        let mut transfer = stage("transfer", options.transfer_steps, options.transfer_lr, TRANSFER_TRAINABLE.to_vec());
        transfer.aux.insert("attention_transfer".into(), 1000.0);
        transfer.lm_loss = false;
        vec![transfer, stage("lora", options.lora_steps, options.lora_lr, vec![LORA_TRAINABLE])]
    };
    t.steps = t.stages.iter().map(|s| s.steps).sum();
    t.warmup = 0;
    let header = format!(
        "# Written by `attnlab linearize {} --to lolcats`: LoLCATs from that trained softmax run\n\
         # (stage 1 attention transfer, stage 2 LoRA; README \"Linearising a trained model\").\n\
         # train.lr, train.min_lr and train.warmup are not used: each stage has its own.\n",
        run_dir.display()
    );
    let body = toml::to_string(&spec).map_err(|e| bad(format!("cannot write the experiment: {e}")))?;
    Ok(format!("{header}{body}"))
}
