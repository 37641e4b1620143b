//! The CPU twin of `kernels/gemm.cu`: a triple loop with f64 accumulation, one rounding on store.

use half::bf16;

use super::{GemmLayout, GemmParams};
use crate::elementwise::Element;
use crate::Result;

/// `c = alpha·a·op(b) + beta·c` as `p` describes (C is read only when `beta ≠ 0`).
pub fn gemm<O: Element>(
    p: &GemmParams,
    a: &[bf16],  // [m, k] row-major, row stride lda
    b: &[bf16],  // [n, k] (Nt) or [k, n] (Nn) row-major, row stride ldb
    c: &mut [O], // [m, n] row-major, row stride ldc
) -> Result<()> {
    p.check("gemm::cpu::gemm", a.len(), b.len(), c.len())?;
    for i in 0..p.m {
        for j in 0..p.n {
            let mut acc = 0.0f64;
            for l in 0..p.k {
                let bv = match p.layout {
                    GemmLayout::Nt => b[j * p.ldb + l],
                    GemmLayout::Nn => b[l * p.ldb + j],
                };
                acc += a[i * p.lda + l].to_f64() * bv.to_f64();
            }
            let dst = &mut c[i * p.ldc + j];
            let mut v = p.alpha as f64 * acc;
            if p.beta != 0.0 {
                v += p.beta as f64 * dst.to_f32() as f64;
            }
            *dst = O::from_f32(v as f32);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_equals_nn_of_the_transpose() {
        // The same product through both layouts: B as [n, k] and its transpose as [k, n].
        let (m, n, k) = (3, 5, 4);
        let a: Vec<bf16> = (0..m * k).map(|i| bf16::from_f32((i as f32 * 0.3).sin())).collect();
        let bt: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32((i as f32 * 0.7).cos())).collect();
        let bn: Vec<bf16> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
        let mut c1 = vec![0.0f32; m * n];
        let mut c2 = vec![0.0f32; m * n];
        gemm(&GemmParams::packed(GemmLayout::Nt, m, n, k), &a, &bt, &mut c1).expect("valid shapes");
        gemm(&GemmParams::packed(GemmLayout::Nn, m, n, k), &a, &bn, &mut c2).expect("valid shapes");
        assert_eq!(c1, c2);
    }

    #[test]
    fn short_operands_and_small_strides_are_errors() {
        let p = GemmParams::packed(GemmLayout::Nt, 2, 2, 3);
        let mut c = [0.0f32; 4];
        assert!(gemm(&p, &[bf16::ZERO; 5], &[bf16::ZERO; 6], &mut c).is_err());
        let q = GemmParams { lda: 2, ..p };
        assert!(gemm(&q, &[bf16::ZERO; 6], &[bf16::ZERO; 6], &mut c).is_err());
    }
}
