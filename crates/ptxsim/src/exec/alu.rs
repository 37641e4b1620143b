//! Register-to-register instructions: integer arithmetic and bit operations (here), floating point, compares,
//! selects, moves and conversions (through the numerics module).

use super::{lanes, Ctx, Warp};
use crate::error::Result;
use crate::ir::{BoolOp, Inst, IntOp, IntUnOp, MulMode, Op, Opnd, Space, TestKind};
use crate::memory::{LOCAL_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use crate::numeric::{self, FloatBinOp};
use crate::types::ScalarType;

/// The width in bits of a type as the integer operations see it (a predicate is one bit).
#[inline]
fn width(ty: ScalarType) -> u32 {
    if ty == ScalarType::Pred {
        1
    } else {
        ty.bits().min(64)
    }
}

#[inline]
pub(crate) fn mask_bits(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[inline]
fn sext(v: u64, bits: u32) -> i64 {
    let s = 64 - bits;
    ((v << s) as i64) >> s
}

/// Flops one element of a float instruction counts (packed x2 forms count both halves).
fn lanes_of(ty: ScalarType) -> u64 {
    if matches!(ty, ScalarType::F16x2 | ScalarType::Bf16x2) {
        2
    } else {
        1
    }
}

/// The common conversions whose PTX semantics are exactly Rust's `as` casts (int widening and narrowing,
/// 32-bit int to f32 rounding to nearest); `None` sends everything else to the numerics module.
#[inline]
fn cvt_fast(
    dst: ScalarType,
    src: ScalarType,
    x: u64,
    rnd: Option<crate::types::Rounding>,
    ftz: bool,
    sat: bool,
) -> Option<u64> {
    use ScalarType::*;
    if sat || ftz {
        return None;
    }
    let rn = matches!(rnd, None | Some(crate::types::Rounding::Rn));
    Some(match (dst, src) {
        (U64 | S64, U32) | (U32 | S32, U64 | S64) | (U32, S32) | (S32, U32) => {
            x & mask_bits(dst.bits().min(src.bits()))
        }
        (U64 | S64, S32) => x as u32 as i32 as i64 as u64,
        (F32, S32) if rn => u64::from((x as u32 as i32 as f32).to_bits()),
        (F32, U32) if rn => u64::from((x as u32 as f32).to_bits()),
        _ => return None,
    })
}

/// Whether float modifiers ask for plain IEEE round-to-nearest (no ftz, saturation or approximation).
fn plain_rn(m: numeric::FloatMods) -> bool {
    matches!(m.rnd, None | Some(crate::types::Rounding::Rn))
        && !m.ftz
        && !m.sat
        && !m.approx
        && !m.nan
}

impl Warp {
    pub(super) fn alu(&mut self, inst: &Inst, exec: u32, ctx: &mut Ctx<'_>) -> Result<()> {
        let a = &inst.args;
        let n = u64::from(exec.count_ones());
        match inst.op {
            Op::Int { op, ty, carry, sat } => {
                let w = width(ty);
                let mk = mask_bits(w);
                let signed = ty.is_signed();
                for l in lanes(exec) {
                    let x = self.get(&a[1], l) & mk;
                    let y = self.get(&a[2], l) & mk;
                    let cin = u64::from(carry.use_in && self.carry & (1 << l) != 0);
                    let r = match op {
                        IntOp::Add | IntOp::Sub => {
                            let wide = if op == IntOp::Add {
                                u128::from(x) + u128::from(y) + u128::from(cin)
                            } else {
                                u128::from(x).wrapping_sub(u128::from(y) + u128::from(cin))
                            };
                            if carry.set {
                                let c = if op == IntOp::Add {
                                    wide >> w != 0
                                } else {
                                    u128::from(x) < u128::from(y) + u128::from(cin)
                                };
                                self.carry = (self.carry & !(1 << l)) | (u32::from(c) << l);
                            }
                            if sat && signed {
                                let (sx, sy) = (sext(x, w) as i128, sext(y, w) as i128);
                                let v = if op == IntOp::Add { sx + sy } else { sx - sy };
                                let (lo, hi) = (-(1i128 << (w - 1)), (1i128 << (w - 1)) - 1);
                                (v.clamp(lo, hi) as u64) & mk
                            } else {
                                (wide as u64) & mk
                            }
                        }
                        IntOp::Div => {
                            if y == 0 {
                                mk
                            } else if signed {
                                (sext(x, w).wrapping_div(sext(y, w)) as u64) & mk
                            } else {
                                x / y
                            }
                        }
                        IntOp::Rem => {
                            if y == 0 {
                                x
                            } else if signed {
                                (sext(x, w).wrapping_rem(sext(y, w)) as u64) & mk
                            } else {
                                x % y
                            }
                        }
                        IntOp::Min | IntOp::Max => {
                            let less = if signed {
                                sext(x, w) < sext(y, w)
                            } else {
                                x < y
                            };
                            if less == (op == IntOp::Min) {
                                x
                            } else {
                                y
                            }
                        }
                        IntOp::And => x & y,
                        IntOp::Or => x | y,
                        IntOp::Xor => x ^ y,
                        IntOp::Shl => {
                            let s = self.get(&a[2], l) & 0xffff_ffff;
                            if s >= u64::from(w) {
                                0
                            } else {
                                (x << s) & mk
                            }
                        }
                        IntOp::Shr => {
                            let s = (self.get(&a[2], l) & 0xffff_ffff)
                                .min(u64::from(w) - 1 + u64::from(!signed));
                            if signed {
                                ((sext(x, w) >> s.min(63)) as u64) & mk
                            } else if s >= u64::from(w) {
                                0
                            } else {
                                x >> s
                            }
                        }
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::Mul { ty, mode } | Op::Mad { ty, mode, .. } => {
                let w = width(ty);
                let mk = mask_bits(w);
                let signed = ty.is_signed();
                let is_mad = matches!(inst.op, Op::Mad { .. });
                let (cset, cuse) = match inst.op {
                    Op::Mad { carry, .. } => (carry.set, carry.use_in),
                    _ => (false, false),
                };
                for l in lanes(exec) {
                    let x = self.get(&a[1], l) & mk;
                    let y = self.get(&a[2], l) & mk;
                    let p: u128 = if signed {
                        (i128::from(sext(x, w)) * i128::from(sext(y, w))) as u128
                    } else {
                        u128::from(x) * u128::from(y)
                    };
                    let (r, rw) = match mode {
                        MulMode::Lo => (p as u64 & mk, w),
                        MulMode::Hi => ((p >> w) as u64 & mk, w),
                        MulMode::Wide => ((p as u64) & mask_bits(2 * w), 2 * w),
                    };
                    let r = if is_mad {
                        let rmk = mask_bits(rw);
                        let c = self.get(&a[3], l) & rmk;
                        let cin = u128::from(cuse && self.carry & (1 << l) != 0);
                        let s = u128::from(r) + u128::from(c) + cin;
                        if cset {
                            self.carry = (self.carry & !(1 << l)) | (u32::from(s >> rw != 0) << l);
                        }
                        s as u64 & rmk
                    } else {
                        r
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::Mul24 { ty, hi, mad } => {
                for l in lanes(exec) {
                    let (x, y) = (self.get(&a[1], l), self.get(&a[2], l));
                    let p = if ty.is_signed() {
                        (sext(x & 0xff_ffff, 24) * sext(y & 0xff_ffff, 24)) as u64
                    } else {
                        (x & 0xff_ffff) * (y & 0xff_ffff)
                    };
                    let mut r = if hi { p >> 16 } else { p } & 0xffff_ffff;
                    if mad {
                        r = r.wrapping_add(self.get(&a[3], l)) & 0xffff_ffff;
                    }
                    self.set(&a[0], l, r);
                }
            }
            Op::Sad { ty } => {
                let w = width(ty);
                for l in lanes(exec) {
                    let (x, y, c) = (self.get(&a[1], l), self.get(&a[2], l), self.get(&a[3], l));
                    let d = if ty.is_signed() {
                        (sext(x, w) - sext(y, w)).unsigned_abs()
                    } else {
                        (x & mask_bits(w)).abs_diff(y & mask_bits(w))
                    };
                    self.set(&a[0], l, d.wrapping_add(c) & mask_bits(w));
                }
            }
            Op::IntUn { op, ty, shift_amt } => {
                let w = width(ty);
                let mk = mask_bits(w);
                for l in lanes(exec) {
                    let x = self.get(&a[1], l) & mk;
                    let r = match op {
                        IntUnOp::Abs => sext(x, w).unsigned_abs() & mk,
                        IntUnOp::Neg => x.wrapping_neg() & mk,
                        IntUnOp::Not => !x & mk,
                        IntUnOp::Cnot => u64::from(x == 0),
                        IntUnOp::Popc => u64::from(x.count_ones()),
                        IntUnOp::Clz => u64::from(x.leading_zeros() - (64 - w)),
                        IntUnOp::Brev => x.reverse_bits() >> (64 - w),
                        IntUnOp::Bfind => {
                            let v = if ty.is_signed() && sext(x, w) < 0 {
                                !x & mk
                            } else {
                                x
                            };
                            if v == 0 {
                                0xffff_ffff
                            } else {
                                let pos = 63 - u64::from(v.leading_zeros());
                                if shift_amt {
                                    u64::from(w) - 1 - pos
                                } else {
                                    pos
                                }
                            }
                        }
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::Bfe { ty } => {
                for l in lanes(exec) {
                    let (x, p, n) = (self.get(&a[1], l), self.get(&a[2], l), self.get(&a[3], l));
                    self.set(
                        &a[0],
                        l,
                        numeric::bfe(ty, x, (p & 0xff) as u32, (n & 0xff) as u32),
                    );
                }
            }
            Op::Bfi { ty } => {
                for l in lanes(exec) {
                    let (f, b) = (self.get(&a[1], l), self.get(&a[2], l));
                    let (p, n) = (self.get(&a[3], l), self.get(&a[4], l));
                    self.set(
                        &a[0],
                        l,
                        numeric::bfi(ty, f, b, (p & 0xff) as u32, (n & 0xff) as u32),
                    );
                }
            }
            Op::Prmt { mode } => {
                for l in lanes(exec) {
                    let (x, y, s) = (
                        self.get(&a[1], l) as u32,
                        self.get(&a[2], l) as u32,
                        self.get(&a[3], l) as u32,
                    );
                    self.set(&a[0], l, u64::from(numeric::prmt(x, y, s, mode)));
                }
            }
            Op::Lop3 => {
                for l in lanes(exec) {
                    let (x, y, z) = (
                        self.get(&a[1], l) as u32,
                        self.get(&a[2], l) as u32,
                        self.get(&a[3], l) as u32,
                    );
                    let lut = self.get(&a[4], l) as u8;
                    self.set(&a[0], l, u64::from(numeric::lop3(x, y, z, lut)));
                }
            }
            Op::Shf { left, wrap } => {
                for l in lanes(exec) {
                    let lo = self.get(&a[1], l) & 0xffff_ffff;
                    let hi = self.get(&a[2], l) & 0xffff_ffff;
                    let c = self.get(&a[3], l) as u32;
                    let s = if wrap { c & 31 } else { c.min(32) };
                    let v = (hi << 32) | lo;
                    let r = if left {
                        (v << s) >> 32
                    } else {
                        (v >> s) & 0xffff_ffff
                    };
                    self.set(&a[0], l, r & 0xffff_ffff);
                }
            }
            Op::FBin { op, ty, m } => {
                ctx.counters.flops += n * lanes_of(ty);
                let fast = ty == ScalarType::F32 && plain_rn(m) && op != FloatBinOp::Div;
                for l in lanes(exec) {
                    let (x, y) = (self.get(&a[1], l), self.get(&a[2], l));
                    let r = if fast
                        && matches!(op, FloatBinOp::Add | FloatBinOp::Mul | FloatBinOp::Sub)
                    {
                        // Round-to-nearest f32 add/sub/mul without modifiers is exactly the host's IEEE operation.
                        let (fx, fy) = (f32::from_bits(x as u32), f32::from_bits(y as u32));
                        let v = match op {
                            FloatBinOp::Add => fx + fy,
                            FloatBinOp::Sub => fx - fy,
                            _ => fx * fy,
                        };
                        u64::from(v.to_bits())
                    } else {
                        numeric::float_binop(op, ty, x, y, m)
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::Fma { ty, m } => {
                ctx.counters.flops += 2 * n * lanes_of(ty);
                let fast = ty == ScalarType::F32 && plain_rn(m);
                for l in lanes(exec) {
                    let (x, y, z) = (self.get(&a[1], l), self.get(&a[2], l), self.get(&a[3], l));
                    let r = if fast {
                        // A round-to-nearest f32 fma is exactly the host's correctly rounded `mul_add`.
                        let [fx, fy, fz] = [x, y, z].map(|v| f32::from_bits(v as u32));
                        u64::from(fx.mul_add(fy, fz).to_bits())
                    } else {
                        numeric::float_fma(ty, x, y, z, m)
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::FUn { op, ty, m } => {
                ctx.counters.flops += n * lanes_of(ty);
                for l in lanes(exec) {
                    let x = self.get(&a[1], l);
                    self.set(&a[0], l, numeric::float_unop(op, ty, x, m));
                }
            }
            Op::Copysign { ty } => {
                let sign = 1u64 << (ty.bits() - 1);
                for l in lanes(exec) {
                    let (x, y) = (self.get(&a[1], l), self.get(&a[2], l));
                    self.set(&a[0], l, (y & !sign) | (x & sign));
                }
            }
            Op::Setp { cmp, ty, bool_op } => {
                let (p, q) = match &a[0] {
                    Opnd::Vec(v) if v.len() == 2 => (v[0].clone(), v[1].clone()),
                    o => (o.clone(), Opnd::Sink),
                };
                let mk = mask_bits(width(ty));
                for l in lanes(exec) {
                    let (x, y) = (self.get(&a[1], l) & mk, self.get(&a[2], l) & mk);
                    let t = if ty.is_float() {
                        numeric::float_cmp(cmp, ty, x, y)
                    } else {
                        numeric::int_cmp(cmp, ty, x, y)
                    };
                    let (rp, rq) = match bool_op {
                        None => (t, !t),
                        Some(b) => {
                            let c = self.get(&a[3], l) != 0;
                            let f = |v: bool| match b {
                                BoolOp::And => v && c,
                                BoolOp::Or => v || c,
                                BoolOp::Xor => v != c,
                            };
                            (f(t), f(!t))
                        }
                    };
                    self.set(&p, l, u64::from(rp));
                    self.set(&q, l, u64::from(rq));
                }
            }
            Op::Selp { ty } => {
                let mk = mask_bits(width(ty));
                for l in lanes(exec) {
                    let c = self.get(&a[3], l) != 0;
                    let v = if c {
                        self.get(&a[1], l)
                    } else {
                        self.get(&a[2], l)
                    };
                    self.set(&a[0], l, v & mk);
                }
            }
            Op::Mov { ty } => self.mov(inst, ty, exec),
            Op::Cvt {
                dst,
                src,
                rnd,
                ftz,
                sat,
                relu,
            } => {
                let two = a.len() == 3;
                for l in lanes(exec) {
                    let r = if two {
                        let hi = f32::from_bits(self.get(&a[1], l) as u32);
                        let lo = f32::from_bits(self.get(&a[2], l) as u32);
                        u64::from(numeric::cvt_pack_x2(dst, hi, lo, rnd, relu, sat))
                    } else if relu
                        && matches!(dst, ScalarType::F16 | ScalarType::Bf16)
                        && src == ScalarType::F32
                    {
                        let x = f32::from_bits(self.get(&a[1], l) as u32);
                        u64::from(numeric::cvt_f32_to_half(dst, x, rnd, relu, sat))
                    } else {
                        let x = self.get(&a[1], l) & mask_bits(src.bits().min(64));
                        cvt_fast(dst, src, x, rnd, ftz, sat)
                            .unwrap_or_else(|| numeric::cvt(dst, src, x, rnd, ftz, sat))
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::Cvta { to, space } => {
                let window = match space {
                    Space::Shared => SHARED_WINDOW,
                    Space::Local => LOCAL_WINDOW,
                    _ => 0,
                };
                for l in lanes(exec) {
                    let x = self.get(&a[1], l);
                    let r = if to {
                        x.wrapping_sub(window)
                    } else {
                        x.wrapping_add(window)
                    };
                    self.set(&a[0], l, r);
                }
            }
            Op::Isspacep { space } => {
                for l in lanes(exec) {
                    let x = self.get(&a[1], l);
                    let shared = x.wrapping_sub(SHARED_WINDOW) < WINDOW_SIZE;
                    let local = x.wrapping_sub(LOCAL_WINDOW) < WINDOW_SIZE;
                    let r = match space {
                        Space::Shared => shared,
                        Space::Local => local,
                        Space::Global => !shared && !local,
                        _ => false,
                    };
                    self.set(&a[0], l, u64::from(r));
                }
            }
            Op::Dp4a { a_signed, b_signed } => {
                let byte = |v: u64, i: u32, s: bool| -> i64 {
                    let b = (v >> (8 * i)) as u8;
                    if s {
                        i64::from(b as i8)
                    } else {
                        i64::from(b)
                    }
                };
                for l in lanes(exec) {
                    let (x, y, c) = (self.get(&a[1], l), self.get(&a[2], l), self.get(&a[3], l));
                    let dot: i64 = (0..4)
                        .map(|i| byte(x, i, a_signed) * byte(y, i, b_signed))
                        .sum();
                    self.set(&a[0], l, (c as i64).wrapping_add(dot) as u64 & 0xffff_ffff);
                }
            }
            Op::Testp { kind, ty } => {
                for l in lanes(exec) {
                    let x = self.get(&a[1], l);
                    let v = if ty == ScalarType::F64 {
                        f64::from_bits(x)
                    } else {
                        f64::from(f32::from_bits(x as u32))
                    };
                    let sub = if ty == ScalarType::F64 {
                        f64::from_bits(x).is_subnormal()
                    } else {
                        f32::from_bits(x as u32).is_subnormal()
                    };
                    let r = match kind {
                        TestKind::Finite => v.is_finite(),
                        TestKind::Infinite => v.is_infinite(),
                        TestKind::Number => !v.is_nan(),
                        TestKind::NotANumber => v.is_nan(),
                        TestKind::Normal => v.is_finite() && v != 0.0 && !sub,
                        TestKind::Subnormal => sub,
                    };
                    self.set(&a[0], l, u64::from(r));
                }
            }
            _ => {
                return Err(self.exec_err(ctx, inst, exec, "instruction not executable by the ALU"))
            }
        }
        Ok(())
    }

    /// `mov`, including packing `{a, b}` into one register and unpacking one register into `{a, b}`.
    fn mov(&mut self, inst: &Inst, ty: ScalarType, exec: u32) {
        let a = &inst.args;
        let bits = width(ty);
        match (&a[0], &a[1]) {
            (Opnd::Vec(dst), src) => {
                let piece = bits / dst.len() as u32;
                for l in lanes(exec) {
                    let v = self.get(src, l);
                    for (i, d) in dst.iter().enumerate() {
                        self.set(d, l, (v >> (piece * i as u32)) & mask_bits(piece));
                    }
                }
            }
            (dst, Opnd::Vec(src)) => {
                let piece = bits / src.len() as u32;
                for l in lanes(exec) {
                    let mut v = 0u64;
                    for (i, s) in src.iter().enumerate() {
                        v |= (self.get(s, l) & mask_bits(piece)) << (piece * i as u32);
                    }
                    self.set(dst, l, v);
                }
            }
            (dst, src) => {
                let mk = mask_bits(bits);
                let pred = ty == ScalarType::Pred;
                for l in lanes(exec) {
                    let v = self.get(src, l);
                    self.set(dst, l, if pred { u64::from(v != 0) } else { v & mk });
                }
            }
        }
    }
}
