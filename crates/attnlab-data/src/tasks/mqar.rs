//! Multi-query associative recall (Zoology, Arora et al. 2023, §3).
//!
//! Token 0 is filler; keys come from `1..=key_range`, values from the rest of the vocabulary,
//! with `key_range = (vocab − 1) / 2`. A sequence of `seq_len` tokens opens with `num_pairs`
//! key–value pairs (distinct keys), then `num_queries` of those keys reappear, each followed by
//! its value, at pair-aligned slots of the remaining space drawn without replacement with
//! probability ∝ i^(power_a − 1) for slot i = 1, 2, … (Zoology's power law: most queries close to
//! the pairs, a long tail far away). Filler elsewhere. At each query key the model must predict
//! the value.

use serde::{Deserialize, Serialize};

use super::{sample_distinct, Example, Generator, TaskError};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mqar {
    pub vocab: usize,
    pub seq_len: usize,
    pub num_pairs: usize,
    /// Queries per sequence (≤ num_pairs; each pair is queried at most once).
    pub num_queries: usize,
    /// Power-law exponent α of the query placement (Zoology uses 0.01).
    pub power_a: f64,
}

impl Default for Mqar {
    fn default() -> Self {
        Self { vocab: 64, seq_len: 64, num_pairs: 8, num_queries: 8, power_a: 0.01 }
    }
}

impl Mqar {
    /// Keys are `1..=key_range`.
    pub fn key_range(&self) -> usize {
        (self.vocab - 1) / 2
    }

    /// Pair-aligned query slots after the key–value section.
    fn slots(&self) -> usize {
        (self.seq_len - 2 * self.num_pairs) / 2
    }

    /// Draws `k` distinct slots with weights ∝ i^(α−1), i = 1..=n (sequential weighted draws).
    fn query_slots(&self, rng: &mut Rng, k: usize) -> Vec<usize> {
        let n = self.slots();
        let mut weights: Vec<f64> = (1..=n).map(|i| (i as f64).powf(self.power_a - 1.0)).collect();
        let mut chosen = Vec::with_capacity(k);
        for _ in 0..k {
            let total: f64 = weights.iter().sum();
            let mut r = rng.unit_f64() * total;
            let mut pick = n - 1;
            for (i, w) in weights.iter().enumerate() {
                if *w > 0.0 && r < *w {
                    pick = i;
                    break;
                }
                r -= w;
            }
            while weights[pick] == 0.0 {
                pick -= 1; // rounding at the very end of the scan
            }
            weights[pick] = 0.0;
            chosen.push(pick);
        }
        chosen
    }
}

impl Generator for Mqar {
    fn len(&self) -> usize {
        self.seq_len
    }

    fn vocab(&self) -> usize {
        self.vocab
    }

    fn validate(&self) -> Result<(), TaskError> {
        if self.vocab < 5 {
            return Err(TaskError::new("vocab", self.vocab, "must be ≥ 5 (filler, keys, values)"));
        }
        if self.num_pairs == 0 || self.num_pairs > self.key_range() {
            return Err(TaskError::new("num_pairs", self.num_pairs, format!("must be in 1..={} (distinct keys: (vocab − 1) / 2)", self.key_range())));
        }
        if self.num_queries == 0 || self.num_queries > self.num_pairs {
            return Err(TaskError::new("num_queries", self.num_queries, format!("must be in 1..=num_pairs = {}", self.num_pairs)));
        }
        if self.seq_len < 2 * self.num_pairs + 2 * self.num_queries {
            return Err(TaskError::new(
                "seq_len",
                self.seq_len,
                format!("must be ≥ 2·num_pairs + 2·num_queries = {}", 2 * self.num_pairs + 2 * self.num_queries),
            ));
        }
        if !(self.power_a > 0.0 && self.power_a <= 1.0) {
            return Err(TaskError::new("power_a", self.power_a, "must be in (0, 1]"));
        }
        Ok(())
    }

    fn generate(&self, rng: &mut Rng) -> Example {
        let keys: Vec<u32> = sample_distinct(rng, self.key_range(), self.num_pairs).into_iter().map(|k| k as u32 + 1).collect();
        let value_base = self.key_range() + 1;
        let values: Vec<u32> = (0..self.num_pairs).map(|_| (value_base + rng.below((self.vocab - value_base) as u64) as usize) as u32).collect();
        let mut tokens = vec![0u32; self.seq_len + 1];
        for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
            tokens[2 * i] = *k;
            tokens[2 * i + 1] = *v;
        }
        let queried = sample_distinct(rng, self.num_pairs, self.num_queries);
        let mut answers = Vec::with_capacity(self.num_queries);
        for (slot, pair) in self.query_slots(rng, self.num_queries).into_iter().zip(queried) {
            let p = 2 * self.num_pairs + 2 * slot;
            tokens[p] = keys[pair];
            tokens[p + 1] = values[pair];
            answers.push(p);
        }
        answers.sort_unstable();
        Example::shifted(tokens, answers)
    }
}
