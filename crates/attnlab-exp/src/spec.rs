//! The experiment file: `name`, `[data]`, `[model]` (with `[model.attention]`), `[train]`,
//! `[eval]`. Unknown keys are errors. [`ExperimentSpec::prepare`] validates every field and
//! loads the data before any compute.

use std::path::{Path, PathBuf};

use attnlab_data::tasks::TASKS;
use attnlab_data::{Corpus, DataSource, Dataset, TaskConfig, TaskData, TokenSplits, Tokenizer};
use attnlab_model::{Head, ModelConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::SpecError;
use crate::overrides::{apply_set, parse_toml};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Experiment name: the folder under the output directory.
    pub name: String,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusKind {
    /// The generated corpus shipped in the binary.
    Builtin,
    /// Tiny Shakespeare from `datasets/` or `../shared/datasets/`.
    Tinyshakespeare,
    /// The UTF-8 file at `data.path`.
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    Char,
    Byte,
    /// Byte-level BPE: learned with `data.vocab_size` tokens, or read from `data.tokenizer_file`.
    Bpe,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub corpus: CorpusKind,
    /// Text file for `corpus = "file"`.
    pub path: Option<PathBuf>,
    /// With `corpus = "tinyshakespeare"`: use the built-in corpus (with a warning) when the file
    /// is absent, instead of failing.
    pub fallback_builtin: bool,
    pub tokenizer: TokenizerKind,
    /// With `tokenizer = "bpe"`: learn a vocabulary of this many tokens (≥ 257: the 256 bytes
    /// and at least one merge) from the training part of the corpus (its first 1 − val_fraction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// With `tokenizer = "bpe"`: a Hugging Face `tokenizer.json` to use instead of learning one
    /// (its bytes are part of the run id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer_file: Option<PathBuf>,
    /// Fraction of tokens at the end of the corpus held out for validation.
    pub val_fraction: f64,
    /// A synthetic task instead of language modelling (`[data.task]`, `kind = "mqar"`,
    /// `"selective_copy"` or `"needle"`); the needle task reads the corpus as its haystack.
    /// With a task, `train.block` is the task's sequence length; evaluations during training use
    /// its validation set and the final model is scored on its disjoint test set, each of
    /// `eval.batches × train.batch` examples.
    pub task: Option<TaskConfig>,
    /// With a task: train on a fixed set of this many examples (drawn from `train.seed`,
    /// disjoint from validation and test), read in epochs and reshuffled per epoch, instead
    /// of a fresh stream (MAD trains on 800–12,800 samples). See `train.epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_samples: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { corpus: CorpusKind::Builtin, path: None, fallback_builtin: false, tokenizer: TokenizerKind::Char, vocab_size: None, tokenizer_file: None, val_fraction: 0.1, task: None, train_samples: None }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch: usize,
    /// Tokens per training window (≤ model.max_seq).
    pub block: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    /// Which parameters `weight_decay` applies to (nanoGPT: matrices and embeddings only).
    pub decay: Decay,
    /// Clip the global gradient norm (one norm over every gradient) to this value (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Record the training loss every this many steps.
    pub log_every: usize,
    /// Gradient accumulation: each optimizer step averages the gradients of this many batches
    /// of `train.batch` (nanoGPT's `gradient_accumulation_steps`); tokens per step =
    /// accumulate · batch · block. 1 = off (left out of the saved config and the run id then).
    #[serde(skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// The element type the training forward and backward compute in (see [`Precision`]).
    /// f32 (the default) is left out of the saved config and the run id.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// With `data.train_samples = N`: train this many epochs; `train.steps` is then derived,
    /// `⌈epochs · ⌈N / batch⌉ / accumulate⌉`, and must not be given as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// `[[train.stages]]`: training in phases, each with its steps, learning rate, trainable
    /// parameters and auxiliary losses ([`crate::stages`]). With stages, `train.steps` is their
    /// sum (left out, it is derived) and `train.lr`, `train.min_lr`, `train.warmup` are not used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stages::StageConfig>,
    /// A finished run folder (`runs/<experiment>/<run-id>`) whose final weights start this run:
    /// a LoLCATs model from a softmax run (`attnlab linearize` writes it), a DSA model from an
    /// MLA run ([`attnlab_model::Gpt::with_source_weights`]; [`crate::linearize::check_source`]
    /// says what must match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// `train.precision`: mixed precision with f32 master weights. The parameters, their gradients
/// and AdamW's moments stay f32; each training step casts the parameters to the half type
/// (a differentiable cast: gradients come back to the f32 parameters as f32), so matmuls,
/// attention, activations and their gradients are in the half type, while RMSNorm's statistics,
/// the delta-rule/linear recurrences, the logits' softmax and the loss are computed in f32.
/// Evaluation, decode and checkpoints are f32. f16 multiplies the loss by
/// [`Precision::loss_scale`] before the backward pass and divides the gradients by it after (a
/// static scale: gradients below f16's range would otherwise flush to zero); a step whose
/// gradients overflowed is skipped (`optim::step`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// Every value, in the order of the docs.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The compute dtype.
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Precision::F32 => burn::tensor::DType::F32,
            Precision::F16 => burn::tensor::DType::F16,
            Precision::Bf16 => burn::tensor::DType::BF16,
        }
    }

    /// The static loss scale (f16: 1024 = 2¹⁰; 1 otherwise, bf16 having f32's exponent range).
    pub fn loss_scale(self) -> f32 {
        if self == Precision::F16 { 1024.0 } else { 1.0 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 500,
            batch: 12,
            block: 64,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 50,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.1,
            decay: Decay::Matrices,
            grad_clip: 1.0,
            seed: 0,
            checkpoint_every: 0,
            log_every: 10,
            accumulate: 1,
            precision: Precision::F32,
            epochs: None,
            stages: Vec::new(),
            init_from: None,
        }
    }
}

/// `train.decay`: the parameters weight decay applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Parameters with ≥ 2 dimensions (matrices, embeddings); gains, biases, λ vectors and
    /// other 1-D parameters are not decayed (nanoGPT's `configure_optimizers`).
    Matrices,
    /// Every parameter.
    All,
    /// No parameter (whatever `weight_decay` says).
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many steps (and always after the last step).
    pub every: usize,
    /// Validation batches per evaluation (the same windows every time, for every run).
    pub batches: usize,
    /// Tasks: also follow MAD's published protocol (the test set scored at every evaluation,
    /// selection on it; `published_test_macro_accuracy` in the summary). Off by default:
    /// attnlab selects on validation.
    #[serde(skip_serializing_if = "is_false")]
    pub published_protocol: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every: 100, batches: 20, published_protocol: false }
    }
}

/// A validated run: resolved spec, its data and its id.
#[derive(Debug, Clone)]
pub struct PreparedRun {
    pub spec: ExperimentSpec,
    pub tokenizer: Tokenizer,
    pub data: Dataset,
    /// The corpus actually used (`builtin` when a fallback happened), or `task:<kind>`.
    pub data_source: String,
    /// sha256 of the corpus bytes (text runs and the needle task's haystack); `None` for tasks
    /// generated from their config alone. Part of the run id, and checked again on resume.
    pub data_sha256: Option<String>,
    pub run_id: String,
    /// Set by `--extend`: the finished run this one continues.
    pub extends: Option<crate::extend::Extension>,
}

fn err(source: &str, field: &str, value: impl std::fmt::Display, allowed: &str) -> SpecError {
    SpecError::new(format!("{source}: {field} = {value}: {allowed}"))
}

impl ExperimentSpec {
    /// Reads a TOML file and applies `--set key=value` overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, SpecError> {
        let text = read_spec_file(path)?;
        Self::from_toml_str(&text, &path.display().to_string(), sets)
    }

    /// Parses TOML text (`source` names it in errors) and applies overrides.
    pub fn from_toml_str(text: &str, source: &str, sets: &[String]) -> Result<Self, SpecError> {
        let mut value = parse_toml(text).map_err(|e| SpecError::new(format!("{source}: {}", one_line(&e))))?;
        for set in sets {
            apply_set(&mut value, set).map_err(|e| SpecError::new(format!("{source}: --set {set}: {e}")))?;
        }
        Self::from_value(value, source)
    }

    /// Typed spec from a parsed (and overridden) TOML value, validated.
    pub fn from_value(value: toml::Value, source: &str) -> Result<Self, SpecError> {
        let steps_given = value.get("train").and_then(|t| t.get("steps")).is_some();
        let mut spec: ExperimentSpec = value.try_into().map_err(|e: toml::de::Error| {
            let msg = one_line(&e.to_string());
            if msg.contains("unknown variant") && msg.contains("data.task") {
                SpecError::new(format!("{source}: {msg} (tasks: {})", TASKS.join(", ")))
            } else {
                SpecError::new(format!("{source}: {msg}"))
            }
        })?;
        if let Some(task) = &spec.data.task {
            spec.train.block = task.generator().len();
        }
        if let Some(epochs) = spec.train.epochs {
            if epochs == 0 {
                return Err(err(source, "train.epochs", epochs, "must be ≥ 1"));
            }
            let samples = spec.data.train_samples.ok_or_else(|| err(source, "train.epochs", epochs, "needs data.train_samples (a fixed training set to read in epochs)"))?;
            let (batch, accumulate) = (spec.train.batch.max(1), spec.train.accumulate.max(1));
            let derived = (epochs * samples.div_ceil(batch)).div_ceil(accumulate);
            // A saved config holds the derived steps beside the epochs: equal is fine.
            if steps_given && spec.train.steps != derived {
                return Err(err(source, "train.steps", spec.train.steps, &format!("must be left out with train.epochs (the steps are derived from the epochs: {derived})")));
            }
            spec.train.steps = derived;
        }
        if !spec.train.stages.is_empty() && !steps_given {
            spec.train.steps = spec.train.stages.iter().map(|s| s.steps).sum();
        }
        spec.validate(source)?;
        Ok(spec)
    }

    /// Every field at its default (name empty): the set of known paths.
    pub fn defaults() -> Self {
        Self { name: String::new(), data: DataConfig::default(), model: ModelConfig::default(), train: TrainConfig::default(), eval: EvalConfig::default() }
    }

    /// Checks every field that needs no data; errors name the field, value and what is allowed.
    pub fn validate(&self, source: &str) -> Result<(), SpecError> {
        let t = &self.train;
        if self.name.is_empty() || self.name.starts_with('.') || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err(
                source,
                "name",
                format!("{:?}", self.name),
                "must be one plain folder name: letters, digits, '-', '_' or '.', not starting with '.' (so not \".\" or \"..\")",
            ));
        }
        self.model.validate().map_err(|e| err(source, &e.field, &e.value, &e.allowed))?;
        if !(1..=4096).contains(&t.accumulate) {
            return Err(err(source, "train.accumulate", t.accumulate, "must be in [1, 4096] (batches per optimizer step)"));
        }
        for (field, v) in [("train.steps", t.steps), ("train.batch", t.batch), ("train.block", t.block), ("train.log_every", t.log_every), ("eval.every", self.eval.every), ("eval.batches", self.eval.batches)] {
            if v == 0 {
                return Err(err(source, field, v, "must be ≥ 1"));
            }
        }
        crate::stages::validate(&t.stages, t.steps).map_err(|(f, v, a)| err(source, &f, v, &a))?;
        if !t.stages.is_empty() && t.epochs.is_some() {
            return Err(err(source, "train.stages", format!("[{} stages]", t.stages.len()), "cannot be combined with train.epochs (give each stage its steps)"));
        }
        self.validate_task(source)?;
        if let Some(task) = &self.data.task {
            if task.generator().len() > self.model.max_seq {
                return Err(err(source, "data.task", task.kind(), &format!("its sequences have {} tokens; must be ≤ model.max_seq = {}", task.generator().len(), self.model.max_seq)));
            }
        }
        if t.block > self.model.max_seq {
            return Err(err(source, "train.block", t.block, &format!("must be ≤ model.max_seq = {} (the model's context)", self.model.max_seq)));
        }
        for attention in self.model.layer_attentions() {
            let attnlab_attn::AttentionConfig::Dsa { top_k, .. } = attention else { continue };
            if *top_k >= t.block {
                crate::warn::warn_once(&format!(
                    "model.attention.top_k = {top_k} ≥ train.block = {}: every query keeps all its earlier keys, so this dsa layer is dense; set top_k < train.block (e.g. {} = block/8) for sparse attention",
                    t.block,
                    (t.block / 8).max(1)
                ));
            }
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(err(source, "train.lr", t.lr, "must be > 0"));
        }
        if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return Err(err(source, "train.min_lr", t.min_lr, &format!("must be in [0, train.lr = {}]", t.lr)));
        }
        if t.stages.is_empty() && t.warmup > t.steps {
            return Err(err(source, "train.warmup", t.warmup, &format!("must be ≤ train.steps = {}", t.steps)));
        }
        for (field, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(err(source, field, v, "must be in [0, 1)"));
            }
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(err(source, "train.weight_decay", t.weight_decay, "must be finite and ≥ 0"));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return Err(err(source, "train.grad_clip", t.grad_clip, "must be finite and ≥ 0 (0 = off)"));
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return Err(err(source, "data.val_fraction", self.data.val_fraction, "must be in (0, 1)"));
        }
        self.validate_tokenizer(source)?;
        match (&self.data.corpus, &self.data.path) {
            (CorpusKind::File, None) => return Err(err(source, "data.path", "(missing)", "required when data.corpus = \"file\"")),
            (CorpusKind::Builtin | CorpusKind::Tinyshakespeare, Some(p)) => {
                return Err(err(source, "data.path", format!("{p:?}"), "only used with data.corpus = \"file\""))
            }
            _ => {}
        }
        Ok(())
    }

    /// `[data.task]` with `data.train_samples` and `model.head`.
    fn validate_task(&self, source: &str) -> Result<(), SpecError> {
        let task = self.data.task.as_ref();
        if let Some(task) = task {
            task.generator().validate().map_err(|e| err(source, &format!("data.task.{}", e.field), &e.value, &e.allowed))?;
        }
        match (self.data.train_samples, task) {
            (Some(0), _) => return Err(err(source, "data.train_samples", 0, "must be ≥ 1 (or left out for a fresh stream of examples)")),
            (Some(n), None) => return Err(err(source, "data.train_samples", n, "needs a synthetic task ([data.task]); text runs read the corpus")),
            _ => {}
        }
        let compression = matches!(task, Some(TaskConfig::MadCompression(_)));
        match (self.model.head, compression) {
            (Head::Autoencoder, false) => Err(err(
                source,
                "model.head",
                "\"autoencoder\"",
                &format!("only with data.task.kind = \"mad_compression\" (here: {}); allowed: \"lm\"", task.map_or("no task", |t| t.kind())),
            )),
            (Head::Lm, true) => Err(err(
                source,
                "model.head",
                "\"lm\"",
                "must be \"autoencoder\" with data.task.kind = \"mad_compression\" (its targets are its own inputs: an LM head would copy them)",
            )),
            _ => Ok(()),
        }
    }

    /// `data.tokenizer` with `data.vocab_size` / `data.tokenizer_file`.
    fn validate_tokenizer(&self, source: &str) -> Result<(), SpecError> {
        let d = &self.data;
        match (d.tokenizer, d.vocab_size, &d.tokenizer_file) {
            (TokenizerKind::Bpe, Some(_), Some(_)) => {
                Err(err(source, "data.tokenizer_file", "(set)", "give data.vocab_size (learn a BPE) or data.tokenizer_file (load one), not both"))
            }
            (TokenizerKind::Bpe, None, None) => Err(err(
                source,
                "data.tokenizer",
                "\"bpe\"",
                "needs data.vocab_size (learn a BPE from the corpus, e.g. 1024) or data.tokenizer_file (a tokenizer.json)",
            )),
            (TokenizerKind::Bpe, Some(v), None) if !(attnlab_data::bpe::MIN_VOCAB..=1 << 20).contains(&v) => {
                Err(err(source, "data.vocab_size", v, &format!("must be in [{}, {}] (256 bytes and at least one merge)", attnlab_data::bpe::MIN_VOCAB, 1 << 20)))
            }
            (TokenizerKind::Bpe, ..) if matches!(d.task, Some(ref t) if !matches!(t, TaskConfig::Needle(_))) => {
                Err(err(source, "data.tokenizer", "\"bpe\"", "a synthetic task other than the needle has its own token ids; leave data.tokenizer out"))
            }
            (TokenizerKind::Char | TokenizerKind::Byte, Some(v), _) => Err(err(source, "data.vocab_size", v, "only used with data.tokenizer = \"bpe\"")),
            (TokenizerKind::Char | TokenizerKind::Byte, _, Some(p)) => {
                Err(err(source, "data.tokenizer_file", format!("{p:?}"), "only used with data.tokenizer = \"bpe\""))
            }
            _ => Ok(()),
        }
    }

    /// The tokenizer of `corpus` as `data` asks: characters seen, bytes, or BPE (learned from
    /// the training part, or read from `data.tokenizer_file`). Also returns the sha256 of the
    /// tokenizer file, which enters the run id.
    fn tokenizer(&self, corpus: &Corpus, source: &str) -> Result<(Tokenizer, Option<String>), SpecError> {
        let data_err = |e: attnlab_data::DataError| SpecError::new(format!("{source}: {e}"));
        Ok(match (self.data.tokenizer, self.data.vocab_size, &self.data.tokenizer_file) {
            (TokenizerKind::Char, ..) => (Tokenizer::char_from_text(corpus.text().map_err(data_err)?), None),
            (TokenizerKind::Byte, ..) => (Tokenizer::Byte, None),
            (TokenizerKind::Bpe, _, Some(path)) => {
                let bad = |why: String| err(source, "data.tokenizer_file", format!("{path:?}"), &why);
                let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
                let json = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8".into()))?;
                let bpe = attnlab_data::Bpe::from_json(json).map_err(|e| bad(format!("not a tokenizer.json the tokenizers crate reads: {e}")))?;
                (Tokenizer::Bpe(bpe), Some(attnlab_data::corpus::sha256_hex(&bytes)))
            }
            (TokenizerKind::Bpe, Some(vocab), None) => {
                let text = corpus.text().map_err(data_err)?;
                let mut end = (text.len() as f64 * (1.0 - self.data.val_fraction)) as usize;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                let bpe = attnlab_data::Bpe::train(&text[..end], vocab).map_err(|e| SpecError::new(format!("{source}: data.tokenizer = \"bpe\": learning the vocabulary failed: {e}")))?;
                if bpe.vocab_size() < vocab {
                    return Err(err(
                        source,
                        "data.vocab_size",
                        vocab,
                        &format!("the corpus gives only {} tokens (no pair left that occurs twice); use at most {}", bpe.vocab_size(), bpe.vocab_size()),
                    ));
                }
                (Tokenizer::Bpe(bpe), None)
            }
            (TokenizerKind::Bpe, None, None) => unreachable!("validated"),
        })
    }

    /// Loads and tokenizes the data (or generates the task's test set), fixes the vocabulary
    /// and computes the run id.
    pub fn prepare(&self, source: &str) -> Result<PreparedRun, SpecError> {
        let data_err = |e: attnlab_data::DataError| SpecError::new(format!("{source}: {e}"));
        let task_err = |e: attnlab_data::tasks::TaskError| err(source, &format!("data.task.{}", e.field), &e.value, &e.allowed);
        let test_examples = self.eval.batches * self.train.batch;
        let mut data_sha256 = None;
        let mut tokenizer_sha256 = None;
        let (tokenizer, data, data_source) = match &self.data.task {
            Some(TaskConfig::Needle(needle)) => {
                let (corpus, tokenizer, tokens, file_sha) = self.load_text(source)?;
                data_sha256 = Some(corpus.sha256());
                tokenizer_sha256 = file_sha;
                let mut needle = needle.clone();
                needle.text_vocab = tokenizer.vocab_size();
                needle.text = tokens;
                let config = TaskConfig::Needle(needle);
                let vocab = config.generator().vocab();
                (Tokenizer::Ids { vocab }, Dataset::Task(TaskData::new(config, test_examples).map_err(task_err)?), format!("task:needle:{}", corpus.name))
            }
            Some(task) => {
                let vocab = task.generator().vocab();
                (Tokenizer::Ids { vocab }, Dataset::Task(TaskData::new(task.clone(), test_examples).map_err(task_err)?), format!("task:{}", task.kind()))
            }
            None => {
                let (corpus, tokenizer, tokens, file_sha) = self.load_text(source)?;
                data_sha256 = Some(corpus.sha256());
                tokenizer_sha256 = file_sha;
                let splits = TokenSplits::new(&corpus.name, tokens, self.data.val_fraction, self.train.block).map_err(data_err)?;
                (tokenizer, Dataset::Text(splits), corpus.name)
            }
        };
        let data = match (data, self.data.train_samples) {
            (Dataset::Task(task), Some(n)) => Dataset::Task(task.with_train_samples(n, self.train.seed)),
            (data, _) => data,
        };
        let mut spec = self.clone();
        if spec.model.vocab == 0 {
            spec.model.vocab = tokenizer.vocab_size();
        } else if spec.model.vocab < tokenizer.vocab_size() {
            return Err(err(source, "model.vocab", spec.model.vocab, &format!("must be ≥ the tokenizer's {} tokens (or 0 = from the tokenizer)", tokenizer.vocab_size())));
        }
        // A tokenizer file is data too: its bytes enter the id (the path alone is in the spec).
        let id_source = match &tokenizer_sha256 {
            Some(sha) => format!("{data_source}+tokenizer:{sha}"),
            None => data_source.clone(),
        };
        spec.check_model_fields(source)?;
        let run_id = run_id(&spec, &id_source, data_sha256.as_deref());
        Ok(PreparedRun { spec, tokenizer, data, data_source, data_sha256, run_id, extends: None })
    }

    /// What only the built model can tell: each stage's trainable patterns and auxiliary losses,
    /// and `train.init_from` (a finished run with a checkpoint and a matching shape). Builds the
    /// model once on the CPU (no training compute).
    fn check_model_fields(&self, source: &str) -> Result<(), SpecError> {
        let t = &self.train;
        let needs_model = t.stages.iter().any(|s| !s.trainable.is_empty() || !s.aux.is_empty());
        if needs_model {
            let model = attnlab_model::Gpt::new(&self.model, &burn::tensor::Device::flex());
            crate::stages::check_model(&t.stages, &model, &model.aux_losses()).map_err(|(f, v, a)| err(source, &f, v, &a))?;
        }
        if let Some(from) = &t.init_from {
            let shown = format!("{:?}", from.display().to_string());
            let bad = |what: String| err(source, "train.init_from", &shown, &what);
            if !from.join("summary.json").is_file() || !from.join("checkpoint").join("model.bpk").is_file() {
                return Err(bad("must be a finished run folder (summary.json and checkpoint/model.bpk), e.g. runs/<experiment>/<run-id>".into()));
            }
            let teacher = crate::stages::source_model_config(from).map_err(&bad)?;
            crate::linearize::check_source(&teacher, &self.model).map_err(bad)?;
        }
        Ok(())
    }

    /// The corpus (with the built-in fallback), its tokenizer and its token ids.
    fn load_text(&self, source: &str) -> Result<(Corpus, Tokenizer, Vec<u32>, Option<String>), SpecError> {
        let data_err = |e: attnlab_data::DataError| SpecError::new(format!("{source}: {e}"));
        let wanted = match (&self.data.corpus, &self.data.path) {
            (CorpusKind::Builtin, _) => DataSource::Builtin,
            (CorpusKind::Tinyshakespeare, _) => DataSource::TinyShakespeare,
            (CorpusKind::File, Some(p)) => DataSource::File(p.clone()),
            (CorpusKind::File, None) => unreachable!("validated"),
        };
        let corpus = match Corpus::load(&wanted) {
            Err(attnlab_data::DataError::ShakespeareMissing { .. }) if self.data.fallback_builtin => {
                crate::warn::warn_once("Tiny Shakespeare not found (run `just data`); training on the built-in corpus instead");
                Corpus::load(&DataSource::Builtin).map_err(data_err)?
            }
            other => other.map_err(data_err)?,
        };
        let (tokenizer, file_sha256) = self.tokenizer(&corpus, source)?;
        let tokens = tokenizer.encode_bytes(&corpus.bytes, &corpus.name).map_err(data_err)?;
        if let Tokenizer::Bpe(_) = &tokenizer {
            // A loaded tokenizer may normalise text or drop what it cannot encode: refuse one
            // that does not give the corpus back.
            let text = corpus.text().map_err(data_err)?;
            let back = tokenizer.decode(&tokens);
            if back != text {
                let at = text.chars().zip(back.chars()).take_while(|(a, b)| a == b).count();
                let lost: String = text.chars().skip(at).take(12).collect();
                return Err(err(source, "data.tokenizer", "\"bpe\"", &format!("the tokenizer does not give the corpus back (first difference at character {at}: {lost:?}); use a byte-level BPE")));
            }
        }
        Ok((corpus, tokenizer, tokens, file_sha256))
    }
}

/// Short hash of the fully resolved config (seed included, bookkeeping fields left out) and
/// the data actually used: its name and the sha256 of its bytes.
///
/// Bookkeeping fields (`train.checkpoint_every`, `train.log_every`, `eval.every`) are not part
/// of the id, so an interrupted run can be resumed after changing them. `eval.every` changes
/// which steps are evaluated, so `best_val_loss` is the best over the evaluations the run made.
pub fn run_id(spec: &ExperimentSpec, data_source: &str, data_sha256: Option<&str>) -> String {
    let mut spec = spec.clone();
    let defaults = ExperimentSpec::defaults();
    spec.train.checkpoint_every = defaults.train.checkpoint_every;
    spec.train.log_every = defaults.train.log_every;
    spec.eval.every = defaults.eval.every;
    let canonical = match data_sha256 {
        Some(sha) => serde_json::to_string(&(&spec, data_source, sha)),
        None => serde_json::to_string(&(&spec, data_source)),
    }
    .expect("spec serialises");
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// Reads an experiment file: a regular file only (a FIFO would block), UTF-8; errors name it.
pub fn read_spec_file(path: &Path) -> Result<String, SpecError> {
    let bad = |what: String| SpecError::new(format!("{}: {what}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file (a FIFO, device or folder); give a TOML file".into()));
    }
    std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))
}

/// Folds a multi-line parser message into one line.
pub(crate) fn one_line(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^')).collect::<Vec<_>>().join("; ")
}
