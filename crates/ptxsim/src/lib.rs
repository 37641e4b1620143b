//! rankfold-ptxsim: a functional PTX interpreter that runs the exact PTX rankfold ships, on the CPU.

//!
//! `parse` turns PTX text into a `Module` (decoded once); `SimRuntime` implements `rankfold_kernels::GpuRuntime`
//! by linking a kernel into a flat program and running its blocks of warps on simulated memory, checking bounds,
//! alignment, shared-memory races and uninitialized shared reads, and filling `Counters`.

mod counters;
mod decode;
mod error;
mod exec;
mod gemm;
mod ir;
mod lex;
mod memory;
mod parse;
mod program;
mod runtime;
#[cfg(test)]
mod sim_tests;
pub mod types;

pub use counters::Counters;
pub use error::{Result, SimError, Site};
pub use ir::{Class, Module};
pub use parse::{entry_names, parse};
pub use runtime::SimRuntime;
#[allow(dead_code)]
pub(crate) mod mma;
#[allow(dead_code, unused_imports)]
pub(crate) mod numeric;
