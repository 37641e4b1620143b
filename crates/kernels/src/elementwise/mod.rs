//! The elementwise family (`kernels/elementwise.cu`): broadcast binary ops and unary ops on f32 and bf16.
//!
//! Inputs are strided views of the output's dims (rank ≤ [`MAX_RANK`], element strides, stride 0 broadcasts);
//! the output is contiguous. bf16 is a storage type: every op computes in f32 and rounds once on store.
//! [`cpu`] holds the CPU twin, [`launch`] the validated launchers for any `GpuRuntime`.

pub mod cpu;
pub mod launch;

pub use launch::{binary, unary, DeviceLayout};

use crate::KernelId;

/// The largest rank a strided launch accepts.
pub const MAX_RANK: usize = 6;

/// The storage type of a kernel's floating-point operands (computation is f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    F32,
    Bf16,
}

impl FloatType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::Bf16 => 2,
        }
    }
}

/// A host element type the CPU twins and tests use: `f32` or `half::bf16`.
pub trait Element: bytemuck::Pod + Copy + std::fmt::Debug + Send + Sync {
    /// The matching kernel storage type.
    const TYPE: FloatType;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Narrows from f32 (round to nearest even for bf16).
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const TYPE: FloatType = FloatType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for half::bf16 {
    const TYPE: FloatType = FloatType::Bf16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}

/// A binary op `y = op(a, b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// The larger operand; a NaN operand yields the other one (as `f32::max`).
    Max,
    /// The smaller operand; a NaN operand yields the other one (as `f32::min`).
    Min,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 6] =
        [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min];

    /// The kernel that runs this op on `dtype`.
    pub const fn kernel(self, dtype: FloatType) -> KernelId {
        use BinaryOp::*;
        use FloatType::*;
        match (self, dtype) {
            (Add, F32) => KernelId::ElementwiseAddF32,
            (Sub, F32) => KernelId::ElementwiseSubF32,
            (Mul, F32) => KernelId::ElementwiseMulF32,
            (Div, F32) => KernelId::ElementwiseDivF32,
            (Max, F32) => KernelId::ElementwiseMaxF32,
            (Min, F32) => KernelId::ElementwiseMinF32,
            (Add, Bf16) => KernelId::ElementwiseAddBf16,
            (Sub, Bf16) => KernelId::ElementwiseSubBf16,
            (Mul, Bf16) => KernelId::ElementwiseMulBf16,
            (Div, Bf16) => KernelId::ElementwiseDivBf16,
            (Max, Bf16) => KernelId::ElementwiseMaxBf16,
            (Min, Bf16) => KernelId::ElementwiseMinBf16,
        }
    }
}

/// A unary op `y = op(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    /// Natural logarithm.
    Log,
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Recip,
    /// `x²`.
    Sqr,
    /// `max(x, 0)`, keeping NaN.
    Relu,
    /// The tanh approximation `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    Gelu,
    /// The exact form `0.5·x·(1 + erf(x/√2))`.
    GeluErf,
    /// `x·sigmoid(x)`.
    Silu,
    /// `1 / (1 + exp(−x))`.
    Sigmoid,
    Tanh,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 14] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Sqr,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluErf,
        UnaryOp::Silu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
    ];

    /// The kernel that runs this op on `dtype`.
    pub const fn kernel(self, dtype: FloatType) -> KernelId {
        use FloatType::*;
        use UnaryOp::*;
        match (self, dtype) {
            (Neg, F32) => KernelId::ElementwiseNegF32,
            (Abs, F32) => KernelId::ElementwiseAbsF32,
            (Exp, F32) => KernelId::ElementwiseExpF32,
            (Log, F32) => KernelId::ElementwiseLogF32,
            (Sqrt, F32) => KernelId::ElementwiseSqrtF32,
            (Rsqrt, F32) => KernelId::ElementwiseRsqrtF32,
            (Recip, F32) => KernelId::ElementwiseRecipF32,
            (Sqr, F32) => KernelId::ElementwiseSqrF32,
            (Relu, F32) => KernelId::ElementwiseReluF32,
            (Gelu, F32) => KernelId::ElementwiseGeluF32,
            (GeluErf, F32) => KernelId::ElementwiseGeluErfF32,
            (Silu, F32) => KernelId::ElementwiseSiluF32,
            (Sigmoid, F32) => KernelId::ElementwiseSigmoidF32,
            (Tanh, F32) => KernelId::ElementwiseTanhF32,
            (Neg, Bf16) => KernelId::ElementwiseNegBf16,
            (Abs, Bf16) => KernelId::ElementwiseAbsBf16,
            (Exp, Bf16) => KernelId::ElementwiseExpBf16,
            (Log, Bf16) => KernelId::ElementwiseLogBf16,
            (Sqrt, Bf16) => KernelId::ElementwiseSqrtBf16,
            (Rsqrt, Bf16) => KernelId::ElementwiseRsqrtBf16,
            (Recip, Bf16) => KernelId::ElementwiseRecipBf16,
            (Sqr, Bf16) => KernelId::ElementwiseSqrBf16,
            (Relu, Bf16) => KernelId::ElementwiseReluBf16,
            (Gelu, Bf16) => KernelId::ElementwiseGeluBf16,
            (GeluErf, Bf16) => KernelId::ElementwiseGeluErfBf16,
            (Silu, Bf16) => KernelId::ElementwiseSiluBf16,
            (Sigmoid, Bf16) => KernelId::ElementwiseSigmoidBf16,
            (Tanh, Bf16) => KernelId::ElementwiseTanhBf16,
        }
    }
}

/// The row-major (contiguous) element strides of `dims`.
pub fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * dims[d + 1];
    }
    strides
}
