//! MAD in-context recall and noisy in-context recall (MAD.md §1.1–1.2), multi-query mode.
//!
//! With `V′ = vocab − noise_vocab`: keys `[0, V′/2)`, values `[V′/2, V′)`, noise `[V′, vocab)`.
//! The full sequence is `seq_len / 2` two-token slots. Each body slot is a noise slot (two noise
//! tokens) with probability `frac_noise`, else a key drawn uniformly and its value (drawn at the
//! key's first occurrence, then repeated). The last slot probes a key already presented. The
//! model reads `x[..seq_len − 1]` and predicts `x[1..]`: training scores every position (plain
//! next-token prediction, as MAD), validation and test score only the values whose key occurred
//! before. Shapes: inputs and targets `seq_len − 1` tokens.

use serde::{Deserialize, Serialize};

use super::need_vocab;
use crate::rng::Rng;
use crate::tasks::{Example, Generator, TaskError};

/// `kind = "mad_recall"`: MAD's in-context recall (baseline: vocab 16, seq_len 128).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadRecall {
    pub vocab: usize,
    /// Length of the full sequence (even); the model reads `seq_len − 1` tokens.
    pub seq_len: usize,
}

impl Default for MadRecall {
    fn default() -> Self {
        Self { vocab: 16, seq_len: 128 }
    }
}

/// `kind = "mad_noisy_recall"`: recall with noise slots (baseline: vocab 32 of which 16 noise,
/// seq_len 128, frac_noise 0.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadNoisyRecall {
    pub vocab: usize,
    pub seq_len: usize,
    /// Noise tokens, the top of the vocabulary.
    pub noise_vocab: usize,
    /// Probability that a body slot is a noise slot.
    pub frac_noise: f64,
}

impl Default for MadNoisyRecall {
    fn default() -> Self {
        Self { vocab: 32, seq_len: 128, noise_vocab: 16, frac_noise: 0.2 }
    }
}

/// The shared generator.
fn validate(vocab: usize, seq_len: usize, noise_vocab: usize, frac_noise: f64) -> Result<(), TaskError> {
    if seq_len % 2 != 0 || seq_len < 4 {
        return Err(TaskError::new("seq_len", seq_len, "must be even and ≥ 4 (two-token slots: at least one pair and the probe)"));
    }
    need_vocab(vocab, noise_vocab + 2, &format!("noise_vocab = {noise_vocab} noise tokens, at least one key and one value"))?;
    if !(0.0..1.0).contains(&frac_noise) {
        return Err(TaskError::new("frac_noise", frac_noise, "must be in [0, 1)"));
    }
    Ok(())
}

fn generate(vocab: usize, seq_len: usize, noise_vocab: usize, frac_noise: f64, rng: &mut Rng) -> Example {
    let usable = vocab - noise_vocab;
    let (keys, values) = (usable / 2, usable - usable / 2);
    let slots = seq_len / 2;
    let mut bound: Vec<Option<u32>> = vec![None; keys];
    let mut presented: Vec<u32> = Vec::new();
    let mut x = Vec::with_capacity(seq_len);
    let mut scored = Vec::new(); // indices into x of scored values
    let exempt = if noise_vocab > 0 { rng.below(slots as u64 - 1) as usize } else { usize::MAX };
    for slot in 0..slots - 1 {
        if slot != exempt && noise_vocab > 0 && rng.unit_f64() < frac_noise {
            for _ in 0..2 {
                x.push((usable + rng.below(noise_vocab as u64) as usize) as u32);
            }
            continue;
        }
        let k = rng.below(keys as u64) as usize;
        let v = match bound[k] {
            Some(v) => {
                scored.push(x.len() + 1);
                v
            }
            None => {
                let v = (keys + rng.below(values as u64) as usize) as u32;
                bound[k] = Some(v);
                presented.push(k as u32);
                v
            }
        };
        x.extend([k as u32, v]);
    }
    let probe = presented[rng.below(presented.len() as u64) as usize];
    scored.push(x.len() + 1);
    x.extend([probe, bound[probe as usize].expect("presented keys are bound")]);
    // Position p reads x[p] and predicts x[p + 1]: a value at index i is scored at i − 1.
    let answers = scored.into_iter().map(|i| i - 1).collect();
    Example { train_all: true, ..Example::shifted(x, answers) }
}

impl Generator for MadRecall {
    fn len(&self) -> usize {
        self.seq_len - 1
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn validate(&self) -> Result<(), TaskError> {
        validate(self.vocab, self.seq_len, 0, 0.0)
    }
    fn generate(&self, rng: &mut Rng) -> Example {
        generate(self.vocab, self.seq_len, 0, 0.0, rng)
    }
}

impl Generator for MadNoisyRecall {
    fn len(&self) -> usize {
        self.seq_len - 1
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn validate(&self) -> Result<(), TaskError> {
        validate(self.vocab, self.seq_len, self.noise_vocab, self.frac_noise)
    }
    fn generate(&self, rng: &mut Rng) -> Example {
        generate(self.vocab, self.seq_len, self.noise_vocab, self.frac_noise, rng)
    }
}
