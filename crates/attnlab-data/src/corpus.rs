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
    #[error("data.path = {0:?}: not a regular file (a FIFO, device or folder); give a text file")]
    NotRegular(PathBuf),
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
    #[error("tokenizer: {0}")]
    Tokenizer(String),
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

/// A loaded corpus (its bytes, UTF-8 or not) and the name it goes by in logs and summaries.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub bytes: Vec<u8>,
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

/// Reads a regular file (a FIFO, device or folder is refused before it is opened, so nothing
/// blocks on it).
fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let unreadable = |err: std::io::Error| match err.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing(path.to_path_buf()),
        _ => DataError::Unreadable { path: path.to_path_buf(), err },
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(DataError::NotRegular(path.to_path_buf()));
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    if bytes.is_empty() {
        return Err(DataError::Empty(path.display().to_string()));
    }
    Ok(bytes)
}

impl Corpus {
    /// The corpus as UTF-8 text (what the character tokenizer needs).
    pub fn text(&self) -> Result<&str, DataError> {
        std::str::from_utf8(&self.bytes).map_err(|e| DataError::NotUtf8 { name: self.name.clone(), offset: e.valid_up_to() })
    }

    /// Hex sha256 of the corpus bytes (part of every run id: a rewritten file is new data).
    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }

    /// Loads a source; Tiny Shakespeare is checked against its sha256.
    pub fn load(source: &DataSource) -> Result<Corpus, DataError> {
        match source {
            DataSource::Builtin => Ok(Corpus { name: "builtin".into(), bytes: builtin::text().into_bytes() }),
            DataSource::TinyShakespeare => {
                let path = find_tiny_shakespeare()?;
                let bytes = read_bytes(&path)?;
                let got = sha256_hex(&bytes);
                if got != TINY_SHAKESPEARE_SHA256 {
                    return Err(DataError::BadChecksum { path, got });
                }
                Ok(Corpus { name: "tinyshakespeare".into(), bytes })
            }
            DataSource::File(path) => Ok(Corpus { name: path.display().to_string(), bytes: read_bytes(path)? }),
        }
    }
}
