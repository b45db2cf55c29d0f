//! Input errors: found before any compute, reported as one line, exit code 2.

/// A bad experiment file, override, value or dataset. The message names the source, the field,
/// the value and what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl SpecError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}
