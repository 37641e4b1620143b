//! The one error type of rankfold-train: every data error names the file (or source) and, where there is one, the
//! line or row.

use std::path::PathBuf;

/// Errors of rankfold-train.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line of a JSONL file (1-based `line`) is not valid JSON or not a JSON object.
    #[error("{source_name}:{line}: invalid JSON: {message}")]
    Json {
        /// The file name (or the name given to in-memory text).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A record lacks a field its format needs.
    #[error("{source_name}:{line}: missing field `{field}`")]
    MissingField {
        /// The file name (or the name given to in-memory text).
        source_name: String,
        /// 1-based line number (for IMDB: the 1-based row of the array).
        line: usize,
        /// The field.
        field: String,
    },
    /// A field has the wrong type or an invalid value.
    #[error("{source_name}:{line}: field `{field}` must be {expected}")]
    BadField {
        /// The file name (or the name given to in-memory text).
        source_name: String,
        /// 1-based line number (for IMDB: the 1-based row of the array).
        line: usize,
        /// The field.
        field: String,
        /// What it must be.
        expected: String,
    },
    /// Settings that cannot work (batch size 0, split sizes larger than the data set, …).
    #[error("invalid data settings: {0}")]
    Config(String),
    /// A metrics file holds no training step to plot.
    #[error("{path}: no training steps to plot")]
    EmptyMetrics {
        /// The metrics file (or the plot's destination when plotting in-memory metrics).
        path: PathBuf,
    },
    /// Drawing or writing a plot failed.
    #[error("{path}: cannot draw the plot: {message}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Building tensors from a batch failed.
    #[error(transparent)]
    Tensor(#[from] rankfold_tensor::Error),
    /// An adapter operation of the trainer (activation, saving, loading, hooks) failed.
    #[error(transparent)]
    Adapter(#[from] rankfold_adapters::Error),
    /// Loading or running a model failed.
    #[error(transparent)]
    Model(#[from] rankfold_models::Error),
    /// A run spec (a recipe TOML file or command-line flags) is invalid; `origin` names the file or "flags".
    #[error("{origin}: {message}")]
    Spec {
        /// The recipe file, or "command line".
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An evaluation was stopped by its caller (the progress callback asked to stop, e.g. after Ctrl-C).
    #[error("the evaluation was stopped after {done} of {total} examples")]
    Interrupted {
        /// Examples evaluated before the stop.
        done: usize,
        /// Examples it would have evaluated.
        total: usize,
    },
    /// Too many steps in a row had a non-finite loss or gradient norm; a checkpoint was written first.
    #[error(
        "{count} steps in a row up to step {step} were skipped ({reason}); stopped after writing {}: lower the \
         learning rate, clip the gradients or check the data, then resume",
        checkpoint.display()
    )]
    Diverged {
        /// Skipped steps in a row.
        count: usize,
        /// The last of them.
        step: usize,
        /// Why the last one was skipped.
        reason: String,
        /// The checkpoint written before stopping.
        checkpoint: PathBuf,
    },
    /// A checkpoint's files do not match the digests its trainer state recorded (or are missing).
    #[error("{path}: the checkpoint is damaged: {msg}")]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// Which file, and how.
        msg: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
