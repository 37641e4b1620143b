//! Element types: the `DType` tag and the `WithDType` trait that ties each tag to its Rust type.

use half::{bf16, f16};

/// The element type of a tensor. Floating types compute in f32 (F64 in f64); F16/BF16 are storage formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    U8,
    U32,
    I64,
}

impl DType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::U32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// Whether the type holds floating-point values.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// The type arithmetic on this type is carried out in: F64 for F64, F32 for every other type.
    pub const fn compute(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    /// The name safetensors and PyTorch use for the type.
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I64 => "i64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust type that can be stored in a tensor.
pub trait WithDType: Copy + Send + Sync + 'static + bytemuck::Pod + std::fmt::Debug + PartialOrd {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! with_dtype {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
with_dtype!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |x: f64| x, |v: f64| v);
with_dtype!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
with_dtype!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
with_dtype!(u8, U8, |x: u8| x as f64, |v: f64| v as u8);
with_dtype!(u32, U32, |x: u32| x as f64, |v: f64| v as u32);
with_dtype!(i64, I64, |x: i64| x as f64, |v: f64| v as i64);

/// A float type that CPU kernels compute in: f32 or f64.
pub trait Float:
    WithDType
    + num_traits_lite::FloatOps
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

/// The handful of float functions the kernels need, implemented for f32 and f64 by the standard library.
pub(crate) mod num_traits_lite {
    /// Transcendental and rounding functions shared by f32 and f64.
    pub trait FloatOps: Sized {
        fn exp(self) -> Self;
        fn ln(self) -> Self;
        fn sqrt(self) -> Self;
        fn tanh(self) -> Self;
        fn abs(self) -> Self;
        fn powf(self, e: Self) -> Self;
        fn max(self, o: Self) -> Self;
        fn min(self, o: Self) -> Self;
        fn erf(self) -> Self;
        fn is_nan(self) -> bool;
    }
    macro_rules! float_ops {
        ($t:ty) => {
            impl FloatOps for $t {
                #[inline]
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                #[inline]
                fn ln(self) -> Self {
                    <$t>::ln(self)
                }
                #[inline]
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
                #[inline]
                fn tanh(self) -> Self {
                    <$t>::tanh(self)
                }
                #[inline]
                fn abs(self) -> Self {
                    <$t>::abs(self)
                }
                #[inline]
                fn powf(self, e: Self) -> Self {
                    <$t>::powf(self, e)
                }
                #[inline]
                fn max(self, o: Self) -> Self {
                    <$t>::max(self, o)
                }
                #[inline]
                fn min(self, o: Self) -> Self {
                    <$t>::min(self, o)
                }
                #[inline]
                fn erf(self) -> Self {
                    // f32 needs only single precision: the short rational form is ~20x faster than the series.
                    if std::mem::size_of::<$t>() == 4 {
                        super::erf_single(self as f64) as $t
                    } else {
                        super::erf_f64(self as f64) as $t
                    }
                }
                #[inline]
                fn is_nan(self) -> bool {
                    <$t>::is_nan(self)
                }
            }
        };
    }
    float_ops!(f32);
    float_ops!(f64);
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// The error function to single precision (absolute error below 1.2e-7, one f32 ulp at 1.0): erfc from the
/// Chebyshev-fitted exponent of Numerical Recipes' `erfcc`, one `exp` per call (NaN in, NaN out).
pub(crate) fn erf_single(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erf = 1.0 - t * poly.exp();
    if x < 0.0 {
        -erf
    } else {
        erf
    }
}

/// The error function, to about 1e-15 absolute: the Maclaurin series for |x| < 2.5 and the continued
/// fraction of erfc beyond (NaN in, NaN out).
pub(crate) fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    if x.is_nan() {
        return x;
    }
    if ax < 2.5 {
        // Maclaurin series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)); converges quickly for |x| < 2.5.
        let x2 = x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            // `<=` also ends the loop at x = 0, where every term is 0; 200 terms bound it for any input.
            if add.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // Continued fraction for erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …)))), Lentz's method.
        let tiny = 1e-300;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for i in 1..200 {
            let a = i as f64 * 0.5;
            d = ax + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = ax + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Reference values of erf to 16 significant digits; erf(0) = 0 once made the series loop forever.
        let cases = [(0.0, 0.0), (0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (3.0, 0.9999779095030014)];
        for (x, want) in cases {
            assert!((erf_f64(x) - want).abs() < 1e-13, "erf({x}) = {} want {want}", erf_f64(x));
            assert!((erf_f64(-x) + want).abs() < 1e-13);
        }
    }

    #[test]
    fn single_precision_erf_is_within_its_bound() {
        // A grid over [-6, 6] with an awkward step, against the 1e-15 series / continued fraction.
        for i in 0..=12_000 {
            let x = -6.0 + i as f64 * 0.001_000_3;
            let (got, want) = (erf_single(x), erf_f64(x));
            assert!((got - want).abs() < 1.2e-7, "erf({x}) = {got} want {want}");
        }
        assert!(erf_single(f64::NAN).is_nan());
    }

    #[test]
    fn sizes() {
        assert_eq!(DType::BF16.size_in_bytes(), 2);
        assert_eq!(DType::I64.size_in_bytes(), 8);
        assert!(!DType::U32.is_float());
    }
}
