//! The softmax family (`kernels/softmax.cu`): row softmax over the last dim, forward and backward, f32 and bf16.
//!
//! Forward: `y = exp(x − max) / Σ exp(x − max)` per row, so rows of ±1e4 stay finite. Backward:
//! `dx = y ⊙ (dy − Σ dy ⊙ y)` per row, from the forward output `y`. bf16 is a storage type; the math is f32.
//! [`cpu`] holds the CPU twin, [`launch`] the validated launchers for any `GpuRuntime`.

pub mod cpu;
pub mod launch;

pub use launch::{backward, forward};

use crate::elementwise::FloatType;
use crate::KernelId;

/// The shape of a softmax launch: `rows` contiguous rows of `cols` elements each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxShape {
    pub rows: usize,
    pub cols: usize,
}

/// Rows longer than this run one 256-thread block per row (the `_long` kernels); shorter ones one warp per row.
pub const LONG_ROW: usize = 2048;

/// The forward kernel for `dtype` and the row length `cols`.
pub const fn forward_kernel(dtype: FloatType, cols: usize) -> KernelId {
    match (dtype, cols > LONG_ROW) {
        (FloatType::F32, false) => KernelId::SoftmaxForwardF32,
        (FloatType::Bf16, false) => KernelId::SoftmaxForwardBf16,
        (FloatType::F32, true) => KernelId::SoftmaxForwardLongF32,
        (FloatType::Bf16, true) => KernelId::SoftmaxForwardLongBf16,
    }
}

/// The backward kernel for `dtype` and the row length `cols`.
pub const fn backward_kernel(dtype: FloatType, cols: usize) -> KernelId {
    match (dtype, cols > LONG_ROW) {
        (FloatType::F32, false) => KernelId::SoftmaxBackwardF32,
        (FloatType::Bf16, false) => KernelId::SoftmaxBackwardBf16,
        (FloatType::F32, true) => KernelId::SoftmaxBackwardLongF32,
        (FloatType::Bf16, true) => KernelId::SoftmaxBackwardLongBf16,
    }
}
