//! Exact software floating point: unpacks IEEE-style formats, computes sums, products, quotients and square
//! roots exactly (or with a sticky bit), and rounds once to any target format in any rounding direction.
//!
//! Every PTX float operation with a rounding modifier is "compute the exact result, then round it once", so
//! one exact core serves f16, bf16, tf32, f32 and f64 alike and no operation ever rounds twice.

/// A binary floating-point format: `man` stored fraction bits and `exp` exponent bits (plus one sign bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub(crate) man: u32,
    pub(crate) exp: u32,
}

pub(crate) const F16: Format = Format { man: 10, exp: 5 };
pub(crate) const BF16: Format = Format { man: 7, exp: 8 };
/// TF32 as a 19-bit format; `cvt` shifts it into the top 19 bits of an f32 register.
pub(crate) const TF32: Format = Format { man: 10, exp: 8 };
pub(crate) const F32: Format = Format { man: 23, exp: 8 };
pub(crate) const F64: Format = Format { man: 52, exp: 11 };

impl Format {
    /// Precision in bits, the implicit leading bit included.
    pub(crate) const fn precision(self) -> u32 {
        self.man + 1
    }

    pub(crate) const fn bias(self) -> i32 {
        (1 << (self.exp - 1)) - 1
    }

    /// Exponent of the smallest normal number.
    pub(crate) const fn emin(self) -> i32 {
        1 - self.bias()
    }

    /// Exponent of the largest finite number.
    pub(crate) const fn emax(self) -> i32 {
        self.bias()
    }

    pub(crate) const fn width(self) -> u32 {
        1 + self.exp + self.man
    }

    pub(crate) const fn sign_bit(self) -> u64 {
        1 << (self.width() - 1)
    }

    const fn exp_field_max(self) -> u64 {
        (1 << self.exp) - 1
    }

    /// The canonical NaN GPUs produce: sign clear, every exponent and fraction bit set (0x7fffffff for f32,
    /// 0x7fff for f16 and bf16). For f64 the same rule gives 0x7fffffffffffffff; that f64 pattern is an
    /// assumption (the ISA documents the f32 one), and no test should depend on NaN payloads.
    pub(crate) const fn canonical_nan(self) -> u64 {
        self.sign_bit() - 1
    }

    pub(crate) const fn infinity(self, neg: bool) -> u64 {
        let inf = self.exp_field_max() << self.man;
        if neg {
            inf | self.sign_bit()
        } else {
            inf
        }
    }

    pub(crate) const fn max_finite(self, neg: bool) -> u64 {
        let max = self.infinity(false) - 1;
        if neg {
            max | self.sign_bit()
        } else {
            max
        }
    }

    pub(crate) const fn zero(self, neg: bool) -> u64 {
        if neg {
            self.sign_bit()
        } else {
            0
        }
    }

    pub(crate) fn is_nan(self, bits: u64) -> bool {
        (bits >> self.man) & self.exp_field_max() == self.exp_field_max() && bits & ((1 << self.man) - 1) != 0
    }

    pub(crate) fn is_subnormal(self, bits: u64) -> bool {
        (bits >> self.man) & self.exp_field_max() == 0 && bits & ((1 << self.man) - 1) != 0
    }

    pub(crate) fn is_neg(self, bits: u64) -> bool {
        bits & self.sign_bit() != 0
    }

    /// Replaces a subnormal with a zero of the same sign (`.ftz`).
    pub(crate) fn flush(self, bits: u64) -> u64 {
        if self.is_subnormal(bits) {
            bits & self.sign_bit()
        } else {
            bits
        }
    }
}

/// A rounding direction for the exact core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// To nearest, ties to even.
    NearestEven,
    /// To nearest, ties away from zero.
    NearestAway,
    /// Toward zero.
    Zero,
    /// Toward −∞.
    Down,
    /// Toward +∞.
    Up,
}

/// A finite value `(−1)^neg · (mant + s) · 2^exp`, where `s` is 0 when `sticky` is false and lies strictly
/// between 0 and 1 when it is true. Producers that set `sticky` keep `mant` at least 60 bits wide, so the
/// sticky part always lies below the rounding position of every target format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exact {
    pub(crate) neg: bool,
    pub(crate) mant: u128,
    pub(crate) exp: i32,
    pub(crate) sticky: bool,
}

impl Exact {
    pub(crate) const fn zero(neg: bool) -> Self {
        Exact {
            neg,
            mant: 0,
            exp: 0,
            sticky: false,
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.mant == 0 && !self.sticky
    }

    /// An exact integer.
    pub(crate) fn from_int(v: i128) -> Self {
        Exact {
            neg: v < 0,
            mant: v.unsigned_abs(),
            exp: 0,
            sticky: false,
        }
    }

    fn bit_len(&self) -> i32 {
        128 - self.mant.leading_zeros() as i32
    }

    /// Shifts the mantissa left so that its top bit sits at bit `top` (the value is unchanged).
    fn normalized_to(self, top: i32) -> Self {
        let sh = top - (self.bit_len() - 1);
        debug_assert!(sh >= 0, "normalized_to only widens");
        Exact {
            mant: self.mant << sh,
            exp: self.exp - sh,
            ..self
        }
    }
}

/// A decoded operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Val {
    Nan,
    Inf(bool),
    Fin(Exact),
}

/// Decodes `bits` (in the low `fmt.width()` bits) into a NaN, an infinity or an exact finite value.
pub(crate) fn unpack(fmt: Format, bits: u64) -> Val {
    let neg = fmt.is_neg(bits);
    let e = (bits >> fmt.man) & fmt.exp_field_max();
    let frac = bits & ((1u64 << fmt.man) - 1);
    if e == fmt.exp_field_max() {
        return if frac == 0 { Val::Inf(neg) } else { Val::Nan };
    }
    let (mant, exp) = if e == 0 {
        (frac, fmt.emin() - fmt.man as i32)
    } else {
        (frac | 1 << fmt.man, e as i32 - fmt.bias() - fmt.man as i32)
    };
    Val::Fin(Exact {
        neg,
        mant: mant as u128,
        exp,
        sticky: false,
    })
}

/// Splits `mant` at bit `shift` (≥ 1): the kept high part, the round bit (bit `shift − 1`), and whether any
/// lower bit is set.
fn split(mant: u128, shift: u32) -> (u128, bool, bool) {
    if shift > 128 {
        return (0, false, mant != 0);
    }
    let kept = if shift == 128 { 0 } else { mant >> shift };
    let round = (mant >> (shift - 1)) & 1 == 1;
    let rest = shift > 1 && mant & ((1u128 << (shift - 1)) - 1) != 0;
    (kept, round, rest)
}

/// Whether to add one unit to the truncated magnitude `kept`, given the round bit and the bits below it.
fn increment(mode: Mode, neg: bool, kept: u128, round: bool, rest: bool) -> bool {
    match mode {
        Mode::NearestEven => round && (rest || kept & 1 == 1),
        Mode::NearestAway => round,
        Mode::Zero => false,
        Mode::Down => neg && (round || rest),
        Mode::Up => !neg && (round || rest),
    }
}

/// Rounds an exact value once to `fmt` in direction `mode`: subnormals are produced gradually and an
/// overflow gives infinity or the largest finite value as the direction requires.
pub(crate) fn round(fmt: Format, x: Exact, mode: Mode) -> u64 {
    if x.is_zero() {
        return fmt.zero(x.neg);
    }
    debug_assert!(x.mant != 0, "a sticky value keeps a nonzero mantissa");
    let p = fmt.precision() as i32;
    let top = x.exp + x.bit_len() - 1;
    let mut q = top.max(fmt.emin()) - (p - 1);
    let shift = q - x.exp;
    let mut kept = if shift <= 0 {
        // The sticky part is below half a unit here because producers keep wide mantissas.
        let k = x.mant << (-shift) as u32;
        if increment(mode, x.neg, k, false, x.sticky) {
            k + 1
        } else {
            k
        }
    } else {
        let (k, r, rest) = split(x.mant, shift as u32);
        if increment(mode, x.neg, k, r, rest || x.sticky) {
            k + 1
        } else {
            k
        }
    };
    if kept == 1u128 << p {
        kept >>= 1;
        q += 1;
    }
    let normal = kept >> (p - 1) != 0;
    if normal && q + p - 1 > fmt.emax() {
        let to_inf = match mode {
            Mode::NearestEven | Mode::NearestAway => true,
            Mode::Zero => false,
            Mode::Down => x.neg,
            Mode::Up => !x.neg,
        };
        return if to_inf {
            fmt.infinity(x.neg)
        } else {
            fmt.max_finite(x.neg)
        };
    }
    let mag = if normal {
        let biased = (q + p - 1 + fmt.bias()) as u64;
        (biased << fmt.man) | (kept as u64 & ((1u64 << fmt.man) - 1))
    } else {
        kept as u64
    };
    mag | fmt.zero(x.neg)
}

/// The sign an exact zero sum takes: −0 only when rounding toward −∞ (IEEE 754 §6.3).
fn zero_sum_sign(mode: Mode) -> bool {
    mode == Mode::Down
}

/// The exact product of two exact (non-sticky) values.
pub(crate) fn mul(a: Exact, b: Exact) -> Exact {
    debug_assert!(!a.sticky && !b.sticky);
    Exact {
        neg: a.neg ^ b.neg,
        mant: a.mant * b.mant,
        exp: a.exp + b.exp,
        sticky: false,
    }
}

/// The sum of two exact values whose mantissas have at most 106 bits, with shifted-out bits jammed into the
/// lowest bit (which lies at least 70 bits below any rounding position, so it acts as a sticky bit).
/// `mode` only decides the sign of an exact zero sum.
pub(crate) fn add(a: Exact, b: Exact, mode: Mode) -> Exact {
    debug_assert!(!a.sticky && !b.sticky && a.mant >> 106 == 0 && b.mant >> 106 == 0);
    if a.mant == 0 && b.mant == 0 {
        let neg = if a.neg == b.neg { a.neg } else { zero_sum_sign(mode) };
        return Exact::zero(neg);
    }
    if a.mant == 0 {
        return b;
    }
    if b.mant == 0 {
        return a;
    }
    let (a, b) = (a.normalized_to(125), b.normalized_to(125));
    let (big, small) = if (a.exp, a.mant) >= (b.exp, b.mant) {
        (a, b)
    } else {
        (b, a)
    };
    let d = (big.exp - small.exp) as u32;
    let small_mant = if d == 0 {
        small.mant
    } else if d >= 128 {
        1
    } else {
        let lost = small.mant & ((1u128 << d) - 1) != 0;
        (small.mant >> d) | lost as u128
    };
    let mant = if big.neg == small.neg {
        big.mant + small_mant
    } else {
        big.mant - small_mant
    };
    if mant == 0 {
        return Exact::zero(zero_sum_sign(mode));
    }
    Exact {
        neg: big.neg,
        mant,
        exp: big.exp,
        sticky: false,
    }
}

/// The quotient `a / b` of two nonzero exact values, with at least 62 quotient bits and a sticky remainder.
pub(crate) fn div(a: Exact, b: Exact) -> Exact {
    debug_assert!(a.mant != 0 && b.mant != 0 && !a.sticky && !b.sticky);
    let (a, b) = (a.normalized_to(125), b.normalized_to(62));
    Exact {
        neg: a.neg ^ b.neg,
        mant: a.mant / b.mant,
        exp: a.exp - b.exp,
        sticky: a.mant % b.mant != 0,
    }
}

/// The square root of a positive exact value, with at least 60 root bits and a sticky remainder.
pub(crate) fn sqrt(a: Exact) -> Exact {
    debug_assert!(a.mant != 0 && !a.neg && !a.sticky);
    let mut n = a.normalized_to(120);
    if n.exp & 1 != 0 {
        n = Exact {
            mant: n.mant << 1,
            exp: n.exp - 1,
            ..n
        };
    }
    let root = isqrt(n.mant);
    Exact {
        neg: false,
        mant: root,
        exp: n.exp / 2,
        sticky: root * root != n.mant,
    }
}

/// The integer square root (floor) of `v` < 2^122.
fn isqrt(v: u128) -> u128 {
    let mut r = (v as f64).sqrt() as u128;
    while r * r > v {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= v {
        r += 1;
    }
    r
}

/// Rounds an exact finite value to an integral value in direction `mode` (the sign of a zero result is
/// the sign of `x`).
pub(crate) fn round_to_integral(x: Exact, mode: Mode) -> Exact {
    if x.exp >= 0 {
        return x;
    }
    let (k, r, rest) = split(x.mant, (-x.exp) as u32);
    let mag = if increment(mode, x.neg, k, r, rest || x.sticky) {
        k + 1
    } else {
        k
    };
    Exact {
        neg: x.neg,
        mant: mag,
        exp: 0,
        sticky: false,
    }
}

/// The signed value of an exact integral value, with magnitudes past 2^126 reported as ±2^126 (callers
/// saturate far below that).
pub(crate) fn integral_to_i128(x: Exact) -> i128 {
    debug_assert!(x.exp >= 0 && !x.sticky);
    let bits = 128 - x.mant.leading_zeros() as i32;
    let mag = if x.mant != 0 && bits + x.exp > 126 {
        1i128 << 126
    } else {
        (x.mant << x.exp) as i128
    };
    if x.neg {
        -mag
    } else {
        mag
    }
}

/// The exact value of a finite `x` (as an `f64` bit pattern source).
pub(crate) fn exact_of_f64(x: f64) -> Val {
    unpack(F64, x.to_bits())
}

/// Converts any value of `fmt` to f64; exact, since every format here is no wider than f64.
pub(crate) fn to_f64(fmt: Format, bits: u64) -> f64 {
    if fmt == F64 {
        return f64::from_bits(bits);
    }
    match unpack(fmt, bits) {
        Val::Nan => f64::NAN,
        Val::Inf(neg) => f64::from_bits(F64.infinity(neg)),
        Val::Fin(x) => f64::from_bits(round(F64, x, Mode::NearestEven)),
    }
}

/// Rounds an f64 to `fmt`; NaN becomes the canonical NaN.
pub(crate) fn from_f64(fmt: Format, x: f64, mode: Mode) -> u64 {
    match exact_of_f64(x) {
        Val::Nan => fmt.canonical_nan(),
        Val::Inf(neg) => fmt.infinity(neg),
        Val::Fin(e) => round(fmt, e, mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numeric::test_rng::Rng;

    #[test]
    fn f64_to_f32_and_f16_nearest_match_native_and_half() {
        let mut rng = Rng::new(1);
        for _ in 0..20_000 {
            let x = rng.wide_f64();
            let got = from_f64(F32, x, Mode::NearestEven) as u32;
            assert_eq!(got, (x as f32).to_bits(), "f64 {x:e} -> f32");
            let got = from_f64(F16, x, Mode::NearestEven) as u16;
            assert_eq!(got, half::f16::from_f64(x).to_bits(), "f64 {x:e} -> f16");
            // half's bf16::from_f64 rounds through f32 (twice), so the reference starts from an f32.
            let x32 = x as f32;
            let got = from_f64(BF16, x32 as f64, Mode::NearestEven) as u16;
            assert_eq!(got, half::bf16::from_f32(x32).to_bits(), "f32 {x32:e} -> bf16");
        }
    }

    #[test]
    fn directed_rounding_brackets_the_exact_value() {
        let mut rng = Rng::new(2);
        for _ in 0..20_000 {
            let x = rng.wide_f64();
            let dn = f32::from_bits(from_f64(F32, x, Mode::Down) as u32) as f64;
            let up = f32::from_bits(from_f64(F32, x, Mode::Up) as u32) as f64;
            let rz = f32::from_bits(from_f64(F32, x, Mode::Zero) as u32) as f64;
            assert!(dn <= x && x <= up, "{dn:e} <= {x:e} <= {up:e}");
            if dn == x {
                assert_eq!(up, x);
            } else {
                assert_eq!(
                    f32::from_bits((dn as f32).to_bits()).next_up() as f64,
                    up,
                    "adjacent at {x:e}"
                );
            }
            assert_eq!(rz, if x < 0.0 { up } else { dn });
        }
    }

    #[test]
    fn overflow_gives_infinity_or_max_finite_by_direction() {
        let big = 1e300;
        assert_eq!(from_f64(F32, big, Mode::NearestEven), F32.infinity(false));
        assert_eq!(from_f64(F32, big, Mode::Zero), F32.max_finite(false));
        assert_eq!(from_f64(F32, big, Mode::Down), F32.max_finite(false));
        assert_eq!(from_f64(F32, -big, Mode::Down), F32.infinity(true));
        assert_eq!(from_f64(F32, -big, Mode::Up), F32.max_finite(true));
        assert_eq!(from_f64(F16, 65520.0, Mode::NearestEven), F16.infinity(false));
        assert_eq!(from_f64(F16, 65519.0, Mode::NearestEven), F16.max_finite(false));
        // The smallest subnormal, half of it (a tie to even zero) and just above half of it.
        let tiny = 2f64.powi(-149);
        assert_eq!(from_f64(F32, tiny, Mode::NearestEven), 1);
        assert_eq!(from_f64(F32, tiny / 2.0, Mode::NearestEven), 0);
        assert_eq!(from_f64(F32, tiny / 2.0 * (1.0 + 1e-9), Mode::NearestEven), 1);
        assert_eq!(from_f64(F32, -tiny / 4.0, Mode::Down), 0x8000_0001);
    }

    #[test]
    fn sqrt_and_div_match_native_f64() {
        let mut rng = Rng::new(3);
        for _ in 0..5_000 {
            let (a, b) = (rng.wide_f64().abs(), rng.wide_f64());
            if let (Val::Fin(ea), Val::Fin(eb)) = (exact_of_f64(a), exact_of_f64(b)) {
                if ea.mant != 0 && eb.mant != 0 {
                    let q = round(F64, div(ea, eb), Mode::NearestEven);
                    assert_eq!(f64::from_bits(q), a / b, "{a:e} / {b:e}");
                    let s = round(F64, sqrt(ea), Mode::NearestEven);
                    assert_eq!(f64::from_bits(s), a.sqrt(), "sqrt {a:e}");
                }
            }
        }
    }
}
