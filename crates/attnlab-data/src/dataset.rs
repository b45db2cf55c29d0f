//! What a run trains on: windows of a tokenized text, or a synthetic task's examples.

use crate::batcher::{Batch, Split, TokenSplits};
use crate::rng::Rng;
use crate::tasks::{to_batch, Example, TaskData};

#[derive(Debug, Clone)]
pub enum Dataset {
    Text(TokenSplits),
    Task(TaskData),
}

/// A fixed evaluation batch; for a task, each example's reporting bucket.
#[derive(Debug, Clone)]
pub struct EvalBatch {
    pub batch: Batch,
    pub buckets: Vec<Option<usize>>,
}

impl Dataset {
    /// The training batch of micro-batch number `index` (counted over the whole run): drawn
    /// from `rng`, or a task's fixed training set read in epochs.
    pub fn train_batch(&self, rng: &mut Rng, batch: usize, block: usize, index: usize) -> Batch {
        match self {
            Dataset::Text(splits) => splits.sample(Split::Train, rng, batch, block),
            Dataset::Task(task) => task.train_batch(rng, batch, index),
        }
    }

    /// `batches` evaluation batches, the same for every call with the same `seed`: text windows
    /// of `split`; for a task, its validation set (`Val`), its test set (`Test`) or training examples (`Train`).
    pub fn eval_batches(&self, split: Split, seed: u64, batches: usize, batch: usize, block: usize) -> Vec<EvalBatch> {
        let mut rng = Rng::new(seed);
        match self {
            Dataset::Text(splits) => (0..batches)
                .map(|_| EvalBatch { batch: splits.sample(split, &mut rng, batch, block), buckets: vec![None; batch] })
                .collect(),
            Dataset::Task(task) => {
                let examples: Vec<Example> = match split {
                    Split::Val => task.val.to_vec(),
                    Split::Test => task.test.to_vec(),
                    Split::Train => match &task.train_set {
                        Some(set) => (0..set.samples.min(batches * batch)).map(|i| task.train_set_example(i)).collect(),
                        None => (0..batches * batch).map(|_| task.train_example(&mut rng)).collect(),
                    },
                };
                examples
                    .chunks(batch)
                    .map(|chunk| EvalBatch { batch: to_batch(chunk, false), buckets: chunk.iter().map(|e| e.bucket).collect() })
                    .collect()
            }
        }
    }

    /// True for a synthetic task (it has a test set besides validation).
    pub fn has_test(&self) -> bool {
        matches!(self, Dataset::Task(_))
    }

    /// Reporting buckets of the task (0 for text or a task without buckets).
    pub fn buckets(&self) -> usize {
        match self {
            Dataset::Text(_) => 0,
            Dataset::Task(task) => task.config.generator().buckets(),
        }
    }
}
