//! MAD compression (MAD.md §1.5): `seq_len − 1` tokens uniform in `[0, V−1)`, then the
//! compression token `V−1`; the targets are the whole input, every position scored (training
//! and test alike). Meant for `model.head = "autoencoder"`, where the hidden state at the
//! compression token is the only path to the decoder. Shapes: inputs and targets `seq_len`.

use serde::{Deserialize, Serialize};

use super::need_vocab;
use crate::rng::Rng;
use crate::tasks::{Example, Generator, TaskError};

/// `kind = "mad_compression"` (baseline: vocab 16, seq_len 32).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadCompression {
    pub vocab: usize,
    pub seq_len: usize,
}

impl Default for MadCompression {
    fn default() -> Self {
        Self { vocab: 16, seq_len: 32 }
    }
}

impl Generator for MadCompression {
    fn len(&self) -> usize {
        self.seq_len
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn validate(&self) -> Result<(), TaskError> {
        need_vocab(self.vocab, 2, "at least one data token and the compression token")?;
        if self.seq_len < 2 {
            return Err(TaskError::new("seq_len", self.seq_len, "must be ≥ 2 (data tokens and the compression token)"));
        }
        Ok(())
    }
    fn generate(&self, rng: &mut Rng) -> Example {
        let mut tokens: Vec<u32> = (0..self.seq_len - 1).map(|_| rng.below(self.vocab as u64 - 1) as u32).collect();
        tokens.push(self.vocab as u32 - 1);
        Example { targets: Some(tokens.clone()), tokens, answers: (0..self.seq_len).collect(), train_all: false, bucket: None }
    }
}
