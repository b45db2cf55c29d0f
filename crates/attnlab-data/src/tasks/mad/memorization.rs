//! MAD memorization (MAD.md §1.6): a fixed one-to-one map from keys `[0, ⌊(V−1)/2⌋)` to values
//! `[⌊(V−1)/2⌋, V−1)`, built once from `map_seed` and the vocabulary alone (both lists shuffled
//! with a dedicated generator, then zipped), so it is the same in training, validation, test and
//! every run. A sample is `seq_len / 2` pairs (key uniform with replacement, insert token
//! `V−1`); the target at each insert token is the key's value, scored in training and test
//! alike (no shift). Values never occur in the inputs: they must come from the weights.

use serde::{Deserialize, Serialize};

use super::need_vocab;
use crate::rng::Rng;
use crate::tasks::{Example, Generator, TaskError};

/// `kind = "mad_memorization"` (baseline: vocab 256, seq_len 32, 256 training samples).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadMemorization {
    pub vocab: usize,
    pub seq_len: usize,
    /// Seed of the key → value map (MAD: 12345), independent of the run's seed.
    pub map_seed: u64,
}

impl Default for MadMemorization {
    fn default() -> Self {
        Self { vocab: 256, seq_len: 32, map_seed: 12345 }
    }
}

impl MadMemorization {
    pub fn insert(&self) -> u32 {
        self.vocab as u32 - 1
    }

    /// The map: entry k is key k's value (one value token is left over when V−1 is odd).
    pub fn map(&self) -> Vec<u32> {
        let keys = (self.vocab - 1) / 2;
        let mut rng = Rng::new(self.map_seed);
        let mut k: Vec<u32> = (0..keys as u32).collect();
        let mut v: Vec<u32> = (keys as u32..self.vocab as u32 - 1).collect();
        rng.shuffle(&mut k);
        rng.shuffle(&mut v);
        let mut map = vec![0u32; keys];
        for (&key, &value) in k.iter().zip(&v) {
            map[key as usize] = value;
        }
        map
    }
}

impl Generator for MadMemorization {
    fn len(&self) -> usize {
        self.seq_len
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn validate(&self) -> Result<(), TaskError> {
        need_vocab(self.vocab, 3, "at least one key, one value and the insert token")?;
        if self.seq_len % 2 != 0 || self.seq_len < 2 {
            return Err(TaskError::new("seq_len", self.seq_len, "must be even and ≥ 2 (key, insert-token pairs)"));
        }
        Ok(())
    }
    fn generate(&self, rng: &mut Rng) -> Example {
        let map = self.map();
        let mut tokens = Vec::with_capacity(self.seq_len);
        let mut targets = Vec::with_capacity(self.seq_len);
        for _ in 0..self.seq_len / 2 {
            let k = rng.below(map.len() as u64) as usize;
            tokens.extend([k as u32, self.insert()]);
            targets.extend([0, map[k]]);
        }
        let answers = (1..self.seq_len).step_by(2).collect();
        Example { tokens, targets: Some(targets), answers, train_all: false, bucket: None }
    }
}
