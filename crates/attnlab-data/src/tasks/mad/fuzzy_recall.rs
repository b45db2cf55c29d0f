//! MAD fuzzy in-context recall (MAD.md §1.3), multi-query mode.
//!
//! Keys `[0, ⌊(V−1)/2⌋)`, values `[⌊(V−1)/2⌋, V−1)`, pad `V−1`. A key is an ordered tuple of
//! 1..=`k_motif` distinct key tokens, a value a tuple of 1..=`v_motif` distinct value tokens
//! (sizes uniform; at validation and test every key has `k_motif` tokens). A probe pair is drawn
//! first and inserted (unscored) once the sequence reaches a random offset (at the latest as the
//! last pair); other pairs are drawn fresh (a key's value is bound at its first occurrence;
//! drawing the probe's key counts as placing the probe); the sequence ends with the probe's key and value, and is left-padded
//! to `seq_len + 1` tokens. The model reads `x[..seq_len]` and predicts `x[1..]`: training
//! scores every position, validation and test only the value tokens of keys seen before (each
//! under teacher forcing: the last key token predicts v[0], v[0] predicts v[1], …).
//!
//! Motifs are drawn directly (distinct tokens by Floyd's algorithm), not by enumerating
//! permutation lists per sample as the reference does, so large vocabularies cost nothing; a
//! repeated key copies its value from its first occurrence, with no allocation per pair.

use serde::{Deserialize, Serialize};

use super::need_vocab;
use crate::rng::Rng;
use crate::tasks::{Example, Generator, TaskError};

/// `kind = "mad_fuzzy_recall"` (baseline: vocab 16, seq_len 128, motifs of up to 3 tokens).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadFuzzyRecall {
    pub vocab: usize,
    /// Tokens the model reads.
    pub seq_len: usize,
    /// Largest key, in tokens.
    pub k_motif: usize,
    /// Largest value, in tokens.
    pub v_motif: usize,
}

impl Default for MadFuzzyRecall {
    fn default() -> Self {
        Self { vocab: 16, seq_len: 128, k_motif: 3, v_motif: 3 }
    }
}

impl MadFuzzyRecall {
    /// The pad token.
    pub fn pad(&self) -> u32 {
        self.vocab as u32 - 1
    }

    fn key_tokens(&self) -> usize {
        (self.vocab - 1) / 2
    }

    /// Draws a motif of `size` tokens (or a uniform size up to `max`) of distinct tokens from
    /// `base..base + n` into `out` (cleared first), through the scratch buffer `buf`.
    fn motif(rng: &mut Rng, base: usize, n: usize, max: usize, size: Option<usize>, buf: &mut Vec<usize>, out: &mut Vec<u32>) {
        let size = size.unwrap_or_else(|| 1 + rng.below(max as u64) as usize);
        crate::tasks::sample_distinct_into(rng, n, size, buf);
        out.clear();
        out.extend(buf.iter().map(|&t| (base + t) as u32));
    }

    /// A key as one integer (digits base `key_tokens + 1`, so sizes differ too); validation
    /// keeps `(key_tokens + 1)^k_motif` below 2⁶⁴.
    fn code(&self, key: &[u32]) -> u64 {
        key.iter().fold(0u64, |acc, &t| acc * (self.key_tokens() as u64 + 1) + t as u64 + 1)
    }

    fn sample(&self, rng: &mut Rng, eval: bool) -> Example {
        let (nk, nv) = (self.key_tokens(), self.vocab - 1 - self.key_tokens());
        let key_size = eval.then_some(self.k_motif);
        let (mut buf, mut k, mut v) = (Vec::new(), Vec::with_capacity(self.k_motif), Vec::with_capacity(self.v_motif));
        let (mut k_probe, mut v_probe) = (Vec::new(), Vec::new());
        Self::motif(rng, 0, nk, self.k_motif, key_size, &mut buf, &mut k_probe);
        Self::motif(rng, nk, nv, self.v_motif, None, &mut buf, &mut v_probe);
        let probe_code = self.code(&k_probe);
        let probe_len = k_probe.len() + v_probe.len();
        let stop = self.seq_len - probe_len - (self.k_motif + self.v_motif);
        let probe_at = rng.below((self.seq_len - 2 * probe_len).min(stop) as u64) as usize;
        let mut x: Vec<u32> = Vec::with_capacity(self.seq_len + 1);
        let mut scored: Vec<usize> = Vec::new(); // indices into x of scored value tokens
        // key code → (start, length) of its value's first occurrence in x
        let mut bound: rustc_hash::FxHashMap<u64, (usize, usize)> = Default::default();
        let mut placed = false;
        while x.len() < stop {
            if !placed && (x.len() >= probe_at || x.len() + self.k_motif + self.v_motif >= stop) {
                placed = true;
                bound.insert(probe_code, (x.len() + k_probe.len(), v_probe.len()));
                x.extend(k_probe.iter().chain(&v_probe));
                continue;
            }
            Self::motif(rng, 0, nk, self.k_motif, key_size, &mut buf, &mut k);
            let code = self.code(&k);
            x.extend(&k);
            match bound.get(&code) {
                Some(&(start, len)) => {
                    scored.extend(x.len()..x.len() + len);
                    x.extend_from_within(start..start + len);
                }
                None => {
                    let value = if code == probe_code {
                        placed = true;
                        &v_probe
                    } else {
                        Self::motif(rng, nk, nv, self.v_motif, None, &mut buf, &mut v);
                        &v
                    };
                    bound.insert(code, (x.len(), value.len()));
                    x.extend(value.iter());
                }
            }
        }
        debug_assert!(placed, "the probe is placed by the last pair");
        x.extend(&k_probe);
        scored.extend(x.len()..x.len() + v_probe.len());
        x.extend(&v_probe);
        let pads = self.seq_len + 1 - x.len();
        let mut tokens = vec![self.pad(); pads];
        tokens.extend(x);
        // Position p predicts tokens[p + 1]: a value token at index i of x is scored at pads + i − 1.
        let answers = scored.into_iter().map(|i| pads + i - 1).collect();
        Example { train_all: true, ..Example::shifted(tokens, answers) }
    }
}

impl Generator for MadFuzzyRecall {
    fn len(&self) -> usize {
        self.seq_len
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn validate(&self) -> Result<(), TaskError> {
        for (field, v) in [("k_motif", self.k_motif), ("v_motif", self.v_motif)] {
            if v == 0 {
                return Err(TaskError::new(field, v, "must be ≥ 1"));
            }
        }
        let half = (self.vocab.saturating_sub(1)) / 2;
        need_vocab(self.vocab, 2 * self.k_motif + 1, &format!("⌊(vocab − 1)/2⌋ = {half} key tokens must hold a key of k_motif = {} distinct tokens, and a pad", self.k_motif))?;
        need_vocab(self.vocab, self.key_tokens().max(1) + self.v_motif + 1, &format!("the value tokens must hold a value of v_motif = {} distinct tokens", self.v_motif))?;
        if (self.key_tokens() as f64 + 1.0).powi(self.k_motif as i32) >= 2f64.powi(63) {
            return Err(TaskError::new("k_motif", self.k_motif, format!("(⌊(vocab − 1)/2⌋ + 1)^k_motif must be < 2⁶³ (keys are coded as one integer); vocab = {}", self.vocab)));
        }
        let min = 2 * (self.k_motif + self.v_motif) + 1;
        if self.seq_len < min {
            return Err(TaskError::new("seq_len", self.seq_len, format!("must be ≥ {min} (2·(k_motif + v_motif) + 1: a probe pair, its query and padding)")));
        }
        Ok(())
    }
    fn generate(&self, rng: &mut Rng) -> Example {
        self.sample(rng, false)
    }
    fn generate_eval(&self, rng: &mut Rng) -> Example {
        self.sample(rng, true)
    }
}
