//! The one integration-test binary of rankfold (one binary links once; modules below are its parts).

// Shared helpers: tolerances, random tensors, f64 finite differences.
mod common;
// Backward of every differentiable op against f64 central finite differences (proptest).
mod grad;
// Matmul against a naive loop at awkward shapes, transposed and broadcast operands.
mod matmul;
// Forward numerics: softmax / cross-entropy stability, reductions, masks, RoPE conventions, casts, memory.
mod ops;
// safetensors round trips for every dtype and error reporting.
mod io;
// A tiny causal transformer LM built from these ops learns to reverse sequences.
mod train;
