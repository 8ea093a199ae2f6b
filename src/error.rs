//! One error type for the whole crate: every failure a user can cause has a variant that
//! says what was wrong, so callers (the node, the tools) can log it and carry on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("missing tensor `{name}` in the checkpoint (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype} (need BF16, F16 or F32)")]
    TensorDtype { name: String, dtype: String },
    #[error("model config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("image: {0}")]
    Image(String),
    #[error("state: {0}")]
    State(String),
    #[error("normalization stats: {0}")]
    NormStats(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("invalid parameter `{name}`: {reason}")]
    Parameter { name: String, reason: String },
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("bag: {0}")]
    Bag(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
