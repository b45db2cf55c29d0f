//! MAD selective copying (MAD.md §1.4). Data tokens `[0, V−2)`, blank `V−2`, copy `V−1`.
//!
//! `n = num_tokens` data tokens (uniform, with replacement); `seq_len − 2n − 1` blanks, each
//! inserted before a data token chosen uniformly (so never after the last one); the copy
//! token; `n` blanks. Targets are the data tokens in order at the last `n` positions (no shift,
//! no teacher forcing: the inputs there are blanks), scored in training and test alike.
//! Shapes: inputs and targets `seq_len` tokens.

use serde::{Deserialize, Serialize};

use super::need_vocab;
use crate::rng::Rng;
use crate::tasks::{Example, Generator, TaskError};

/// `kind = "mad_selective_copy"` (baseline: vocab 16, seq_len 256, 16 tokens to copy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadSelectiveCopy {
    pub vocab: usize,
    pub seq_len: usize,
    /// Data tokens to copy (`n`).
    pub num_tokens: usize,
}

impl Default for MadSelectiveCopy {
    fn default() -> Self {
        Self { vocab: 16, seq_len: 256, num_tokens: 16 }
    }
}

impl MadSelectiveCopy {
    pub fn blank(&self) -> u32 {
        self.vocab as u32 - 2
    }
    pub fn copy(&self) -> u32 {
        self.vocab as u32 - 1
    }
}

impl Generator for MadSelectiveCopy {
    fn len(&self) -> usize {
        self.seq_len
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn validate(&self) -> Result<(), TaskError> {
        need_vocab(self.vocab, 3, "at least one data token, the blank and the copy token")?;
        if self.num_tokens == 0 {
            return Err(TaskError::new("num_tokens", self.num_tokens, "must be ≥ 1"));
        }
        if self.seq_len <= 2 * self.num_tokens + 1 {
            return Err(TaskError::new("seq_len", self.seq_len, format!("must be > 2·num_tokens + 1 = {}", 2 * self.num_tokens + 1)));
        }
        Ok(())
    }
    fn generate(&self, rng: &mut Rng) -> Example {
        let n = self.num_tokens;
        let data: Vec<u32> = (0..n).map(|_| rng.below(self.vocab as u64 - 2) as u32).collect();
        let mut blanks_before = vec![0usize; n];
        for _ in 0..self.seq_len - 2 * n - 1 {
            blanks_before[rng.below(n as u64) as usize] += 1;
        }
        let mut tokens = Vec::with_capacity(self.seq_len);
        for (&d, &b) in data.iter().zip(&blanks_before) {
            tokens.extend(std::iter::repeat_n(self.blank(), b));
            tokens.push(d);
        }
        tokens.push(self.copy());
        tokens.extend(std::iter::repeat_n(self.blank(), n));
        let mut targets = vec![0u32; self.seq_len - n];
        targets.extend(&data);
        let answers = (self.seq_len - n..self.seq_len).collect();
        Example { tokens, targets: Some(targets), answers, train_all: false, bucket: None }
    }
}
