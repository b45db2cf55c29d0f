//! Data for attnlab: tokenizers, corpora (Tiny Shakespeare, any UTF-8 file, a built-in corpus)
//! and seeded random-window batching. No Burn dependency: batches are plain token ids.

pub mod batcher;
pub mod builtin;
pub mod corpus;
pub mod rng;
pub mod tokenizer;

pub use batcher::{Batch, Split, TokenSplits};
pub use corpus::{Corpus, DataError, DataSource};
pub use rng::Rng;
pub use tokenizer::Tokenizer;
