//! Data for attnlab: tokenizers, corpora (Tiny Shakespeare, any UTF-8 file, a built-in corpus)
//! and seeded random-window batching. No Burn dependency: batches are plain token ids.

pub mod batcher;
pub mod bpe;
pub mod builtin;
pub mod corpus;
pub mod dataset;
pub mod rng;
pub mod tasks;
pub mod tokenizer;

pub use bpe::Bpe;
pub use batcher::{Batch, Split, TokenSplits};
pub use corpus::{Corpus, DataError, DataSource};
pub use dataset::{Dataset, EvalBatch};
pub use rng::Rng;
pub use tasks::{TaskConfig, TaskData};
pub use tokenizer::Tokenizer;
