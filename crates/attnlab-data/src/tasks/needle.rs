//! Needle retrieval: a window of `seq_len` text tokens with a needle `[NEEDLE, key, value]` at a
//! random depth, and the query `[QUERY, key]` at the end; at the query's key the model must
//! predict the value. Key and value are text tokens drawn at random; NEEDLE and QUERY are two
//! extra ids after the text vocabulary. Test examples are bucketed by the needle's depth (its
//! position as a fraction of the text before the query) so accuracy is reported per depth.

use serde::{Deserialize, Serialize};

use super::{Example, Generator, TaskError};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Needle {
    /// Tokens the model reads (text, needle and query).
    pub seq_len: usize,
    /// Depth buckets for reporting.
    pub depth_buckets: usize,
    /// The text, as ids of the text tokenizer (filled in by the loader, not written in TOML).
    #[serde(skip)]
    pub text: Vec<u32>,
    /// Text vocabulary size (filled in by the loader).
    #[serde(skip)]
    pub text_vocab: usize,
}

impl Default for Needle {
    fn default() -> Self {
        Self { seq_len: 128, depth_buckets: 4, text: Vec::new(), text_vocab: 0 }
    }
}

impl Needle {
    pub fn needle_id(&self) -> u32 {
        self.text_vocab as u32
    }

    pub fn query_id(&self) -> u32 {
        self.text_vocab as u32 + 1
    }

    /// Text tokens per example: `seq_len + 1` minus the needle (3) and the query with its
    /// answer (3).
    fn text_len(&self) -> usize {
        self.seq_len - 5
    }
}

impl Generator for Needle {
    fn len(&self) -> usize {
        self.seq_len
    }

    fn vocab(&self) -> usize {
        self.text_vocab + 2
    }

    fn buckets(&self) -> usize {
        self.depth_buckets
    }

    fn validate(&self) -> Result<(), TaskError> {
        if self.seq_len < 8 {
            return Err(TaskError::new("seq_len", self.seq_len, "must be ≥ 8"));
        }
        if self.depth_buckets == 0 || self.depth_buckets > self.seq_len {
            return Err(TaskError::new("depth_buckets", self.depth_buckets, format!("must be in 1..=seq_len = {}", self.seq_len)));
        }
        // The text is checked once the loader has filled it in.
        if self.text_vocab > 0 && (self.text.len() <= self.text_len() || self.text_vocab < 2) {
            return Err(TaskError::new("seq_len", self.seq_len, format!("the text has {} tokens; needs more than seq_len", self.text.len())));
        }
        Ok(())
    }

    fn generate(&self, rng: &mut Rng) -> Example {
        let n = self.text_len();
        let start = rng.below((self.text.len() - n) as u64) as usize;
        let depth = rng.below(n as u64 + 1) as usize; // text tokens before the needle
        let key = rng.below(self.text_vocab as u64) as u32;
        let value = rng.below(self.text_vocab as u64) as u32;
        let text = &self.text[start..start + n];
        let mut tokens = Vec::with_capacity(self.seq_len + 1);
        tokens.extend(&text[..depth]);
        tokens.extend([self.needle_id(), key, value]);
        tokens.extend(&text[depth..]);
        tokens.extend([self.query_id(), key, value]);
        debug_assert_eq!(tokens.len(), self.seq_len + 1);
        let answers = vec![self.seq_len - 1];
        let bucket = (depth * self.depth_buckets / (n + 1)).min(self.depth_buckets - 1);
        Example { bucket: Some(bucket), ..Example::shifted(tokens, answers) }
    }
}
