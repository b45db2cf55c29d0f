//! Tokenizers: characters (vocabulary from the corpus, saved with the run), raw bytes, or
//! byte-level BPE ([`Bpe`]).

use serde::{Deserialize, Serialize};

use crate::bpe::Bpe;
use crate::corpus::DataError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tokenizer {
    /// One token per Unicode scalar value seen in the corpus, sorted (nanoGPT's char level).
    Char { chars: Vec<char> },
    /// One token per byte: vocabulary 256, works on any input.
    Byte,
    /// Bare token ids `0..vocab` of a synthetic task, written as space-separated numbers.
    Ids { vocab: usize },
    /// Byte-level BPE: learned from the corpus or loaded from a `tokenizer.json`.
    Bpe(Bpe),
}

impl Tokenizer {
    /// Character vocabulary of `text`, sorted.
    pub fn char_from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Tokenizer::Char { chars }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char { chars } => chars.len(),
            Tokenizer::Byte => 256,
            Tokenizer::Ids { vocab } => *vocab,
            Tokenizer::Bpe(bpe) => bpe.vocab_size(),
        }
    }

    /// Token ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Char { chars } => text
                .chars()
                .map(|c| {
                    chars.binary_search(&c).map(|i| i as u32).map_err(|_| DataError::UnknownChar(c))
                })
                .collect(),
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Ids { vocab } => text
                .split_whitespace()
                .map(|w| match w.parse::<u32>() {
                    Ok(id) if (id as usize) < *vocab => Ok(id),
                    _ => Err(DataError::BadId { word: w.to_string(), vocab: *vocab }),
                })
                .collect(),
            Tokenizer::Bpe(bpe) => bpe.encode(text).map_err(DataError::Tokenizer),
        }
    }

    /// Token ids of raw bytes: any bytes for the byte tokenizer; the others need UTF-8.
    pub fn encode_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Byte => Ok(bytes.iter().map(|&b| u32::from(b)).collect()),
            _ => self.encode(std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 { name: name.to_string(), offset: e.valid_up_to() })?),
        }
    }

    /// Text of token ids (bytes that are not valid UTF-8 are replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Char { chars } => ids.iter().map(|&i| chars.get(i as usize).copied().unwrap_or('\u{FFFD}')).collect(),
            Tokenizer::Byte => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Ids { .. } => ids.iter().map(|i| format!(" {i}")).collect(),
            Tokenizer::Bpe(bpe) => bpe.decode(ids),
        }
    }
}
