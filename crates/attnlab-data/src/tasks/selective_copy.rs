//! Selective copying (Mamba, Gu & Dao 2023, §3.1): `num_tokens` content tokens scattered at
//! random positions of a `seq_len` region of noise, then a separator, then the content tokens in
//! order. Token 0 is noise, 1 the separator, content tokens come from `2..vocab`. The model reads
//! the region, the separator and the copied tokens but the last; at the separator and at each
//! copied token it must predict the next content token.

use serde::{Deserialize, Serialize};

use super::{sample_distinct, Example, Generator, TaskError};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectiveCopy {
    pub vocab: usize,
    /// Length of the noisy region.
    pub seq_len: usize,
    /// Content tokens to copy.
    pub num_tokens: usize,
}

impl Default for SelectiveCopy {
    fn default() -> Self {
        Self { vocab: 16, seq_len: 64, num_tokens: 8 }
    }
}

/// Noise token.
pub const NOISE: u32 = 0;
/// Separator between the region and the copy.
pub const SEPARATOR: u32 = 1;

impl Generator for SelectiveCopy {
    fn len(&self) -> usize {
        self.seq_len + self.num_tokens
    }

    fn vocab(&self) -> usize {
        self.vocab
    }

    fn validate(&self) -> Result<(), TaskError> {
        if self.vocab < 3 {
            return Err(TaskError::new("vocab", self.vocab, "must be ≥ 3 (noise, separator, content)"));
        }
        if self.num_tokens == 0 || self.num_tokens > self.seq_len {
            return Err(TaskError::new("num_tokens", self.num_tokens, format!("must be in 1..=seq_len = {}", self.seq_len)));
        }
        Ok(())
    }

    fn generate(&self, rng: &mut Rng) -> Example {
        let mut positions = sample_distinct(rng, self.seq_len, self.num_tokens);
        positions.sort_unstable();
        let content: Vec<u32> = (0..self.num_tokens).map(|_| 2 + rng.below(self.vocab as u64 - 2) as u32).collect();
        let mut tokens = vec![NOISE; self.seq_len];
        for (&p, &c) in positions.iter().zip(&content) {
            tokens[p] = c;
        }
        tokens.push(SEPARATOR);
        tokens.extend(&content);
        let answers = (self.seq_len..self.seq_len + self.num_tokens).collect();
        Example::shifted(tokens, answers)
    }
}
