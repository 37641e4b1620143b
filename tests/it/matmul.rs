//! Matmul against a naive f64 triple loop at awkward shapes, with transposed, strided and broadcast operands.

use anyhow::Result;
use rankfold_tensor::{DType, Device, Rng, Tensor};

use crate::common::{assert_close, Tol};

/// Naive [b, m, k]·[b, k, n] in f64 from row-major data.
fn naive(a: &[f64], b: &[f64], batch: usize, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                out[(bi * m + i) * n + j] = (0..k).map(|p| a[(bi * m + i) * k + p] * b[(bi * k + p) * n + j]).sum();
            }
        }
    }
    out
}

fn rand(rng: &mut Rng, dims: &[usize]) -> Result<Tensor> {
    Ok(rng.uniform_tensor(-1.0, 1.0, dims.to_vec(), DType::F32, Device::Cpu)?)
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_vec::<f64>()?)
}

#[test]
fn awkward_shapes_plain_and_transposed() -> Result<()> {
    let mut rng = Rng::new(11);
    let sizes = [1usize, 7, 33, 129];
    for &m in &sizes {
        for &k in &sizes {
            for &n in &[1usize, 8, 33, 129] {
                let a = rand(&mut rng, &[m, k])?;
                let b = rand(&mut rng, &[k, n])?;
                let want = naive(&f64s(&a)?, &f64s(&b)?, 1, m, k, n);
                let tol = Tol { rel: 1e-5, abs: 1e-5 * (k as f64).sqrt() };
                assert_close(&f64s(&a.matmul(&b)?)?, &want, tol, &format!("{m}x{k}·{k}x{n}"))?;
                // The same product from transposed storage: aᵀᵀ and bᵀᵀ are strided views, never copied.
                let at = a.t()?.contiguous()?.t()?;
                let bt = b.t()?.contiguous()?.t()?;
                assert!(m == 1 || k == 1 || !at.is_contiguous());
                assert_close(&f64s(&at.matmul(&bt)?)?, &want, tol, &format!("transposed {m}x{k}·{k}x{n}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn batched_broadcast_and_f64() -> Result<()> {
    let mut rng = Rng::new(12);
    let (b, m, k, n) = (3, 17, 9, 5);
    let a = rand(&mut rng, &[b, m, k])?;
    let w = rand(&mut rng, &[k, n])?;
    // [b, m, k]·[k, n]: the rhs is broadcast over the batch (folded into one GEMM internally).
    let wb: Vec<f64> = (0..b).flat_map(|_| f64s(&w).unwrap()).collect();
    let want = naive(&f64s(&a)?, &wb, b, m, k, n);
    assert_close(&f64s(&a.matmul(&w)?)?, &want, Tol { rel: 1e-5, abs: 1e-5 }, "broadcast rhs")?;
    // A narrowed (strided) batch of the lhs.
    let a2 = a.narrow(1, 2, 11)?;
    let want2 = naive(&f64s(&a2)?, &wb, b, 11, k, n);
    assert_close(&f64s(&a2.matmul(&w)?)?, &want2, Tol { rel: 1e-5, abs: 1e-5 }, "narrowed lhs")?;
    // [1, m, k]·[b, k, n] and an f64 product, exact to rounding.
    let a1 = rand(&mut rng, &[1, m, k])?.to_dtype(DType::F64)?;
    let bb = rand(&mut rng, &[b, k, n])?.to_dtype(DType::F64)?;
    let a1b: Vec<f64> = (0..b).flat_map(|_| f64s(&a1).unwrap()).collect();
    let want3 = naive(&a1b, &f64s(&bb)?, b, m, k, n);
    assert_close(&f64s(&a1.matmul(&bb)?)?, &want3, Tol { rel: 1e-12, abs: 1e-12 }, "broadcast lhs f64")?;
    // bf16 storage computes in f32.
    let ah = a.to_dtype(DType::BF16)?;
    let wh = w.to_dtype(DType::BF16)?;
    let wantb = naive(&f64s(&ah)?, &(0..b).flat_map(|_| f64s(&wh).unwrap()).collect::<Vec<_>>(), b, m, k, n);
    let got = ah.matmul(&wh)?;
    assert_eq!(got.dtype(), DType::BF16);
    // The product accumulates in f32 (error ≤ k·2⁻²⁴·Σ|a·w| < 1e-5 for k = 9 and entries in [−1, 1]) and
    // rounds once to bf16 (≤ 2⁻⁸ relative, bf16's unit roundoff).
    let bound = Tol { rel: crate::gpu::BF16_UNIT_ROUNDOFF, abs: 1e-5 };
    assert_close(&f64s(&got)?, &wantb, bound, "bf16")?;
    Ok(())
}

#[test]
fn shape_errors_name_the_op() -> Result<()> {
    let a = Tensor::zeros((2, 3), DType::F32, Device::Cpu)?;
    let b = Tensor::zeros((4, 2), DType::F32, Device::Cpu)?;
    let e = a.matmul(&b).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 2]"), "{e}");
    let c = Tensor::zeros((3, 2), DType::F64, Device::Cpu)?;
    assert!(a.matmul(&c).unwrap_err().to_string().contains("dtype"));
    Ok(())
}
