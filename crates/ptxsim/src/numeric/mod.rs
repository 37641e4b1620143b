//! Pure PTX instruction semantics on raw bit patterns: float arithmetic with every rounding modifier,
//! comparisons, conversions, and the bit-manipulation instructions (prmt, bfe, bfi, lop3).
//!
//! Operands and results are bit patterns in the low bits of a `u64`. A packed `.f16x2`/`.bf16x2` value
//! holds its first element in bits 0..16 and its second in bits 16..32, as PTX packs `{lo, hi}`.
//!
//! Arithmetic with a rounding modifier is computed exactly (`soft`) and rounded once to the destination,
//! which is precisely the IEEE 754 definition the PTX ISA gives for `.rn/.rz/.rm/.rp`; this holds for f16
//! and bf16 too, where the ISA computes "in at least f32" and rounds: computing exactly and rounding once can
//! differ from an f32-then-f16 double rounding, but the hardware rounds once, as here. The common f32/f64
//! round-to-nearest cases use the host's IEEE arithmetic (also correctly rounded), which the tests check
//! against the exact core.

mod bits;
mod cvt;
mod soft;
#[cfg(test)]
mod test_rng;

pub(crate) use bits::{bfe, bfi, int_cmp, lop3, prmt, PrmtMode};
pub(crate) use cvt::{cvt, cvt_f32_to_half, cvt_pack_x2};
pub(crate) use soft::Format;

use crate::types::{Rounding, ScalarType};
use soft::{Mode, Val};

/// A two-operand float instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatBinOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

/// The modifiers of a float instruction. `nan` is the `.NaN` of `min/max`; `approx` marks `.approx`
/// (and `.full` for `div`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FloatMods {
    pub(crate) rnd: Option<Rounding>,
    pub(crate) ftz: bool,
    pub(crate) sat: bool,
    pub(crate) nan: bool,
    pub(crate) approx: bool,
}

/// A one-operand float instruction.
///
/// The `.approx` functions are computed in f64 with the host's libm and rounded once to the destination,
/// which is far inside the error the PTX ISA allows the hardware: `sqrt.approx.f32` relative error 2^-23,
/// `rsqrt.approx.f32` 2^-22.9, `rcp.approx.f32` 1 ulp, `ex2.approx.f32` 2 ulp (`.ftz`), `lg2.approx.f32`
/// absolute 2^-22.6 on [0.5, 2] and relative 2^-22 elsewhere, `sin/cos.approx.f32` absolute 2^-20.5 on
/// [−100π, 100π], `tanh.approx.f32` relative 2^-11. Kernels tested on ptxsim are therefore *more* accurate
/// than on a GPU; tests comparing with a GPU must use at least those tolerances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatUnOp {
    Neg,
    Abs,
    Sqrt,
    Rsqrt,
    Rcp,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
}

/// A `setp`/`set` comparison. `Lo/Ls/Hi/Hs` are the unsigned forms (on floats they mean lt/le/gt/ge);
/// the `…u` forms and `Num/Nan` are the unordered float comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
    Lo,
    Ls,
    Hi,
    Hs,
}

/// The scalar format of a float type (the element format of a packed one).
pub(crate) fn float_format(ty: ScalarType) -> Option<Format> {
    match ty {
        ScalarType::F16 | ScalarType::F16x2 => Some(soft::F16),
        ScalarType::Bf16 | ScalarType::Bf16x2 => Some(soft::BF16),
        ScalarType::F32 | ScalarType::Tf32 => Some(soft::F32),
        ScalarType::F64 => Some(soft::F64),
        _ => None,
    }
}

/// The exact f64 value of a scalar float (F16, Bf16, F32/Tf32 or F64) bit pattern.
pub(crate) fn float_to_f64(ty: ScalarType, bits: u64) -> f64 {
    match float_format(ty) {
        Some(fmt) if !is_packed(ty) => {
            let mask = if fmt.width() == 64 {
                u64::MAX
            } else {
                (1u64 << fmt.width()) - 1
            };
            soft::to_f64(fmt, bits & mask)
        }
        _ => {
            debug_assert!(false, "not a scalar float type: {ty:?}");
            f64::NAN
        }
    }
}

fn is_packed(ty: ScalarType) -> bool {
    matches!(ty, ScalarType::F16x2 | ScalarType::Bf16x2)
}

/// The exact core's direction for a float rounding modifier (`None` is the default `.rn`).
fn float_mode(rnd: Option<Rounding>) -> Mode {
    match rnd {
        None | Some(Rounding::Rn) | Some(Rounding::Rni) => Mode::NearestEven,
        Some(Rounding::Rna) => Mode::NearestAway,
        Some(Rounding::Rz) | Some(Rounding::Rzi) => Mode::Zero,
        Some(Rounding::Rm) | Some(Rounding::Rmi) => Mode::Down,
        Some(Rounding::Rp) | Some(Rounding::Rpi) => Mode::Up,
    }
}

/// Applies `f` to each element: once for a scalar type, to both 16-bit halves for a packed one.
fn per_element(ty: ScalarType, a: u64, b: u64, c: u64, f: impl Fn(Format, u64, u64, u64) -> u64) -> u64 {
    let Some(fmt) = float_format(ty) else {
        debug_assert!(false, "not a float type: {ty:?}");
        return 0;
    };
    if is_packed(ty) {
        let lo = f(fmt, a & 0xffff, b & 0xffff, c & 0xffff) & 0xffff;
        let hi = f(fmt, (a >> 16) & 0xffff, (b >> 16) & 0xffff, (c >> 16) & 0xffff) & 0xffff;
        lo | hi << 16
    } else {
        let mask = if fmt.width() == 64 {
            u64::MAX
        } else {
            (1u64 << fmt.width()) - 1
        };
        f(fmt, a & mask, b & mask, c & mask)
    }
}

/// `.ftz` applies to f32 and to the half formats; f64 never flushes.
fn ftz_applies(fmt: Format, m: FloatMods) -> bool {
    m.ftz && fmt != soft::F64
}

/// Replaces a subnormal with a same-signed zero (for `setp.ftz` and other callers that flush themselves).
pub(crate) fn flush_subnormal(ty: ScalarType, bits: u64) -> u64 {
    per_element(ty, bits, 0, 0, |fmt, a, _, _| fmt.flush(a))
}

/// `.sat`: clamps to [+0, 1]; NaN and −0 give +0.
fn saturate(fmt: Format, bits: u64) -> u64 {
    let one = (fmt.bias() as u64) << fmt.man;
    if fmt.is_nan(bits) || fmt.is_neg(bits) {
        0
    } else if soft::to_f64(fmt, bits) > 1.0 {
        one
    } else {
        bits
    }
}

/// Output modifiers: `.ftz` flushes a subnormal result, then `.sat` clamps.
fn finish(fmt: Format, r: u64, m: FloatMods) -> u64 {
    let r = if ftz_applies(fmt, m) { fmt.flush(r) } else { r };
    if m.sat {
        saturate(fmt, r)
    } else {
        r
    }
}

fn inputs(fmt: Format, m: FloatMods, a: u64) -> u64 {
    if ftz_applies(fmt, m) {
        fmt.flush(a)
    } else {
        a
    }
}

fn canon(fmt: Format, r: u64) -> u64 {
    if fmt.is_nan(r) {
        fmt.canonical_nan()
    } else {
        r
    }
}

/// `add`, `sub`, `mul`, `div`, `min`, `max` on F16, F16x2, Bf16, Bf16x2, F32 or F64.
pub(crate) fn float_binop(op: FloatBinOp, ty: ScalarType, a: u64, b: u64, m: FloatMods) -> u64 {
    per_element(ty, a, b, 0, |fmt, a, b, _| {
        let (a, b) = (inputs(fmt, m, a), inputs(fmt, m, b));
        let r = match op {
            FloatBinOp::Min | FloatBinOp::Max => minmax(op == FloatBinOp::Max, fmt, a, b, m.nan),
            _ => arith(op, fmt, a, b, float_mode(m.rnd)),
        };
        finish(fmt, r, m)
    })
}

/// One correctly rounded add/sub/mul/div. Round-to-nearest f32/f64 uses the host's IEEE arithmetic.
fn arith(op: FloatBinOp, fmt: Format, a: u64, b: u64, mode: Mode) -> u64 {
    if mode == Mode::NearestEven && fmt == soft::F32 {
        let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
        let r = match op {
            FloatBinOp::Add => x + y,
            FloatBinOp::Sub => x - y,
            FloatBinOp::Mul => x * y,
            _ => x / y,
        };
        return canon(fmt, r.to_bits() as u64);
    }
    if mode == Mode::NearestEven && fmt == soft::F64 {
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let r = match op {
            FloatBinOp::Add => x + y,
            FloatBinOp::Sub => x - y,
            FloatBinOp::Mul => x * y,
            _ => x / y,
        };
        return canon(fmt, r.to_bits());
    }
    soft_arith(op, fmt, a, b, mode)
}

/// The exact-then-round path for add/sub/mul/div, with IEEE special cases.
fn soft_arith(op: FloatBinOp, fmt: Format, a: u64, b: u64, mode: Mode) -> u64 {
    let nan = fmt.canonical_nan();
    let (va, mut vb) = (soft::unpack(fmt, a), soft::unpack(fmt, b));
    if op == FloatBinOp::Sub {
        vb = match vb {
            Val::Inf(n) => Val::Inf(!n),
            Val::Fin(x) => Val::Fin(soft::Exact { neg: !x.neg, ..x }),
            Val::Nan => Val::Nan,
        };
    }
    match (op, va, vb) {
        (_, Val::Nan, _) | (_, _, Val::Nan) => nan,
        (FloatBinOp::Add | FloatBinOp::Sub, x, y) => sum(fmt, x, y, mode),
        (FloatBinOp::Mul, Val::Fin(x), Val::Fin(y)) => soft::round(fmt, soft::mul(x, y), mode),
        (FloatBinOp::Mul, Val::Inf(s), Val::Fin(x)) | (FloatBinOp::Mul, Val::Fin(x), Val::Inf(s)) => {
            if x.is_zero() {
                nan
            } else {
                fmt.infinity(s ^ x.neg)
            }
        }
        (FloatBinOp::Mul, Val::Inf(s), Val::Inf(t)) => fmt.infinity(s ^ t),
        (_, Val::Inf(_), Val::Inf(_)) => nan,
        (_, Val::Inf(s), Val::Fin(y)) => fmt.infinity(s ^ y.neg),
        (_, Val::Fin(x), Val::Inf(t)) => fmt.zero(x.neg ^ t),
        (_, Val::Fin(x), Val::Fin(y)) => match (x.is_zero(), y.is_zero()) {
            (true, true) => nan,
            (false, true) => fmt.infinity(x.neg ^ y.neg),
            (true, false) => fmt.zero(x.neg ^ y.neg),
            (false, false) => soft::round(fmt, soft::div(x, y), mode),
        },
    }
}

/// The rounded sum of two non-NaN values.
fn sum(fmt: Format, x: Val, y: Val, mode: Mode) -> u64 {
    match (x, y) {
        (Val::Inf(s), Val::Inf(t)) => {
            if s == t {
                fmt.infinity(s)
            } else {
                fmt.canonical_nan()
            }
        }
        (Val::Inf(s), _) | (_, Val::Inf(s)) => fmt.infinity(s),
        (Val::Fin(x), Val::Fin(y)) => soft::round(fmt, soft::add(x, y, mode), mode),
        _ => fmt.canonical_nan(),
    }
}

/// `min`/`max`: a NaN operand yields the other operand (both NaN, or `.NaN`: the canonical NaN), and −0 is
/// less than +0.
fn minmax(max: bool, fmt: Format, a: u64, b: u64, nan_propagates: bool) -> u64 {
    let (an, bn) = (fmt.is_nan(a), fmt.is_nan(b));
    if an || bn {
        return if nan_propagates || (an && bn) {
            fmt.canonical_nan()
        } else if an {
            b
        } else {
            a
        };
    }
    let (x, y) = (soft::to_f64(fmt, a), soft::to_f64(fmt, b));
    let a_first = if x == y {
        // Equal values differ only in the sign of zero: min takes the negative one, max the positive one.
        fmt.is_neg(a) != max
    } else {
        (x < y) != max
    };
    if a_first {
        a
    } else {
        b
    }
}

/// `fma` and `mad.f*` (fused: one rounding) on F16, F16x2, Bf16, Bf16x2, F32 or F64.
pub(crate) fn float_fma(ty: ScalarType, a: u64, b: u64, c: u64, m: FloatMods) -> u64 {
    per_element(ty, a, b, c, |fmt, a, b, c| {
        let (a, b, c) = (inputs(fmt, m, a), inputs(fmt, m, b), inputs(fmt, m, c));
        let mode = float_mode(m.rnd);
        let r = if mode == Mode::NearestEven && fmt == soft::F32 {
            let [x, y, z] = [a, b, c].map(|v| f32::from_bits(v as u32));
            canon(fmt, x.mul_add(y, z).to_bits() as u64)
        } else if mode == Mode::NearestEven && fmt == soft::F64 {
            let [x, y, z] = [a, b, c].map(f64::from_bits);
            canon(fmt, x.mul_add(y, z).to_bits())
        } else {
            soft_fma(fmt, a, b, c, mode)
        };
        finish(fmt, r, m)
    })
}

fn soft_fma(fmt: Format, a: u64, b: u64, c: u64, mode: Mode) -> u64 {
    let nan = fmt.canonical_nan();
    let product = match (soft::unpack(fmt, a), soft::unpack(fmt, b)) {
        (Val::Nan, _) | (_, Val::Nan) => return nan,
        (Val::Fin(x), Val::Fin(y)) => Val::Fin(soft::mul(x, y)),
        (Val::Inf(s), Val::Inf(t)) => Val::Inf(s ^ t),
        (Val::Inf(s), Val::Fin(x)) | (Val::Fin(x), Val::Inf(s)) => {
            if x.is_zero() {
                return nan;
            }
            Val::Inf(s ^ x.neg)
        }
    };
    match soft::unpack(fmt, c) {
        Val::Nan => nan,
        vc => sum(fmt, product, vc, mode),
    }
}

/// `neg`, `abs`, `sqrt`, `rsqrt`, `rcp`, `ex2`, `lg2`, `sin`, `cos`, `tanh`.
pub(crate) fn float_unop(op: FloatUnOp, ty: ScalarType, a: u64, m: FloatMods) -> u64 {
    per_element(ty, a, 0, 0, |fmt, a, _, _| {
        let a = inputs(fmt, m, a);
        let r = match op {
            FloatUnOp::Neg => a ^ fmt.sign_bit(),
            FloatUnOp::Abs => a & !fmt.sign_bit(),
            FloatUnOp::Sqrt => sqrt(fmt, a, if m.approx { Mode::NearestEven } else { float_mode(m.rnd) }),
            FloatUnOp::Rcp => {
                let one = (fmt.bias() as u64) << fmt.man;
                let mode = if m.approx { Mode::NearestEven } else { float_mode(m.rnd) };
                soft_arith(FloatBinOp::Div, fmt, one, a, mode)
            }
            _ => {
                let x = soft::to_f64(fmt, a);
                let y = match op {
                    FloatUnOp::Rsqrt => 1.0 / x.sqrt(),
                    FloatUnOp::Ex2 => x.exp2(),
                    FloatUnOp::Lg2 => x.log2(),
                    FloatUnOp::Sin => x.sin(),
                    FloatUnOp::Cos => x.cos(),
                    _ => x.tanh(),
                };
                soft::from_f64(fmt, y, Mode::NearestEven)
            }
        };
        finish(fmt, r, m)
    })
}

fn sqrt(fmt: Format, a: u64, mode: Mode) -> u64 {
    match soft::unpack(fmt, a) {
        Val::Nan | Val::Inf(true) => fmt.canonical_nan(),
        Val::Inf(false) => a,
        Val::Fin(x) if x.is_zero() => a,
        Val::Fin(x) if x.neg => fmt.canonical_nan(),
        Val::Fin(x) => soft::round(fmt, soft::sqrt(x), mode),
    }
}

/// `setp`/`set` on F16, Bf16, F32 or F64 (a packed type compares its low element; callers split pairs).
pub(crate) fn float_cmp(op: CmpOp, ty: ScalarType, a: u64, b: u64) -> bool {
    let Some(fmt) = float_format(ty) else {
        debug_assert!(false, "not a float type: {ty:?}");
        return false;
    };
    let mask = if fmt.width() == 64 {
        u64::MAX
    } else {
        (1u64 << fmt.width()) - 1
    };
    let (x, y) = (soft::to_f64(fmt, a & mask), soft::to_f64(fmt, b & mask));
    let unordered = x.is_nan() || y.is_nan();
    match op {
        CmpOp::Eq => x == y,
        CmpOp::Ne => !unordered && x != y,
        CmpOp::Lt | CmpOp::Lo => x < y,
        CmpOp::Le | CmpOp::Ls => x <= y,
        CmpOp::Gt | CmpOp::Hi => x > y,
        CmpOp::Ge | CmpOp::Hs => x >= y,
        CmpOp::Equ => unordered || x == y,
        CmpOp::Neu => unordered || x != y,
        CmpOp::Ltu => unordered || x < y,
        CmpOp::Leu => unordered || x <= y,
        CmpOp::Gtu => unordered || x > y,
        CmpOp::Geu => unordered || x >= y,
        CmpOp::Num => !unordered,
        CmpOp::Nan => unordered,
    }
}

#[cfg(test)]
mod tests;
