//! The crate's one error type: every variant names the adapter, module path, file or tensor key involved.

use rankfold_tensor::Shape;

/// Errors from adapter configuration, injection, merging and PEFT file I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Tensor(#[from] rankfold_tensor::Error),
    #[error("adapter `{adapter}`: the config's target modules ({targets}) match no linear module of the model")]
    NoMatchingModule { adapter: String, targets: String },
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("no adapter named `{0}`")]
    UnknownAdapter(String),
    #[error("an adapter named `{0}` already exists")]
    DuplicateAdapter(String),
    #[error("module `{module}`: {msg}")]
    Module { module: String, msg: String },
    #[error("{file}: missing tensor `{key}`")]
    MissingTensor { file: String, key: String },
    #[error("{file}: tensor `{key}` has shape {got}, the adapter expects {expected}")]
    TensorShape {
        file: String,
        key: String,
        expected: Shape,
        got: Shape,
    },
    #[error("{file}: tensor `{key}` belongs to no module this adapter was injected into")]
    UnexpectedTensor { file: String, key: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// `std::result::Result` with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A configuration error for `field`.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// An error about the module at `module`.
    pub fn module(module: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Module {
            module: module.into(),
            msg: msg.into(),
        }
    }
    /// The error with `file` and the key prefix `prefix` filled into a tensor error that a layer raised with
    /// only the key's suffix (layers do not know where their tensors came from).
    pub fn in_file(self, file: &str, prefix: &str) -> Self {
        match self {
            Error::MissingTensor { key, .. } => Error::MissingTensor {
                file: file.into(),
                key: format!("{prefix}{key}"),
            },
            Error::TensorShape {
                key, expected, got, ..
            } => Error::TensorShape {
                file: file.into(),
                key: format!("{prefix}{key}"),
                expected,
                got,
            },
            Error::UnexpectedTensor { key, .. } => Error::UnexpectedTensor {
                file: file.into(),
                key: format!("{prefix}{key}"),
            },
            e => e,
        }
    }
}
