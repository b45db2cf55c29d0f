//! Synthetic tasks: generated, seeded sequences with the loss and the accuracy scored only on
//! answer positions.
//!
//! - [`mqar`]: multi-query associative recall (Zoology, Arora et al. 2023).
//! - [`selective_copy`]: copy the content tokens scattered among noise (Mamba, Gu & Dao 2023).
//! - [`needle`]: a key–value needle at a controlled depth in text, queried at the end.
//! - [`find_block`]: write out the block that holds every query letter (Multi-Token Attention's
//!   toy task, Golovneva et al. 2025).
//! - [`mad`]: the six tasks of the MAD benchmark (Poli et al. 2024).
//!
//! An [`Example`] is `len + 1` tokens: the model reads `tokens[..len]` and, at each answer
//! position p, must predict `tokens[p + 1]` (or an explicit target, for MAD's unshifted tasks). The validation set (model selection) and the test
//! set (the reported score) are generated from their own seeds; validation rejects test
//! examples and the training stream rejects both, so the three are disjoint.

pub mod find_block;
pub mod mad;
pub mod mqar;
pub mod needle;
pub mod selective_copy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustc_hash::FxHashSet as HashSet;
use serde::{Deserialize, Serialize};

use crate::batcher::Batch;
use crate::rng::Rng;

pub use mad::{MadCompression, MadFuzzyRecall, MadMemorization, MadNoisyRecall, MadRecall, MadSelectiveCopy};
pub use find_block::FindBlock;
pub use mqar::Mqar;
pub use needle::Needle;
pub use selective_copy::SelectiveCopy;

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    /// Without `targets`: `len + 1` token ids; the model reads `tokens[..len]` and the target at
    /// position p is `tokens[p + 1]`. With `targets`: the `len` tokens the model reads.
    pub tokens: Vec<u32>,
    /// Explicit targets, one per position, for tasks whose answers are not their next input
    /// (MAD's selective copying, compression and memorization).
    pub targets: Option<Vec<u32>>,
    /// Positions p (< len) scored at validation and test (and in training unless `train_all`).
    pub answers: Vec<usize>,
    /// Training loss on every position (MAD's recall tasks train on plain next-token prediction
    /// and are scored on the recalled values only).
    pub train_all: bool,
    /// Reporting bucket (the needle's depth bucket), if the task has buckets.
    pub bucket: Option<usize>,
}

impl Example {
    /// A next-token example: `len + 1` tokens, scored (in training too) at `answers`.
    pub fn shifted(tokens: Vec<u32>, answers: Vec<usize>) -> Self {
        Self { tokens, targets: None, answers, train_all: false, bucket: None }
    }

    /// Tokens the model reads.
    pub fn len(&self) -> usize {
        self.tokens.len() - usize::from(self.targets.is_none())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `len` tokens the model reads.
    pub fn inputs(&self) -> &[u32] {
        &self.tokens[..self.len()]
    }

    /// The target at position `p`.
    pub fn target(&self, p: usize) -> u32 {
        match &self.targets {
            Some(t) => t[p],
            None => self.tokens[p + 1],
        }
    }
}

/// A task's parameters: `[data.task]` with `kind` one of [`TASKS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskConfig {
    Mqar(Mqar),
    SelectiveCopy(SelectiveCopy),
    Needle(Needle),
    MadRecall(MadRecall),
    MadNoisyRecall(MadNoisyRecall),
    MadFuzzyRecall(MadFuzzyRecall),
    MadSelectiveCopy(MadSelectiveCopy),
    MadCompression(MadCompression),
    MadMemorization(MadMemorization),
    FindBlock(FindBlock),
}

/// The task kinds a user can write, for error messages.
pub const TASKS: &[&str] = &[
    "mqar",
    "selective_copy",
    "needle",
    "mad_recall",
    "mad_noisy_recall",
    "mad_fuzzy_recall",
    "mad_selective_copy",
    "mad_compression",
    "mad_memorization",
    "find_block",
];

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
    /// One training example drawn from `rng`.
    fn generate(&self, rng: &mut Rng) -> Example;
    /// One validation or test example (the same as training unless the task's test
    /// distribution differs: MAD's fuzzy recall uses keys of the largest size at test).
    fn generate_eval(&self, rng: &mut Rng) -> Example {
        self.generate(rng)
    }
}

impl TaskConfig {
    pub fn generator(&self) -> &dyn Generator {
        match self {
            TaskConfig::Mqar(t) => t,
            TaskConfig::SelectiveCopy(t) => t,
            TaskConfig::Needle(t) => t,
            TaskConfig::MadRecall(t) => t,
            TaskConfig::MadNoisyRecall(t) => t,
            TaskConfig::MadFuzzyRecall(t) => t,
            TaskConfig::MadSelectiveCopy(t) => t,
            TaskConfig::MadCompression(t) => t,
            TaskConfig::MadMemorization(t) => t,
            TaskConfig::FindBlock(t) => t,
        }
    }

    /// The `kind` as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskConfig::Mqar(_) => "mqar",
            TaskConfig::SelectiveCopy(_) => "selective_copy",
            TaskConfig::Needle(_) => "needle",
            TaskConfig::MadRecall(_) => "mad_recall",
            TaskConfig::MadNoisyRecall(_) => "mad_noisy_recall",
            TaskConfig::MadFuzzyRecall(_) => "mad_fuzzy_recall",
            TaskConfig::MadSelectiveCopy(_) => "mad_selective_copy",
            TaskConfig::MadCompression(_) => "mad_compression",
            TaskConfig::MadMemorization(_) => "mad_memorization",
            TaskConfig::FindBlock(_) => "find_block",
        }
    }
}

/// A task with its fixed validation and test sets, ready to batch.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub config: TaskConfig,
    /// For model selection during training.
    pub val: Arc<Vec<Example>>,
    /// For the reported score; never used to choose anything.
    pub test: Arc<Vec<Example>>,
    /// A fixed training set (`data.train_samples`), read in epochs; `None` = an endless stream.
    pub train_set: Option<TrainSet>,
    held_out: Arc<HashSet<Vec<u32>>>,
}

/// The evaluation sets of one (task, size), shared by every run that asks for them while one
/// is alive (a sweep prepares all its runs first: hundreds of MAD runs share 66 pairs of sets).
type EvalSets = (Arc<Vec<Example>>, Arc<Vec<Example>>, Arc<HashSet<Vec<u32>>>);
type SetsCache = Mutex<HashMap<String, (Weak<Vec<Example>>, Weak<Vec<Example>>, Weak<HashSet<Vec<u32>>>)>>;
static SHARED_SETS: OnceLock<SetsCache> = OnceLock::new();

/// A fixed training set, read in epochs of `⌈samples / batch⌉` batches (the last one smaller
/// when `batch` does not divide it), reshuffled per epoch from `seed` and the epoch number.
/// Example i is generated on demand from its own stream `(seed, i)`, so the set costs no memory
/// (a MAD sweep prepares hundreds of runs of up to 12,800 × 1,024 tokens before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainSet {
    pub samples: usize,
    pub seed: u64,
}

impl TrainSet {
    /// Batches per epoch.
    pub fn batches_per_epoch(&self, batch: usize) -> usize {
        self.samples.div_ceil(batch)
    }

    /// The stream of example `i`.
    pub fn example_rng(&self, i: usize) -> Rng {
        Rng::new((self.seed ^ 0x7EA1_5E7).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64))
    }

    /// The example indices of the `index`-th training batch (counting from 0 over all epochs).
    pub fn batch_indices(&self, index: usize, batch: usize) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch(batch);
        let (epoch, j) = (index / per_epoch, index % per_epoch);
        let mut order: Vec<usize> = (0..self.samples).collect();
        let mut rng = Rng::new(self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.shuffle(&mut order);
        let end = ((j + 1) * batch).min(order.len());
        order[j * batch..end].to_vec()
    }
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
        config.generator().validate()?;
        // The needle's haystack makes its config large; its sets are not shared.
        let key = (!matches!(config, TaskConfig::Needle(_))).then(|| format!("{examples}:{config:?}"));
        let cache = SHARED_SETS.get_or_init(Default::default);
        let live = key.as_ref().and_then(|k| {
            let (v, t, h) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(k).cloned()?;
            Some((v.upgrade()?, t.upgrade()?, h.upgrade()?))
        });
        let (val, test, held_out) = match live {
            Some(sets) => sets,
            None => {
                let sets = Self::eval_sets(&config, examples)?;
                if let Some(k) = key {
                    let weak = (Arc::downgrade(&sets.0), Arc::downgrade(&sets.1), Arc::downgrade(&sets.2));
                    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(k, weak);
                }
                sets
            }
        };
        Ok(Self { config, val, test, train_set: None, held_out })
    }

    fn eval_sets(config: &TaskConfig, examples: usize) -> Result<EvalSets, TaskError> {
        let g = config.generator();
        let mut rng = Rng::new(TEST_SEED);
        let test: Vec<Example> = (0..examples).map(|_| g.generate_eval(&mut rng)).collect();
        let mut held_out: HashSet<Vec<u32>> = test.iter().map(|e| e.tokens.clone()).collect();
        let mut rng = Rng::new(VAL_SEED);
        let mut val = Vec::with_capacity(examples);
        for _ in 0..examples {
            let e = (0..MAX_DRAWS).map(|_| g.generate_eval(&mut rng)).find(|e| !held_out.contains(&e.tokens)).ok_or_else(|| too_small(config))?;
            val.push(e);
        }
        held_out.extend(val.iter().map(|e| e.tokens.clone()));
        // Training must still be able to draw examples outside both sets.
        let mut probe = Rng::new(VAL_SEED ^ TEST_SEED);
        if !(0..MAX_DRAWS).any(|_| !held_out.contains(&g.generate(&mut probe).tokens)) {
            return Err(too_small(config));
        }
        Ok((Arc::new(val), Arc::new(test), Arc::new(held_out)))
    }

    /// Fixes the training set: `samples` examples drawn from `seed`, none in the validation or
    /// test set (MAD trains on 800–12,800 samples for many epochs, not on a stream).
    pub fn with_train_samples(mut self, samples: usize, seed: u64) -> Self {
        self.train_set = Some(TrainSet { samples, seed });
        self
    }

    /// Example `i` of the fixed training set (panics without one).
    pub fn train_set_example(&self, i: usize) -> Example {
        let set = self.train_set.expect("a fixed training set (data.train_samples)");
        self.train_example(&mut set.example_rng(i))
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

    /// The training batch of micro-batch number `index`: from the fixed training set when
    /// there is one (then `rng` is unused), else `batch` fresh examples from `rng`.
    pub fn train_batch(&self, rng: &mut Rng, batch: usize, index: usize) -> Batch {
        let examples: Vec<Example> = match &self.train_set {
            Some(set) => set.batch_indices(index, batch).into_iter().map(|i| self.train_set_example(i)).collect(),
            None => (0..batch).map(|_| self.train_example(rng)).collect(),
        };
        to_batch(&examples, true)
    }
}

/// Inputs, targets and the loss mask of `examples`: 1 on answer positions, or on every
/// position for a `train_all` example when `training`.
pub fn to_batch(examples: &[Example], training: bool) -> Batch {
    let block = examples[0].len();
    let mut inputs = Vec::with_capacity(examples.len() * block);
    let mut targets = Vec::with_capacity(examples.len() * block);
    let mut mask = vec![0.0f32; examples.len() * block];
    for (i, e) in examples.iter().enumerate() {
        inputs.extend(e.inputs().iter().map(|&t| t as i64));
        targets.extend((0..block).map(|p| e.target(p) as i64));
        if training && e.train_all {
            mask[i * block..(i + 1) * block].fill(1.0);
        } else {
            for &p in &e.answers {
                mask[i * block + p] = 1.0;
            }
        }
    }
    Batch { inputs, targets, batch: examples.len(), block, loss_mask: Some(mask) }
}

/// `k` distinct values from `0..n`, in random order (Floyd's algorithm: O(k) memory, so a
/// huge `n` costs nothing), then shuffled.
pub fn sample_distinct(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    sample_distinct_into(rng, n, k, &mut chosen);
    chosen
}

/// [`sample_distinct`] into `chosen` (cleared first), for callers that reuse one buffer.
pub fn sample_distinct_into(rng: &mut Rng, n: usize, k: usize, chosen: &mut Vec<usize>) {
    assert!(k <= n, "cannot draw {k} distinct values from {n}");
    chosen.clear();
    for j in n - k..n {
        let t = rng.below(j as u64 + 1) as usize;
        let pick = if chosen.contains(&t) { j } else { t };
        chosen.push(pick);
    }
    for i in (1..chosen.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        chosen.swap(i, j);
    }
}
