//! The subcommands of the `rankfold` binary, one module each.

pub(crate) mod common;
pub(crate) mod eval;
pub(crate) mod forward;
pub(crate) mod generate;
pub(crate) mod inspect;
pub(crate) mod merge;
pub(crate) mod quantize;
pub(crate) mod train;
