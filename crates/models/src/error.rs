//! The crate's error type: every variant names the file and the field or tensor involved.

/// Errors from reading model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("GGUF file {path}: {field}: {msg}")]
    GgufHeader {
        path: String,
        field: String,
        msg: String,
    },
    #[error("GGUF file {path}: tensor `{tensor}`: {msg}")]
    GgufTensor {
        path: String,
        tensor: String,
        msg: String,
    },
    #[error("GGUF file {path}: metadata `{key}`: {msg}")]
    GgufMetadata {
        path: String,
        key: String,
        msg: String,
    },
    #[error("model config {path}: field `{field}`: {msg}")]
    Config {
        path: String,
        field: String,
        msg: String,
    },
    #[error("model weights {path}: tensor `{tensor}`: {msg}")]
    Weights {
        path: String,
        tensor: String,
        msg: String,
    },
    #[error("tokenizer {origin}: {msg}")]
    Tokenizer { origin: String, msg: String },
    #[error(transparent)]
    Tensor(#[from] rankfold_tensor::Error),
}

/// `std::result::Result` with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
