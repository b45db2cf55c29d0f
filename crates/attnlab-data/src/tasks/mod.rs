//! Synthetic tasks: generated, seeded sequences with the loss and the accuracy scored only on
//! answer positions.
//!
//! - [`mqar`]: multi-query associative recall (Zoology, Arora et al. 2023).
//! - [`selective_copy`]: copy the content tokens scattered among noise (Mamba, Gu & Dao 2023).
//! - [`needle`]: a key–value needle at a controlled depth in text, queried at the end.
//!
//! An [`Example`] is `len + 1` tokens: the model reads `tokens[..len]` and, at each answer
//! position p, must predict `tokens[p + 1]`. The validation set (model selection) and the test
//! set (the reported score) are generated from their own seeds; validation rejects test
//! examples and the training stream rejects both, so the three are disjoint.

pub mod mqar;
pub mod needle;
pub mod selective_copy;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::batcher::Batch;
use crate::rng::Rng;

pub use mqar::Mqar;
pub use needle::Needle;
pub use selective_copy::SelectiveCopy;

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    /// `len + 1` token ids.
    pub tokens: Vec<u32>,
    /// Positions p (< len) where the model must predict `tokens[p + 1]`.
    pub answers: Vec<usize>,
    /// Reporting bucket (the needle's depth bucket), if the task has buckets.
    pub bucket: Option<usize>,
}

/// A task's parameters: `[data.task]` with `kind = "mqar" | "selective_copy" | "needle"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskConfig {
    Mqar(Mqar),
    SelectiveCopy(SelectiveCopy),
    Needle(Needle),
}

/// The task kinds a user can write, for error messages.
pub const TASKS: &[&str] = &["mqar", "selective_copy", "needle"];

/// A parameter that cannot work: field (under `data.task.`), value, what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("data.task.{field} = {value}: {allowed}")]
pub struct TaskError {
    pub field: &'static str,
    pub value: String,
    pub allowed: String,
}

impl TaskError {
    pub fn new(field: &'static str, value: impl ToString, allowed: impl Into<String>) -> Self {
        Self { field, value: value.to_string(), allowed: allowed.into() }
    }
}

/// What every task generator provides.
pub trait Generator {
    /// Tokens the model reads per example (the training block).
    fn len(&self) -> usize;
    /// Vocabulary size.
    fn vocab(&self) -> usize;
    /// Number of reporting buckets (0 when the task has none).
    fn buckets(&self) -> usize {
        0
    }
    /// Checks the parameters.
    fn validate(&self) -> Result<(), TaskError>;
    /// One example drawn from `rng`.
    fn generate(&self, rng: &mut Rng) -> Example;
}

impl TaskConfig {
    pub fn generator(&self) -> &dyn Generator {
        match self {
            TaskConfig::Mqar(t) => t,
            TaskConfig::SelectiveCopy(t) => t,
            TaskConfig::Needle(t) => t,
        }
    }

    /// The `kind` as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskConfig::Mqar(_) => "mqar",
            TaskConfig::SelectiveCopy(_) => "selective_copy",
            TaskConfig::Needle(_) => "needle",
        }
    }
}

/// A task with its fixed validation and test sets, ready to batch.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub config: TaskConfig,
    /// For model selection during training.
    pub val: Vec<Example>,
    /// For the reported score; never used to choose anything.
    pub test: Vec<Example>,
    held_out: HashSet<Vec<u32>>,
}

/// Seed of every task's test set (training streams use the run's seed).
pub const TEST_SEED: u64 = 0x7E57_5E7;
/// Seed of every task's validation set.
pub const VAL_SEED: u64 = 0x5E1_EC7;

/// Draws per example before a task's space counts as too small for a disjoint set.
const MAX_DRAWS: usize = 1000;

fn too_small(config: &TaskConfig) -> TaskError {
    TaskError::new(
        "kind",
        config.kind(),
        "its space of distinct sequences is too small for disjoint training, validation and test sets of eval.batches × train.batch examples each: make the task larger (vocab, seq_len) or the sets smaller",
    )
}

impl TaskData {
    /// Validates the task and generates `examples` test examples, then `examples` validation
    /// examples distinct from every test example (the test set is the one of earlier builds).
    pub fn new(config: TaskConfig, examples: usize) -> Result<Self, TaskError> {
        let g = config.generator();
        g.validate()?;
        let mut rng = Rng::new(TEST_SEED);
        let test: Vec<Example> = (0..examples).map(|_| g.generate(&mut rng)).collect();
        let mut held_out: HashSet<Vec<u32>> = test.iter().map(|e| e.tokens.clone()).collect();
        let mut rng = Rng::new(VAL_SEED);
        let mut val = Vec::with_capacity(examples);
        for _ in 0..examples {
            let e = (0..MAX_DRAWS).map(|_| g.generate(&mut rng)).find(|e| !held_out.contains(&e.tokens)).ok_or_else(|| too_small(&config))?;
            val.push(e);
        }
        held_out.extend(val.iter().map(|e| e.tokens.clone()));
        // Training must still be able to draw examples outside both sets.
        let mut probe = Rng::new(VAL_SEED ^ TEST_SEED);
        if !(0..MAX_DRAWS).any(|_| !held_out.contains(&g.generate(&mut probe).tokens)) {
            return Err(too_small(&config));
        }
        Ok(Self { config, val, test, held_out })
    }

    /// A training example from `rng` that is in neither the validation nor the test set.
    pub fn train_example(&self, rng: &mut Rng) -> Example {
        loop {
            let e = self.config.generator().generate(rng);
            if !self.held_out.contains(&e.tokens) {
                return e;
            }
        }
    }

    /// `batch` training examples as a [`Batch`].
    pub fn train_batch(&self, rng: &mut Rng, batch: usize) -> Batch {
        let examples: Vec<Example> = (0..batch).map(|_| self.train_example(rng)).collect();
        to_batch(&examples)
    }
}

/// Inputs `tokens[..len]`, targets `tokens[1..]`, loss mask 1 on answer positions.
pub fn to_batch(examples: &[Example]) -> Batch {
    let block = examples[0].tokens.len() - 1;
    let mut inputs = Vec::with_capacity(examples.len() * block);
    let mut targets = Vec::with_capacity(examples.len() * block);
    let mut mask = vec![0.0f32; examples.len() * block];
    for (i, e) in examples.iter().enumerate() {
        inputs.extend(e.tokens[..block].iter().map(|&t| t as i64));
        targets.extend(e.tokens[1..].iter().map(|&t| t as i64));
        for &p in &e.answers {
            mask[i * block + p] = 1.0;
        }
    }
    Batch { inputs, targets, batch: examples.len(), block, loss_mask: Some(mask) }
}

/// `k` distinct values from `0..n`, in random order (Floyd's algorithm: O(k) memory, so a
/// huge `n` costs nothing), then shuffled.
pub fn sample_distinct(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    assert!(k <= n, "cannot draw {k} distinct values from {n}");
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    for j in n - k..n {
        let t = rng.below(j as u64 + 1) as usize;
        let pick = if chosen.contains(&t) { j } else { t };
        chosen.push(pick);
    }
    for i in (1..chosen.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        chosen.swap(i, j);
    }
    chosen
}
