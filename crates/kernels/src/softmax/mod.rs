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

/// The forward kernel for `dtype`.
pub const fn forward_kernel(dtype: FloatType) -> KernelId {
    match dtype {
        FloatType::F32 => KernelId::SoftmaxForwardF32,
        FloatType::Bf16 => KernelId::SoftmaxForwardBf16,
    }
}

/// The backward kernel for `dtype`.
pub const fn backward_kernel(dtype: FloatType) -> KernelId {
    match dtype {
        FloatType::F32 => KernelId::SoftmaxBackwardF32,
        FloatType::Bf16 => KernelId::SoftmaxBackwardBf16,
    }
}
