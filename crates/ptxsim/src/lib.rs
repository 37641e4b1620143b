//! rankfold-ptxsim: a functional PTX interpreter that runs the exact PTX rankfold ships, on the CPU.

pub mod types;
#[allow(dead_code, unused_imports)]
pub(crate) mod numeric;
#[allow(dead_code)]
pub(crate) mod mma;
