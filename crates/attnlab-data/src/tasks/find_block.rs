//! Find the block (Multi-Token Attention, Golovneva et al. 2025, §3 toy task; RAM
//! `projects/mta/toy_task/generate_data.py`): `blocks` blocks of `block_len` distinct letters
//! joined by a separator, then a query marker and `query_len` distinct letters drawn from one
//! target block; the model must write out the target block. No other block holds every query
//! letter, so the answer needs a match on several letters at once — what one query·key score
//! cannot express and MTA's key–query convolution can.
//!
//! Tokens: letters `0..letters`, the separator `letters` ("."), the query marker
//! `letters + 1` ("#"). Layout, with the target block last: `B₁ . B₂ . … . B_n # q₁…q_L t₁…t_N`;
//! the model reads all but the last token, and is scored (in training too, as the paper's loss
//! on the answer only) at the N positions that predict t₁…t_N. The paper's setting: 26 letters,
//! N = 5, L = 2, 52 blocks (319 tokens, as the reference asserts; MECHANISMS.md's T = 321 counts
//! two more, presumably the tokenizer's BOS/EOS); the target block's position among the others is uniform.
//! Differences from the reference: blocks may repeat (the reference keeps a set of blocks per
//! sample; at 26 letters a repeat has probability ≈ n²/(2·7.9M)), and the string is never cut
//! (the reference cuts the joined blocks at `pad_len`, which its default sizes never reach).

use serde::{Deserialize, Serialize};

use super::{sample_distinct, Example, Generator, TaskError};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FindBlock {
    /// Letters in the alphabet (the vocabulary is letters + 2).
    pub letters: usize,
    /// Letters per block (distinct within a block).
    pub block_len: usize,
    /// Query letters, drawn from the target block.
    pub query_len: usize,
    /// Blocks in the context, the target among them.
    pub blocks: usize,
}

impl Default for FindBlock {
    /// A CPU-sized version of the paper's task: its alphabet, block and query sizes, 12 blocks
    /// (79 tokens) instead of 52.
    fn default() -> Self {
        Self { letters: 26, block_len: 5, query_len: 2, blocks: 12 }
    }
}

impl FindBlock {
    /// The separator between blocks.
    pub fn separator(&self) -> u32 {
        self.letters as u32
    }

    /// The query marker.
    pub fn marker(&self) -> u32 {
        self.letters as u32 + 1
    }
}

impl Generator for FindBlock {
    fn len(&self) -> usize {
        self.blocks * (self.block_len + 1) - 1 + 1 + self.query_len + self.block_len - 1
    }

    fn vocab(&self) -> usize {
        self.letters + 2
    }

    fn validate(&self) -> Result<(), TaskError> {
        if self.block_len < 2 {
            return Err(TaskError::new("block_len", self.block_len, "must be ≥ 2"));
        }
        if self.letters <= self.block_len {
            return Err(TaskError::new("letters", self.letters, format!("must be > block_len = {} (otherwise every block holds every letter and no block but the target can miss a query letter)", self.block_len)));
        }
        if self.query_len == 0 || self.query_len > self.block_len {
            return Err(TaskError::new("query_len", self.query_len, format!("must be in 1..=block_len = {}", self.block_len)));
        }
        if self.blocks < 2 {
            return Err(TaskError::new("blocks", self.blocks, "must be ≥ 2 (the target and at least one distractor)"));
        }
        Ok(())
    }

    fn generate(&self, rng: &mut Rng) -> Example {
        let letters = |rng: &mut Rng| -> Vec<u32> { sample_distinct(rng, self.letters, self.block_len).into_iter().map(|l| l as u32).collect() };
        let target = letters(rng);
        let query: Vec<u32> = sample_distinct(rng, self.block_len, self.query_len).into_iter().map(|i| target[i]).collect();
        let at = rng.below(self.blocks as u64) as usize;
        let mut tokens = Vec::with_capacity(self.len() + 1);
        for b in 0..self.blocks {
            if b > 0 {
                tokens.push(self.separator());
            }
            if b == at {
                tokens.extend(&target);
                continue;
            }
            // A distractor holds at most query_len − 1 of the query letters.
            loop {
                let block = letters(rng);
                if !query.iter().all(|q| block.contains(q)) {
                    tokens.extend(block);
                    break;
                }
            }
        }
        tokens.push(self.marker());
        tokens.extend(&query);
        let first = tokens.len() - 1; // the last query letter predicts t₁
        tokens.extend(&target);
        Example::shifted(tokens, (first..first + self.block_len).collect())
    }
}
