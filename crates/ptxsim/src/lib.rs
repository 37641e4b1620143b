//! rankfold-ptxsim: a functional PTX interpreter that runs the exact PTX rankfold ships, on the CPU.

pub mod types;
