//! Tests of `cvt`: float→int against f64 rounding functions and saturating casts, int→float and narrowing
//! float→float against the host and exact comparisons, tf32 against a bit-level formula, and packing order.

use super::*;
use crate::numeric::test_rng::Rng;
use std::cmp::Ordering;

/// An integral rounding modifier and the f64 function that rounds the same way.
type IntegralRounding = (Rounding, fn(f64) -> f64);

const IRND: [IntegralRounding; 4] = [
    (Rounding::Rni, f64::round_ties_even),
    (Rounding::Rzi, f64::trunc),
    (Rounding::Rmi, f64::floor),
    (Rounding::Rpi, f64::ceil),
];

const INTS: [(ScalarType, bool, u32); 8] = [
    (ScalarType::S8, true, 8),
    (ScalarType::U8, false, 8),
    (ScalarType::S16, true, 16),
    (ScalarType::U16, false, 16),
    (ScalarType::S32, true, 32),
    (ScalarType::U32, false, 32),
    (ScalarType::S64, true, 64),
    (ScalarType::U64, false, 64),
];

#[test]
fn float_to_int_rounds_then_saturates() {
    let mut rng = Rng::new(30);
    for _ in 0..5000 {
        let bits = rng.f64_bits();
        let x = f64::from_bits(bits);
        // Scale some inputs into the range where the integer types differ.
        let x = if rng.below(2) == 0 && x.is_finite() {
            (x * 1e3) % 1e20
        } else {
            x
        };
        let x32 = x as f32;
        for (ty, signed, w) in INTS {
            let (lo, hi) = int_range(signed, w);
            for (r, f) in IRND {
                for (src, v, a) in [
                    (ScalarType::F64, x, x.to_bits()),
                    (ScalarType::F32, x32 as f64, x32.to_bits() as u64),
                ] {
                    let want = if v.is_nan() {
                        0
                    } else {
                        let r = f(v);
                        // Compare in f64 before converting so that huge values clamp.
                        if r <= lo as f64 {
                            lo
                        } else if r >= hi as f64 {
                            hi
                        } else {
                            r as i128
                        }
                    };
                    let got = cvt(ty, src, a, Some(r), false, false);
                    assert_eq!(got, want as u64 & mask(w), "cvt.{r:?}.{ty:?}.{src:?} {v:e}");
                }
            }
        }
    }
}

#[test]
fn int_to_float_nearest_matches_host_and_directed_brackets() {
    let mut rng = Rng::new(31);
    for _ in 0..5000 {
        let n = rng.u64() >> rng.below(64);
        let s = n as i64;
        assert_eq!(
            cvt(ScalarType::F32, ScalarType::U64, n, None, false, false),
            (n as f32).to_bits() as u64
        );
        assert_eq!(
            cvt(ScalarType::F32, ScalarType::S64, n, None, false, false),
            (s as f32).to_bits() as u64
        );
        assert_eq!(
            cvt(ScalarType::F64, ScalarType::S64, n, None, false, false),
            (s as f64).to_bits()
        );
        let h = half::f16::from_f64(s as i32 as f64).to_bits() as u64;
        // i32 → f64 is exact, so one f64 → f16 rounding is the reference.
        assert_eq!(
            cvt(ScalarType::F16, ScalarType::S32, n, Some(Rounding::Rn), false, false),
            h
        );
        for (w, src) in [(ScalarType::F32, soft::F32), (ScalarType::Bf16, soft::BF16)] {
            let [dn, up] = [Rounding::Rm, Rounding::Rp].map(|r| cvt(w, ScalarType::S64, n, Some(r), false, false));
            let cmp = |b: u64| {
                let v = soft::to_f64(src, b);
                if v.is_infinite() {
                    return if v > 0.0 { Ordering::Greater } else { Ordering::Less };
                }
                // An integer rounded to any precision stays an integer, so this comparison is exact.
                (v as i128).cmp(&(s as i128))
            };
            assert!(cmp(dn) != Ordering::Greater && cmp(up) != Ordering::Less, "{w:?} {s}");
            let rz = cvt(w, ScalarType::S64, n, Some(Rounding::Rz), false, false);
            assert_eq!(rz, if s < 0 { up } else { dn });
        }
    }
}

#[test]
fn narrowing_float_conversions() {
    let mut rng = Rng::new(32);
    for _ in 0..10_000 {
        let x = rng.wide_f64();
        let a = x.to_bits();
        assert_eq!(
            cvt(ScalarType::F32, ScalarType::F64, a, None, false, false),
            (x as f32).to_bits() as u64
        );
        let x32 = x as f32;
        let h = cvt(
            ScalarType::F16,
            ScalarType::F32,
            x32.to_bits() as u64,
            Some(Rounding::Rn),
            false,
            false,
        );
        assert_eq!(h, half::f16::from_f32(x32).to_bits() as u64);
        let b = cvt(
            ScalarType::Bf16,
            ScalarType::F32,
            x32.to_bits() as u64,
            Some(Rounding::Rn),
            false,
            false,
        );
        assert_eq!(b, half::bf16::from_f32(x32).to_bits() as u64);
        // Widening is exact.
        assert_eq!(
            cvt(ScalarType::F32, ScalarType::F16, h, None, false, false),
            half::f16::from_bits(h as u16).to_f32().to_bits() as u64
        );
        assert_eq!(
            cvt(
                ScalarType::F64,
                ScalarType::F32,
                x32.to_bits() as u64,
                None,
                false,
                false
            ),
            (x32 as f64).to_bits()
        );
        // Directed rounding brackets the source and rm/rp differ by one unit when inexact.
        for (ty, fmt) in [
            (ScalarType::F32, soft::F32),
            (ScalarType::F16, soft::F16),
            (ScalarType::Bf16, soft::BF16),
        ] {
            let [dn, up, rz] =
                [Rounding::Rm, Rounding::Rp, Rounding::Rz].map(|r| cvt(ty, ScalarType::F64, a, Some(r), false, false));
            let (vd, vu) = (soft::to_f64(fmt, dn), soft::to_f64(fmt, up));
            assert!(vd <= x && x <= vu, "{ty:?} {vd:e} <= {x:e} <= {vu:e}");
            if vd != x {
                let next = if fmt.is_neg(dn) {
                    dn - 1
                } else if dn & !fmt.sign_bit() == 0 {
                    1
                } else {
                    dn + 1
                };
                assert_eq!(up, next, "{ty:?} adjacency at {x:e}");
            }
            assert_eq!(rz, if x < 0.0 { up } else { dn });
        }
    }
}

#[test]
fn float_to_float_integral_rounding() {
    let mut rng = Rng::new(33);
    for _ in 0..5000 {
        let x = (rng.wide_f64() * 1e-30) as f32;
        let x = if rng.below(2) == 0 { x * 1e30 } else { x };
        for (r, f) in IRND {
            let got = cvt(
                ScalarType::F32,
                ScalarType::F32,
                x.to_bits() as u64,
                Some(r),
                false,
                false,
            );
            let want = f(x as f64) as f32;
            assert_eq!(f32::from_bits(got as u32), want, "{r:?} {x:e}");
            assert_eq!(got >> 31, want.to_bits() as u64 >> 31, "sign of {r:?} {x:e}");
        }
    }
}

#[test]
fn integer_to_integer_extension_truncation_and_saturation() {
    let mut rng = Rng::new(34);
    for _ in 0..5000 {
        let v = rng.u64();
        assert_eq!(
            cvt(ScalarType::S32, ScalarType::S8, v, None, false, false),
            v as i8 as i32 as u32 as u64
        );
        assert_eq!(
            cvt(ScalarType::S64, ScalarType::U16, v, None, false, false),
            v as u16 as u64
        );
        assert_eq!(
            cvt(ScalarType::U64, ScalarType::S32, v, None, false, false),
            v as i32 as i64 as u64
        );
        assert_eq!(
            cvt(ScalarType::U16, ScalarType::S32, v, None, false, false),
            v as u16 as u64
        );
        let s = v as i32;
        assert_eq!(
            cvt(ScalarType::U8, ScalarType::S32, v, None, false, true),
            s.clamp(0, 255) as u64
        );
        assert_eq!(
            cvt(ScalarType::S16, ScalarType::S32, v, None, false, true),
            s.clamp(-32768, 32767) as u16 as u64
        );
        assert_eq!(
            cvt(ScalarType::U32, ScalarType::S32, v, None, false, true),
            s.max(0) as u64
        );
        assert_eq!(
            cvt(ScalarType::S32, ScalarType::U32, v, None, false, true),
            (v as u32).min(i32::MAX as u32) as u64
        );
    }
}

#[test]
fn tf32_rna_matches_the_bit_formula() {
    let mut rng = Rng::new(35);
    for _ in 0..10_000 {
        let a = rng.f32_bits();
        let x = f32::from_bits(a);
        let got = cvt(
            ScalarType::Tf32,
            ScalarType::F32,
            a as u64,
            Some(Rounding::Rna),
            false,
            false,
        ) as u32;
        if x.is_nan() {
            assert!(f32::from_bits(got).is_nan());
            continue;
        }
        if x.is_infinite() {
            assert_eq!(got, a);
            continue;
        }
        // Ties away: add half of the dropped unit to the magnitude bits, then clear the dropped bits.
        let want = ((a & 0x7fff_ffff) + 0x1000) & !0x1fff | (a & 0x8000_0000);
        assert_eq!(got, want, "{x:e}");
    }
    let sat = cvt(
        ScalarType::Tf32,
        ScalarType::F32,
        f32::MAX.to_bits() as u64,
        Some(Rounding::Rna),
        false,
        true,
    );
    assert_eq!(sat as u32, 0x7f7f_e000);
}

#[test]
fn sat_ftz_and_specials() {
    let f = |x: f32| x.to_bits() as u64;
    assert_eq!(
        cvt(ScalarType::F32, ScalarType::F64, 2.5f64.to_bits(), None, false, true),
        f(1.0)
    );
    assert_eq!(
        cvt(ScalarType::F32, ScalarType::F64, f64::NAN.to_bits(), None, false, true),
        0
    );
    assert_eq!(
        cvt(ScalarType::F32, ScalarType::F32, 0x8000_0100, None, true, false),
        0x8000_0000
    );
    assert_eq!(
        cvt(ScalarType::F32, ScalarType::F32, 0x8000_0100, None, false, false),
        0x8000_0100
    );
    assert_eq!(
        cvt(
            ScalarType::F16,
            ScalarType::F32,
            f(1e6),
            Some(Rounding::Rz),
            false,
            false
        ),
        0x7bff
    );
    assert_eq!(
        cvt(
            ScalarType::F16,
            ScalarType::F32,
            f(1e6),
            Some(Rounding::Rn),
            false,
            false
        ),
        0x7c00
    );
    assert_eq!(
        cvt(
            ScalarType::S32,
            ScalarType::F32,
            f(f32::NAN),
            Some(Rounding::Rni),
            false,
            false
        ),
        0
    );
    assert_eq!(
        cvt(
            ScalarType::U32,
            ScalarType::F32,
            f(-5.0),
            Some(Rounding::Rni),
            false,
            false
        ),
        0
    );
    assert_eq!(
        cvt(
            ScalarType::S8,
            ScalarType::F32,
            f(-1e9),
            Some(Rounding::Rzi),
            false,
            false
        ),
        0x80
    );
    assert_eq!(cvt(ScalarType::F32, ScalarType::U32, 3, None, false, true), f(1.0));
}

#[test]
fn pack_x2_puts_a_in_the_upper_half_and_applies_relu_and_satfinite() {
    let h = |x: f32| half::f16::from_f32(x).to_bits() as u32;
    assert_eq!(
        cvt_pack_x2(ScalarType::F16x2, 1.0, -2.0, None, false, false),
        h(1.0) << 16 | h(-2.0)
    );
    assert_eq!(
        cvt_pack_x2(ScalarType::F16x2, 1.0, -2.0, None, true, false),
        h(1.0) << 16
    );
    assert_eq!(
        cvt_pack_x2(ScalarType::F16x2, 1e6, -1e6, None, false, true),
        0x7bff << 16 | 0xfbff
    );
    assert_eq!(
        cvt_pack_x2(ScalarType::F16x2, f32::NAN, 0.0, None, true, true),
        0x7fff << 16
    );
    let b = |x: f32| half::bf16::from_f32(x).to_bits() as u32;
    let mut rng = Rng::new(36);
    for _ in 0..2000 {
        let (x, y) = (rng.wide_f64() as f32, rng.wide_f64() as f32);
        assert_eq!(
            cvt_pack_x2(ScalarType::Bf16x2, x, y, Some(Rounding::Rn), false, false),
            b(x) << 16 | b(y)
        );
        let rz = cvt_pack_x2(ScalarType::Bf16x2, x, y, Some(Rounding::Rz), false, false);
        // Toward zero is truncation of the f32 bits (no overflow is possible from a finite f32 to bf16).
        assert_eq!(rz, (x.to_bits() >> 16) << 16 | y.to_bits() >> 16);
    }
}
