//! The tiled GEMM family (`kernels/gemm.cu`): bf16 inputs on tensor cores, f32 accumulation, bf16 or f32 out.
//!
//! `C = alpha·A·op(B) + beta·C` with A `[m, k]` row-major and B either `[n, k]` row-major ([`GemmLayout::Nt`],
//! the nn.Linear weight layout: `y = x·Wᵀ`) or `[k, n]` row-major ([`GemmLayout::Nn`]); C `[m, n]` row-major.
//! Every matrix has its own row stride. C is read only when `beta ≠ 0`. This is the base of the fused LoRA matmul.
//! [`cpu`] holds the CPU twin, [`launch`] the validated launcher for any `GpuRuntime`.

pub mod cpu;
pub mod launch;

pub use launch::gemm;

use crate::elementwise::FloatType;
use crate::{Error, KernelId, Result};

/// The largest dim or stride a GEMM accepts (see `GemmParams::check`).
pub const MAX_DIM: usize = i32::MAX as usize - 128;

/// How B is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmLayout {
    /// B `[n, k]` row-major; the product is `A·Bᵀ`.
    Nt,
    /// B `[k, n]` row-major; the product is `A·B`.
    Nn,
}

/// The shape, strides and scalars of one GEMM (strides are row strides in elements).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmParams {
    pub layout: GemmLayout,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl GemmParams {
    /// Densely packed operands (`lda = k`, `ldb = k` or `n`, `ldc = n`), `alpha = 1`, `beta = 0`.
    pub const fn packed(layout: GemmLayout, m: usize, n: usize, k: usize) -> Self {
        let ldb = match layout {
            GemmLayout::Nt => k,
            GemmLayout::Nn => n,
        };
        Self { layout, m, n, k, lda: k, ldb, ldc: n, alpha: 1.0, beta: 0.0 }
    }

    /// The element counts A, B and C must hold at least: `(rows − 1)·ld + cols` each, 0 for an unread operand.
    pub fn min_lens(&self) -> (usize, usize, usize) {
        let span = |rows: usize, cols: usize, ld: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * ld + cols
            }
        };
        let (b_rows, b_cols) = match self.layout {
            GemmLayout::Nt => (self.n, self.k),
            GemmLayout::Nn => (self.k, self.n),
        };
        if self.m == 0 || self.n == 0 {
            return (0, 0, 0);
        }
        (span(self.m, self.k, self.lda), span(b_rows, b_cols, self.ldb), span(self.m, self.n, self.ldc))
    }

    /// Checks the strides against the dims and the operand lengths (in elements) against `min_lens`.
    pub fn check(&self, op: &'static str, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
        let b_cols = match self.layout {
            GemmLayout::Nt => self.k,
            GemmLayout::Nn => self.n,
        };
        for (name, ld, cols) in [("lda", self.lda, self.k), ("ldb", self.ldb, b_cols), ("ldc", self.ldc, self.n)] {
            if ld < cols {
                return Err(Error::Shape {
                    op,
                    msg: format!("{name} = {ld} is less than the row length {cols} ({self:?})"),
                });
            }
        }
        // The kernel counts k tiles in signed 32-bit (`kt * BK`) and rounds k up to a tile: keep every dim below
        // 2³¹ − 128 so no index arithmetic in gemm.cu can wrap.
        let big = [self.m, self.n, self.k, self.lda, self.ldb, self.ldc].iter().any(|&v| v > MAX_DIM);
        let overflow = [(self.m, self.lda), (self.n.max(self.k), self.ldb), (self.m, self.ldc)]
            .iter()
            .any(|&(r, ld)| r.checked_mul(ld).is_none());
        if big || overflow {
            return Err(Error::Shape { op, msg: format!("dims or strides exceed {MAX_DIM} or overflow ({self:?})") });
        }
        let (na, nb, nc) = self.min_lens();
        for (name, have, need) in [("a", a_len, na), ("b", b_len, nb), ("c", c_len, nc)] {
            if have < need {
                return Err(Error::Shape { op, msg: format!("`{name}` holds {have} elements, {self:?} needs {need}") });
            }
        }
        Ok(())
    }
}

/// The kernel for a layout and an output type (inputs are always bf16).
pub const fn kernel(layout: GemmLayout, out: FloatType) -> KernelId {
    match (layout, out) {
        (GemmLayout::Nt, FloatType::Bf16) => KernelId::GemmNtBf16,
        (GemmLayout::Nt, FloatType::F32) => KernelId::GemmNtBf16F32,
        (GemmLayout::Nn, FloatType::Bf16) => KernelId::GemmNnBf16,
        (GemmLayout::Nn, FloatType::F32) => KernelId::GemmNnBf16F32,
    }
}
