//! Vectorizable math for the CPU kernels: an f32 `exp` that the compiler turns into SIMD (no libm call), and
//! lane-split sums and dot products (a single float accumulator cannot be vectorized, sixteen can).

use crate::Float;

const LANES: usize = 16;

/// `exp(x)` for f32 within 2 ulp (Cephes `expf` polynomial after range reduction by ln 2), branch-free:
/// x < −87.3 gives exactly 0 (so masked −inf logits vanish), x > 88.7 gives +inf, NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and subtracting 1.5·2²³ (plain SSE2 adds; `floor` would be a libm call
    // without SSE4.1 and stop the loop from vectorizing).
    // The integer n also sits in the low mantissa bits of t, which gives 2ⁿ without a float→int conversion.
    const MAGIC: f32 = 12_582_912.0;
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    let v = y * scale;
    let v = if x < -87.3 { 0.0 } else { v };
    let v = if x > 88.7 { f32::INFINITY } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// `exp` in the compute type: the vectorizable one for f32, the standard library's for f64.
#[inline(always)]
pub(crate) fn exp<T: Float>(x: T) -> T {
    if T::DTYPE == crate::DType::F32 {
        T::from_f32(exp_f32(x.to_f32()))
    } else {
        x.exp()
    }
}

/// Sum with sixteen independent accumulators.
#[inline]
pub(crate) fn sum<T: Float>(v: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().copied().sum::<T>() + rest.iter().copied().sum::<T>()
}

/// `Σ exp(v − shift)` with sixteen independent accumulators (a log-sum-exp without materializing the exps).
#[inline]
pub(crate) fn sum_exp<T: Float>(v: &[T], shift: T) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp(c[i] - shift);
        }
    }
    acc.iter().copied().sum::<T>() + rest.iter().map(|&x| exp(x - shift)).sum::<T>()
}

/// Dot product with sixteen independent accumulators.
#[inline]
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().copied().sum::<T>() + ra.iter().zip(rb).map(|(&x, &y)| x * y).sum::<T>()
}

/// Maximum with sixteen lanes (NaN is ignored unless every value is NaN).
#[inline]
pub(crate) fn max<T: Float>(v: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().chain(rest).fold(T::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1e4), 0.0);
        assert_eq!(exp_f32(1e4), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn lane_reductions_match_sequential() {
        let v: Vec<f64> = (0..37).map(|i| (i as f64 * 0.7).sin()).collect();
        let w: Vec<f64> = (0..37).map(|i| (i as f64 * 0.3).cos()).collect();
        assert!((sum(&v) - v.iter().sum::<f64>()).abs() < 1e-12);
        assert!((dot(&v, &w) - v.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()).abs() < 1e-12);
        assert_eq!(max(&v), v.iter().cloned().fold(f64::MIN, f64::max));
        let want: f64 = v.iter().map(|x| (x - 0.4).exp()).sum();
        assert!((sum_exp(&v, 0.4) - want).abs() < 1e-12);
        let v32: Vec<f32> = v.iter().map(|&x| x as f32 * 9.0).collect();
        let want: f64 = v32.iter().map(|&x| (x as f64 - 3.0).exp()).sum();
        assert!((sum_exp(&v32, 3.0) as f64 - want).abs() < 1e-5 * want, "f32 sum_exp");
    }
}
