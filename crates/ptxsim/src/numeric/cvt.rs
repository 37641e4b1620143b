//! `cvt` between every integer and float type, with the PTX rounding, `.ftz`, `.sat`, `.relu` and
//! `.satfinite` rules, and the packing forms `cvt.{f16x2,bf16x2}.f32 d, a, b`.

use super::soft::{self, Exact, Format, Mode, Val};
use super::{float_format, float_mode, saturate};
use crate::types::{Rounding, ScalarType};

/// How `cvt` sees a type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int { signed: bool, bits: u32 },
    Float(Format),
    Tf32,
}

fn kind(ty: ScalarType) -> Kind {
    match ty {
        ScalarType::Tf32 => Kind::Tf32,
        ScalarType::F16 | ScalarType::Bf16 | ScalarType::F32 | ScalarType::F64 => {
            Kind::Float(float_format(ty).expect("F16/Bf16/F32/F64 have a float format"))
        }
        // Packed and predicate types are not cvt operands; treat them as raw bits of their width.
        _ => Kind::Int {
            signed: ty.is_signed(),
            bits: ty.bits().min(64),
        },
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The value of integer bits `a` of the given width and signedness.
fn int_value(signed: bool, bits: u32, a: u64) -> i128 {
    let a = a & mask(bits);
    if signed {
        (((a << (64 - bits)) as i64) >> (64 - bits)) as i128
    } else {
        a as i128
    }
}

fn int_range(signed: bool, bits: u32) -> (i128, i128) {
    if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

fn is_integral(rnd: Option<Rounding>) -> bool {
    matches!(rnd, Some(Rounding::Rni | Rounding::Rzi | Rounding::Rmi | Rounding::Rpi))
}

/// `cvt{.rnd}{.ftz}{.sat}.dst.src d, a` for `src, dst` among u8..u64, s8..s64, b8..b64, f16, bf16, f32, f64,
/// and `dst = tf32` from f32.
///
/// - int→int: sign- or zero-extends by the *source* type, then truncates to the destination; `.sat` clamps
///   to the destination range instead.
/// - int→float and float→float: one rounding in the `.rn/.rz/.rm/.rp` direction (default `.rn`); an
///   integral modifier (`.rni …`) on float→float first rounds to an integral value. `.sat` clamps to
///   [0, 1] with NaN → +0.
/// - float→int: rounds with `.rni/.rzi/.rmi/.rpi` (a missing modifier truncates, as C does) and always
///   saturates to the destination range, as PTX does by default; NaN gives 0.
/// - `.ftz` flushes f32 subnormal sources and results to same-signed zero.
/// - `tf32` (`cvt.rna{.satfinite}.tf32.f32`): rounds to 10 fraction bits (default `.rna`) and returns the
///   f32 bit pattern with the low 13 bits clear; `sat` is read as `.satfinite` (overflow and ±∞ become the
///   largest finite tf32). A NaN gives the canonical f32 NaN.
///
/// Integer results come back masked to the destination width (not sign-extended past it).
pub(crate) fn cvt(dst: ScalarType, src: ScalarType, a: u64, rnd: Option<Rounding>, ftz: bool, sat: bool) -> u64 {
    match (kind(src), kind(dst)) {
        (Kind::Int { signed: ss, bits: sb }, Kind::Int { signed: ds, bits: db }) => {
            let v = int_value(ss, sb, a);
            let v = if sat {
                let (lo, hi) = int_range(ds, db);
                v.clamp(lo, hi)
            } else {
                v
            };
            v as u64 & mask(db)
        }
        (Kind::Int { signed, bits }, Kind::Float(fmt)) => {
            let r = soft::round(fmt, Exact::from_int(int_value(signed, bits, a)), float_mode(rnd));
            float_result(fmt, r, ftz, sat)
        }
        (Kind::Int { signed, bits }, Kind::Tf32) => {
            let r = soft::round(soft::TF32, Exact::from_int(int_value(signed, bits, a)), tf32_mode(rnd));
            tf32_result(r, sat)
        }
        (Kind::Float(fmt), Kind::Int { signed, bits }) => float_to_int(fmt, a, signed, bits, rnd, ftz),
        (Kind::Tf32, Kind::Int { signed, bits }) => float_to_int(soft::F32, a, signed, bits, rnd, ftz),
        (Kind::Float(sf), Kind::Float(df)) => {
            let r = float_to_float(sf, df, a, rnd, ftz);
            float_result(df, r, ftz, sat)
        }
        (Kind::Tf32, Kind::Float(df)) => {
            let r = float_to_float(soft::F32, df, a, rnd, ftz);
            float_result(df, r, ftz, sat)
        }
        (Kind::Float(sf), Kind::Tf32) => float_to_tf32(sf, a, rnd, ftz, sat),
        (Kind::Tf32, Kind::Tf32) => float_to_tf32(soft::F32, a, rnd, ftz, sat),
    }
}

fn float_to_tf32(sf: Format, a: u64, rnd: Option<Rounding>, ftz: bool, satfinite: bool) -> u64 {
    let a = a & mask(sf.width());
    let a = if ftz && sf == soft::F32 { sf.flush(a) } else { a };
    match soft::unpack(sf, a) {
        Val::Nan => soft::F32.canonical_nan(),
        Val::Inf(neg) => tf32_result(soft::TF32.infinity(neg), satfinite),
        Val::Fin(x) => tf32_result(soft::round(soft::TF32, x, tf32_mode(rnd)), satfinite),
    }
}

fn tf32_mode(rnd: Option<Rounding>) -> Mode {
    match rnd {
        None => Mode::NearestAway,
        r => float_mode(r),
    }
}

/// Places a 19-bit tf32 pattern in the top of an f32 register, applying `.satfinite` if asked.
fn tf32_result(r: u64, satfinite: bool) -> u64 {
    let t = soft::TF32;
    let r = if satfinite && !t.is_nan(r) && r & !t.sign_bit() == t.infinity(false) {
        t.max_finite(t.is_neg(r))
    } else {
        r
    };
    r << 13
}

fn float_result(fmt: Format, r: u64, ftz: bool, sat: bool) -> u64 {
    let r = if ftz && fmt == soft::F32 { fmt.flush(r) } else { r };
    if sat {
        saturate(fmt, r)
    } else {
        r
    }
}

fn float_to_float(sf: Format, df: Format, a: u64, rnd: Option<Rounding>, ftz: bool) -> u64 {
    let a = a & mask(sf.width());
    let a = if ftz && sf == soft::F32 { sf.flush(a) } else { a };
    match soft::unpack(sf, a) {
        Val::Nan => df.canonical_nan(),
        Val::Inf(neg) => df.infinity(neg),
        Val::Fin(x) if is_integral(rnd) => {
            let int = soft::round_to_integral(x, float_mode(rnd));
            soft::round(df, int, Mode::NearestEven)
        }
        Val::Fin(x) => soft::round(df, x, float_mode(rnd)),
    }
}

fn float_to_int(sf: Format, a: u64, signed: bool, bits: u32, rnd: Option<Rounding>, ftz: bool) -> u64 {
    let a = a & mask(sf.width());
    let a = if ftz && sf == soft::F32 { sf.flush(a) } else { a };
    let (lo, hi) = int_range(signed, bits);
    let v = match soft::unpack(sf, a) {
        Val::Nan => 0,
        Val::Inf(neg) => {
            if neg {
                lo
            } else {
                hi
            }
        }
        Val::Fin(x) => {
            let mode = if rnd.is_none() { Mode::Zero } else { float_mode(rnd) };
            soft::integral_to_i128(soft::round_to_integral(x, mode)).clamp(lo, hi)
        }
    };
    v as u64 & mask(bits)
}

/// Converts one f32 to f16 or bf16 bits (`dst` F16/F16x2 or Bf16/Bf16x2) with `.rn/.rz` (default `.rn`),
/// `.relu` (negative results and −0 become +0, NaN stays the canonical NaN) and `.satfinite` (overflow and
/// ±∞ become the largest finite value of that sign; NaN stays NaN). This is also `cvt.rn{.relu}.f16.f32`.
pub(crate) fn cvt_f32_to_half(dst: ScalarType, a: f32, rnd: Option<Rounding>, relu: bool, satfinite: bool) -> u16 {
    let fmt = match float_format(dst) {
        Some(f) if f.width() == 16 => f,
        _ => {
            debug_assert!(false, "cvt_f32_to_half to {dst:?}");
            soft::F16
        }
    };
    let r = match soft::unpack(soft::F32, a.to_bits() as u64) {
        Val::Nan => fmt.canonical_nan(),
        Val::Inf(neg) => fmt.infinity(neg),
        Val::Fin(x) => soft::round(fmt, x, float_mode(rnd)),
    };
    let r = if satfinite && !fmt.is_nan(r) && r & !fmt.sign_bit() == fmt.infinity(false) {
        fmt.max_finite(fmt.is_neg(r))
    } else {
        r
    };
    let r = if relu && !fmt.is_nan(r) && fmt.is_neg(r) { 0 } else { r };
    r as u16
}

/// `cvt.frnd{.relu}{.satfinite}.{f16x2,bf16x2}.f32 d, a, b`: the ISA stores the value converted from `a`
/// (here `hi`) in the upper half of `d` and the one from `b` (`lo`) in the lower half. `sat` means
/// `.satfinite`, the only saturation these forms take.
pub(crate) fn cvt_pack_x2(dst: ScalarType, hi: f32, lo: f32, rnd: Option<Rounding>, relu: bool, sat: bool) -> u32 {
    let h = cvt_f32_to_half(dst, hi, rnd, relu, sat) as u32;
    let l = cvt_f32_to_half(dst, lo, rnd, relu, sat) as u32;
    h << 16 | l
}

#[cfg(test)]
mod tests;
