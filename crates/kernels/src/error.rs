//! The error type of rankfold-kernels: shape checks of launchers, runtime and driver failures.

/// Everything that can go wrong validating or running a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A launcher was handed shapes that do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A buffer is smaller than the launch reads or writes through it.
    #[error("{op}: buffer `{name}` holds {have} bytes, the launch needs {need}")]
    BufferTooSmall { op: &'static str, name: &'static str, have: usize, need: usize },
    /// A launch handed a kernel arguments that do not match its parameter list.
    #[error("kernel {kernel}: {msg}")]
    Arguments { kernel: String, msg: String },
    /// No CUDA driver or no device was found; the message says which.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// The CUDA driver returned an error.
    #[error(transparent)]
    Cuda(#[from] cudarc::driver::DriverError),
    /// cuBLAS returned an error.
    #[error("cuBLAS: {0:?}")]
    Cublas(cudarc::cublas::result::CublasError),
    /// The runtime ran out of device memory.
    #[error("out of device memory: asked for {requested} bytes, {free} of {total} free")]
    OutOfMemory { requested: usize, free: usize, total: usize },
    /// A device pointer does not lie inside a live allocation (or was already freed).
    #[error("{op}: invalid device pointer {ptr:#x} (+{bytes} bytes)")]
    InvalidPointer { op: &'static str, ptr: u64, bytes: usize },
    /// A runtime-specific failure, e.g. a ptxsim check (the boxed error can be downcast).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The result type of rankfold-kernels.
pub type Result<T> = std::result::Result<T, Error>;
