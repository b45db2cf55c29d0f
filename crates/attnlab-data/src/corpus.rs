//! Text corpora: Tiny Shakespeare (found locally, checksum-checked), any UTF-8 file, or the
//! built-in generated corpus that needs no download.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::builtin;

/// Tiny Shakespeare (Karpathy's char-rnn `input.txt`).
pub const TINY_SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
pub const TINY_SHAKESPEARE_SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";
pub const TINY_SHAKESPEARE_BYTES: usize = 1_115_394;
/// Where the corpus is looked for, below the working directory or any of its ancestors.
pub const TINY_SHAKESPEARE_PATHS: &[&str] =
    &["datasets/tinyshakespeare/input.txt", "shared/datasets/tinyshakespeare/input.txt"];

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data.path = {0:?}: file not found")]
    Missing(PathBuf),
    #[error("data.path = {path:?}: cannot read: {err}")]
    Unreadable { path: PathBuf, err: std::io::Error },
    #[error("data: {0} is empty")]
    Empty(String),
    #[error("data: {name} is not valid UTF-8 (byte {offset}); use data.tokenizer = \"byte\" for binary input")]
    NotUtf8 { name: String, offset: usize },
    #[error("data.corpus = \"tinyshakespeare\": not found in {searched}; run `just data` to download it, or set data.corpus = \"builtin\"")]
    ShakespeareMissing { searched: String },
    #[error("data: {path:?} has sha256 {got}, expected {TINY_SHAKESPEARE_SHA256}: re-download it with `just data`")]
    BadChecksum { path: PathBuf, got: String },
    #[error("data: {name} has {tokens} tokens; the {split} split gets {split_tokens}, fewer than block + 1 = {needed}: use a longer text or a smaller train.block")]
    TooShort { name: String, tokens: usize, split: &'static str, split_tokens: usize, needed: usize },
    #[error("character {0:?} is not in the tokenizer's vocabulary")]
    UnknownChar(char),
    #[error("{word:?} is not a token id below {vocab} (a task's input is space-separated ids)")]
    BadId { word: String, vocab: usize },
}

/// Where the text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The generated corpus of [`builtin`].
    Builtin,
    /// Tiny Shakespeare, found by [`find_tiny_shakespeare`].
    TinyShakespeare,
    /// Any UTF-8 text file.
    File(PathBuf),
}

/// A loaded text and the name it goes by in logs and summaries.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub text: String,
}

/// Looks for Tiny Shakespeare under the working directory and each of its ancestors.
pub fn find_tiny_shakespeare() -> Result<PathBuf, DataError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut searched = Vec::new();
    for dir in cwd.ancestors() {
        for rel in TINY_SHAKESPEARE_PATHS {
            let p = dir.join(rel);
            if p.is_file() {
                return Ok(p);
            }
            searched.push(p.display().to_string());
        }
    }
    Err(DataError::ShakespeareMissing { searched: searched.join(", ") })
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing(path.to_path_buf()),
        _ => DataError::Unreadable { path: path.to_path_buf(), err },
    })?;
    if bytes.is_empty() {
        return Err(DataError::Empty(path.display().to_string()));
    }
    String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        name: path.display().to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}

impl Corpus {
    /// Loads a source; Tiny Shakespeare is checked against its sha256.
    pub fn load(source: &DataSource) -> Result<Corpus, DataError> {
        match source {
            DataSource::Builtin => Ok(Corpus { name: "builtin".into(), text: builtin::text() }),
            DataSource::TinyShakespeare => {
                let path = find_tiny_shakespeare()?;
                let text = read_text(&path)?;
                let got = sha256_hex(text.as_bytes());
                if got != TINY_SHAKESPEARE_SHA256 {
                    return Err(DataError::BadChecksum { path, got });
                }
                Ok(Corpus { name: "tinyshakespeare".into(), text })
            }
            DataSource::File(path) => Ok(Corpus { name: path.display().to_string(), text: read_text(path)? }),
        }
    }
}
