//! Train/validation split (first 90% / last 10%, as nanoGPT) and seeded random-window batches.

use crate::corpus::DataError;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    /// Model selection (best checkpoint, early reading).
    Val,
    /// Synthetic tasks only: held out from training and from selection, scored at the end.
    Test,
}

/// Token ids of a corpus, split into train and validation.
#[derive(Debug, Clone)]
pub struct TokenSplits {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

/// A batch of `batch` windows of `block` tokens; targets are inputs shifted by one.
/// All row-major `[batch, block]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub batch: usize,
    pub block: usize,
    /// 1 where the loss counts, 0 elsewhere; `None` = every position (language modelling).
    pub loss_mask: Option<Vec<f32>>,
}

impl TokenSplits {
    /// Splits `tokens`: the first `1 - val_fraction` for training, the rest for validation.
    /// Each split must hold at least `block + 1` tokens.
    pub fn new(name: &str, tokens: Vec<u32>, val_fraction: f64, block: usize) -> Result<Self, DataError> {
        let total = tokens.len();
        let n_train = ((total as f64) * (1.0 - val_fraction)).round() as usize;
        let mut train = tokens;
        let val = train.split_off(n_train.min(total));
        for (split, len) in [("train", train.len()), ("val", val.len())] {
            if len < block + 1 {
                return Err(DataError::TooShort { name: name.into(), tokens: total, split, split_tokens: len, needed: block + 1 });
            }
        }
        Ok(Self { train, val })
    }

    pub fn get(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => panic!("a text corpus has train and validation splits only"),
        }
    }

    /// `batch` windows at uniformly random offsets drawn from `rng`.
    pub fn sample(&self, split: Split, rng: &mut Rng, batch: usize, block: usize) -> Batch {
        let data = self.get(split);
        let starts = (data.len() - block) as u64;
        let mut inputs = Vec::with_capacity(batch * block);
        let mut targets = Vec::with_capacity(batch * block);
        for _ in 0..batch {
            let s = rng.below(starts) as usize;
            inputs.extend(data[s..s + block].iter().map(|&t| t as i64));
            targets.extend(data[s + 1..s + block + 1].iter().map(|&t| t as i64));
        }
        Batch { inputs, targets, batch, block, loss_mask: None }
    }
}
