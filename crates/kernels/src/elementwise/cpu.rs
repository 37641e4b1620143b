//! The CPU twin of `kernels/elementwise.cu`: plain loops over the output index, math in f64.
//!
//! Each value is computed in f64 from the widened inputs, then rounded to f32 and (for bf16) to bf16, so the
//! twin is the correctly rounded result up to the final narrowing; the kernels' f32 math stays within a few ulp.

use super::{launch::check_view, BinaryOp, Element, UnaryOp};
use crate::Result;

/// `op(a, b)` in f64.
pub fn binary_f64(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
    }
}

/// `op(x)` in f64.
pub fn unary_f64(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sqr => x * x,
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::GeluErf => 0.5 * x * erfc(-x / std::f64::consts::SQRT_2),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
    }
}

/// The error function: its Maclaurin series for |z| < 2, `±(1 − erfc(|z|))` beyond.
///
/// At |z| = 2 the largest series term is about 2, so the sum keeps about 15 correct digits.
pub fn erf(z: f64) -> f64 {
    if z.is_nan() {
        return z;
    }
    if z.abs() >= 2.0 {
        return z.signum() * (1.0 - erfc(z.abs()));
    }
    // erf(z) = 2/√π · Σ_n (−1)ⁿ z^(2n+1) / (n!·(2n+1)); `term` carries (−1)ⁿ z^(2n+1) / n!.
    let mut term = z;
    let mut sum = z;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) {
        n += 1.0;
        term *= -z * z / n;
        sum += term / (2.0 * n + 1.0);
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// The complementary error function `1 − erf(z)`, accurate in relative terms also where it is tiny.
///
/// For z ≥ 2 it evaluates Laplace's continued fraction
/// `erfc(z) = e^(−z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …))))` bottom-up from 80 levels (far past convergence at z ≥ 2); below 2 it is `1 − erf(z)`, which loses at most
/// two digits there since erfc(2) ≈ 0.005.
pub fn erfc(z: f64) -> f64 {
    if z.is_nan() {
        return z;
    }
    if z < 2.0 {
        return 1.0 - erf(z);
    }
    let mut t = z;
    for n in (1..=80).rev() {
        t = z + (n as f64 / 2.0) / t;
    }
    (-z * z).exp() / (std::f64::consts::PI.sqrt() * t)
}

/// The element offset of row-major output index `i` in a view with `strides` over `dims`.
fn offset(mut i: usize, dims: &[usize], strides: &[usize]) -> usize {
    let mut off = 0;
    for d in (0..dims.len()).rev() {
        off += (i % dims[d]) * strides[d];
        i /= dims[d];
    }
    off
}

/// `y = op(a, b)` over `dims`; `a` and `b` are read through their element strides (0 broadcasts).
pub fn binary<T: Element>(
    op: BinaryOp,
    dims: &[usize],
    a: &[T], // strided view of dims
    a_strides: &[usize],
    b: &[T], // strided view of dims
    b_strides: &[usize],
) -> Result<Vec<T>> {
    const OP: &str = "elementwise::cpu::binary";
    let n = check_view(OP, "a", dims, a_strides, a.len())?;
    check_view(OP, "b", dims, b_strides, b.len())?;
    Ok((0..n)
        .map(|i| {
            let x = a[offset(i, dims, a_strides)].to_f32() as f64;
            let z = b[offset(i, dims, b_strides)].to_f32() as f64;
            T::from_f32(binary_f64(op, x, z) as f32)
        })
        .collect())
}

/// `y = op(x)` over `dims`; `x` is read through its element strides (0 broadcasts).
pub fn unary<T: Element>(
    op: UnaryOp,
    dims: &[usize],
    x: &[T], // strided view of dims
    x_strides: &[usize],
) -> Result<Vec<T>> {
    let n = check_view("elementwise::cpu::unary", "x", dims, x_strides, x.len())?;
    Ok((0..n).map(|i| T::from_f32(unary_f64(op, x[offset(i, dims, x_strides)].to_f32() as f64) as f32)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_identities() {
        // erf is odd, erf(0) = 0, erf + erfc = 1 on both sides of the switch at 2, and two table values
        // (Abramowitz & Stegun 7.1): erfc(1) = 0.157299207050285, erfc(3) = 2.209049699858544e-5.
        assert_eq!(erf(0.0), 0.0);
        for &x in &[0.1, 0.7, 1.3, 1.999, 2.0, 2.9, 3.9, 6.0] {
            assert!((erf(x) + erf(-x)).abs() < 1e-15);
            assert!((erf(x) + erfc(x) - 1.0).abs() < 1e-15);
        }
        assert!((erfc(1.0) - 0.157_299_207_050_285).abs() < 1e-13);
        assert!((erfc(3.0) / 2.209_049_699_858_544e-5 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn broadcast_reads_the_same_element() {
        // A row vector broadcast over 3 rows against a column vector broadcast over 4 columns: an outer sum.
        let row = [1.0f32, 2.0, 3.0, 4.0];
        let col = [10.0f32, 20.0, 30.0];
        let y = binary(BinaryOp::Add, &[3, 4], &row, &[0, 1], &col, &[1, 0]).expect("valid views");
        for r in 0..3 {
            for c in 0..4 {
                assert_eq!(y[r * 4 + c], row[c] + col[r]);
            }
        }
    }

    #[test]
    fn a_short_buffer_is_an_error() {
        let x = [1.0f32; 5];
        assert!(unary(UnaryOp::Exp, &[2, 3], &x, &[3, 1]).is_err());
    }
}
