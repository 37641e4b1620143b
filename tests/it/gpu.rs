//! The runtimes every GPU-path kernel test loops over, and the comparisons those tests share.
//!
//! `runtimes()` always returns ptxsim's `SimRuntime`; with `RANKFOLD_GPU_CHECK=1` it adds `CudaRuntime` on
//! device 0, and then a missing GPU is an error rather than a skip (`cargo xtask gpu-check` relies on this).

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use rankfold_kernels::elementwise::Element;
use rankfold_kernels::{CudaRuntime, GpuRuntime};
use rankfold_ptxsim::SimRuntime;
use rankfold_tensor::Rng;

/// The runtimes to test on, each with a short name for messages.
pub(crate) fn runtimes() -> Result<Vec<(&'static str, Arc<dyn GpuRuntime>)>> {
    let mut all: Vec<(&'static str, Arc<dyn GpuRuntime>)> = vec![("ptxsim", Arc::new(SimRuntime::new()))];
    if std::env::var("RANKFOLD_GPU_CHECK").is_ok_and(|v| v == "1") {
        let cuda = CudaRuntime::new(0).context("RANKFOLD_GPU_CHECK=1, but CUDA device 0 is not usable")?;
        all.push(("cuda", Arc::new(cuda)));
    }
    Ok(all)
}

/// Fails unless `got` has `want`'s length, matches `want`'s non-finite elements in kind (NaN, +∞, −∞), is finite
/// where `want` is, and lies within `tol` relative Frobenius over the finite elements.
pub(crate) fn check_frobenius<T: Element>(got: &[T], want: &[T], tol: f64, what: &str) -> Result<()> {
    check_frobenius_floor(got, want, 0.0, tol, what)
}

/// As `check_frobenius`, measuring the error against `max(‖want‖, floor)`: for results that are differences of
/// much larger terms, `floor` is the norm of those terms (rounding is relative to them, not to the result).
pub(crate) fn check_frobenius_floor<T: Element>(got: &[T], want: &[T], floor: f64, tol: f64, what: &str) -> Result<()> {
    ensure!(got.len() == want.len(), "{what}: {} values, want {}", got.len(), want.len());
    let got = widen(got);
    let want = widen(want);
    if let Some(i) = (0..got.len()).find(|&i| !crate::common::same_kind(got[i], want[i])) {
        anyhow::bail!("{what}: element {i} is {}, want {}", got[i], want[i]);
    }
    let finite = |v: &[f64]| v.iter().map(|x| if x.is_finite() { *x } else { 0.0 }).collect::<Vec<_>>();
    let (got, want) = (finite(&got), finite(&want));
    let diff: f64 = got.iter().zip(&want).map(|(g, w)| (g - w) * (g - w)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt().max(floor);
    let err = if norm > 0.0 { diff / norm } else { diff };
    ensure!(err <= tol, "{what}: relative Frobenius error {err:.3e} exceeds {tol:.0e}");
    Ok(())
}

/// The values as f64.
pub(crate) fn widen<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// `n` uniform values in [lo, hi), rounded to `T`.
pub(crate) fn random<T: Element>(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<T> {
    (0..n).map(|_| T::from_f32((lo + (hi - lo) * rng.uniform()) as f32)).collect()
}

/// The relative Frobenius tolerance of a storage type: 1e-5 for f32 (summation order), and 2⁻⁹ for bf16: kernel
/// and twin each round their f32 result to bf16 once, so they can differ only where the two f32 values straddle a
/// rounding boundary, by one ulp (at most 2⁻⁷ relative) on those elements; a Frobenius error of 2⁻⁹ would need a
/// sixteenth of all elements off by a full ulp, and a wrong or missing term moves far more.
pub(crate) fn tol_of<T: Element>() -> f64 {
    match T::TYPE {
        rankfold_kernels::elementwise::FloatType::F32 => 1e-5,
        rankfold_kernels::elementwise::FloatType::Bf16 => 1.0 / 512.0,
    }
}

/// bf16's unit roundoff, 2⁻⁸ (8 bits of precision): the largest relative error of rounding a value to bf16.
pub(crate) const BF16_UNIT_ROUNDOFF: f64 = 1.0 / 256.0;
