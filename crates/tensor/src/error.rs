//! The crate's error type: every variant names the operation (and the shapes, dtypes, file or tensor) involved.

use crate::{DType, Device, Shape};

/// Errors from tensor operations, autograd, optimizers and file I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op}: shape mismatch between {lhs} and {rhs}")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },
    #[error("{op}: dtype mismatch between {lhs} and {rhs}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: dtype {dtype} is not supported")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: tensors live on different devices ({lhs:?} and {rhs:?})")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    #[error("{op}: dimension {dim} is out of range for shape {shape}")]
    DimOutOfRange { op: &'static str, dim: isize, shape: Shape },
    #[error("{op}: {msg} (shape {shape})")]
    InvalidShape { op: &'static str, shape: Shape, msg: String },
    #[error("{op}: cannot turn {elems} elements into shape {to}")]
    ElementCount { op: &'static str, elems: usize, to: Shape },
    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange { op: &'static str, index: i64, size: usize },
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    #[error("device {0:?} is not available: {1}")]
    DeviceUnavailable(Device, String),
    #[error("backward: {0}")]
    Backward(String),
    #[error("{op}: parameter `{name}`: {msg}")]
    Parameter { op: &'static str, name: String, msg: String },
    #[error("safetensors file {path}: {msg}")]
    SafeTensors { path: String, msg: String },
    #[error("safetensors file {path}: tensor `{name}`: {msg}")]
    SafeTensorsTensor { path: String, name: String, msg: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// `std::result::Result` with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }
}
