//! rankfold-ptxsim: a functional PTX interpreter that runs the exact PTX rankfold ships, on the CPU.
//!
//! `parse` turns PTX text into a `Module` (each instruction decoded once); `SimRuntime` implements
//! `rankfold_kernels::GpuRuntime` by linking a kernel into a flat program and running it on simulated memory,
//! checking bounds, alignment, shared-memory races and uninitialized shared reads, and filling `Counters`.
//!
//! Execution model (what a test can rely on):
//! - Blocks run one after another; in a block, warps of 32 lanes run one at a time until every lane has exited
//!   or waits at `bar.sync`; the barrier then releases (exited threads count as arrived). In a warp the lanes
//!   at the smallest PC run together, which reconverges the structured control flow NVRTC emits.
//! - Device addresses start at `0x7f00_0000_0000`, 256-byte aligned, with a 1 MiB unmapped gap after each
//!   allocation. Generic addresses of shared and local memory live in fixed windows, so `cvta` round-trips.
//! - A shared-memory race is two different threads touching a byte in one barrier interval, at least one of
//!   them writing; lanes of one warp are ordered only by `bar.warp.sync` (`__syncwarp`), as on Volta and
//!   later. Atomics never race. Reading a shared byte no thread of the block has written is an error.
//! - Counters: global sectors are the distinct 32-byte sectors of each warp-level request; bank conflicts are
//!   the wavefronts beyond the first per request phase (32 banks of 4 bytes; 8-byte accesses in two phases of
//!   16 lanes, 16-byte accesses in four phases of 8; lanes reading one word share it).

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
