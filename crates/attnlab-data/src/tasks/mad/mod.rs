//! The MAD synthetic suite (Mechanistic Architecture Design, Poli et al., ICML 2024), generated
//! as the authors' code (athms/mad-lab) does it; `../shared/MAD.md` is the specification.
//!
//! | kind | task | example length | training loss | scored at validation/test |
//! |---|---|---|---|---|
//! | `mad_recall` | in-context recall (multi-query) | `seq_len − 1` | every position (next token) | values of keys seen before |
//! | `mad_noisy_recall` | the same with noise slots | `seq_len − 1` | every position | the same, noise slots never |
//! | `mad_fuzzy_recall` | keys and values of 1–3 tokens | `seq_len` | every position | value tokens of keys seen before |
//! | `mad_selective_copy` | copy the data tokens among blanks | `seq_len` | the copied tokens | the same |
//! | `mad_compression` | reproduce the whole input from one vector | `seq_len` | every position | every position |
//! | `mad_memorization` | a fixed key → value map in the weights | `seq_len` | the values | the same |
//!
//! Where attnlab's samples differ from the reference's (its bugs are not copied):
//! - every random draw comes from the run's own stream ([`Rng`], SplitMix64), not NumPy's; the
//!   blanks of selective copying use the task's stream (the reference uses NumPy's global one);
//! - selective copying uses the `num_tokens` it is given (the reference ignored it before
//!   December 2024 and copied 16 tokens in every setting);
//! - generation is sequential, so samples are never duplicated by parallel workers;
//! - noisy recall exempts one *body* slot from noise, so a sequence always holds a key to probe
//!   (the reference's exempt slot can land on the probe and crash);
//! - fuzzy recall inserts the probe pair at the latest as the last pair, so the probe key always
//!   occurs before the final query (the reference's offset can fall past the last pair);
//! - validation and test sets come from their own seeds and are disjoint from training (the
//!   reference continues one stream and only warns about overlap).
//!
//! [`Rng`]: crate::rng::Rng

pub mod compression;
pub mod fuzzy_recall;
pub mod memorization;
pub mod recall;
pub mod selective_copy;

pub use compression::MadCompression;
pub use fuzzy_recall::MadFuzzyRecall;
pub use memorization::MadMemorization;
pub use recall::{MadNoisyRecall, MadRecall};
pub use selective_copy::MadSelectiveCopy;

use super::TaskError;

/// Errors when `vocab` is below `needed`, naming what the tokens are for.
fn need_vocab(vocab: usize, needed: usize, why: &str) -> Result<(), TaskError> {
    if vocab < needed {
        return Err(TaskError::new("vocab", vocab, format!("must be ≥ {needed} ({why})")));
    }
    Ok(())
}
