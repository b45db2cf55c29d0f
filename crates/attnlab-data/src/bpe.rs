//! Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al. 2019)
//! through Hugging Face's `tokenizers` crate: learned from a corpus with a vocabulary size, or
//! loaded from any `tokenizer.json` it can read. Saved inside the run's `tokenizer.json` as
//! `{"kind": "bpe", "tokenizer": <the Hugging Face tokenizer.json>}`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{Tokenizer as HfTokenizer, TokenizerBuilder};

/// The smallest vocabulary a learned BPE may have: the 256 byte symbols plus one merge.
pub const MIN_VOCAB: usize = 257;

/// A BPE tokenizer and its canonical JSON (equality and saving use the JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "Saved", into = "Saved")]
pub struct Bpe {
    inner: HfTokenizer,
    json: String,
}

/// How a [`Bpe`] is saved: the Hugging Face JSON as a nested object.
#[derive(Serialize, Deserialize)]
struct Saved {
    tokenizer: serde_json::Value,
}

impl TryFrom<Saved> for Bpe {
    type Error = String;
    fn try_from(saved: Saved) -> Result<Self, String> {
        Bpe::from_json(&saved.tokenizer.to_string())
    }
}

impl From<Bpe> for Saved {
    fn from(bpe: Bpe) -> Saved {
        Saved { tokenizer: serde_json::from_str(&bpe.json).expect("tokenizers writes JSON") }
    }
}

impl PartialEq for Bpe {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for Bpe {}

impl Bpe {
    fn new(inner: HfTokenizer) -> Result<Self, String> {
        let json = inner.to_string(false).map_err(|e| e.to_string())?;
        Ok(Self { inner, json })
    }

    /// Learns a byte-level BPE of `vocab_size` tokens (≥ [`MIN_VOCAB`]) from `text`: every
    /// byte is a symbol, so any text encodes. Deterministic (ties are broken by token ids).
    pub fn train(text: &str, vocab_size: usize) -> Result<Self, String> {
        let byte_level = ByteLevel::new(false, true, true);
        let mut tokenizer: HfTokenizer = TokenizerBuilder::<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(BPE::default().into())
            .with_pre_tokenizer(Some(byte_level.into()))
            .with_decoder(Some(byte_level.into()))
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let trainer = BpeTrainer::builder().vocab_size(vocab_size).min_frequency(2).show_progress(false).initial_alphabet(alphabet).build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        tokenizer.train(&mut trainer, text.split_inclusive('\n')).map_err(|e| e.to_string())?;
        Self::new(tokenizer)
    }

    /// Reads a Hugging Face `tokenizer.json` (any model the crate supports; BPE is the one
    /// documented and tested).
    pub fn from_json(json: &str) -> Result<Self, String> {
        let inner: HfTokenizer = json.parse().map_err(|e: Box<dyn std::error::Error + Send + Sync>| e.to_string())?;
        Self::new(inner)
    }

    /// The Hugging Face `tokenizer.json` text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// One more than the largest token id, added tokens included (a loaded file may leave
    /// ids unused: the embedding must still cover the largest).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1)
    }

    /// Tokens the vocabulary holds (≤ [`Bpe::vocab_size`]).
    pub fn tokens(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` (no special tokens added), encoded a line at a time as the
    /// vocabulary was learned (and so that a large corpus never becomes one `Encoding`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        for line in text.split_inclusive('\n') {
            ids.extend_from_slice(self.inner.encode(line, false).map_err(|e| e.to_string())?.get_ids());
        }
        Ok(ids)
    }

    /// Text of token ids (unknown ids are skipped by the decoder).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }
}
