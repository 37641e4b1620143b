//! Integer comparison and the bit-manipulation instructions `prmt`, `bfe`, `bfi` and `lop3`, as the PTX
//! ISA defines them.

use super::CmpOp;
use crate::types::ScalarType;

/// The specialized `prmt` modes (forward/backward 4-extract, replicate 8/16, edge clamp left/right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrmtMode {
    F4e,
    B4e,
    Rc8,
    Ecl,
    Ecr,
    Rc16,
}

/// `prmt.b32{.mode} d, a, b, sel`: picks four bytes from the eight bytes of `{b, a}` (a is bytes 0..4).
///
/// Without a mode, each nibble `sel[4i+3:4i]` picks result byte `i`: its low three bits name the source
/// byte and its top bit replicates that byte's sign bit instead of copying it. A mode uses only
/// `sel[1:0]` and the ISA's table of byte indices.
pub(crate) fn prmt(a: u32, b: u32, sel: u32, mode: Option<PrmtMode>) -> u32 {
    let src = (b as u64) << 32 | a as u64;
    let byte = |i: u32| (src >> (8 * (i & 7))) as u8;
    let s = sel & 3;
    // Source byte index for result bytes 0, 1, 2, 3, read off the ISA's mode table.
    let idx: [u32; 4] = match mode {
        None => {
            let mut out = 0u32;
            for i in 0..4 {
                let nib = (sel >> (4 * i)) & 0xf;
                let v = byte(nib & 7);
                let v = if nib & 8 != 0 { ((v as i8) >> 7) as u8 } else { v };
                out |= (v as u32) << (8 * i);
            }
            return out;
        }
        Some(PrmtMode::F4e) => [s, s + 1, s + 2, s + 3],
        Some(PrmtMode::B4e) => [s, s.wrapping_sub(1) & 7, s.wrapping_sub(2) & 7, s.wrapping_sub(3) & 7],
        Some(PrmtMode::Rc8) => [s; 4],
        Some(PrmtMode::Ecl) => [s, s.max(1), s.max(2), 3],
        Some(PrmtMode::Ecr) => [0, s.min(1), s.min(2), s],
        Some(PrmtMode::Rc16) => {
            let h = 2 * (s & 1);
            [h, h + 1, h, h + 1]
        }
    };
    idx.iter()
        .enumerate()
        .fold(0, |acc, (i, &j)| acc | (byte(j) as u32) << (8 * i))
}

fn width(ty: ScalarType) -> u32 {
    ty.bits().min(64)
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// `bfe.{u32,u64,s32,s64} d, a, pos, len`: extracts `len` bits from bit `pos` (both taken mod 256). The
/// signed forms fill the result with the field's sign bit, which is bit `min(pos + len − 1, msb)` of `a`;
/// bits past the msb of `a` read as that sign bit (zero for the unsigned forms); `len` 0 gives 0.
pub(crate) fn bfe(ty: ScalarType, a: u64, pos: u32, len: u32) -> u64 {
    let w = width(ty);
    let msb = w - 1;
    let (pos, len) = (pos & 0xff, len & 0xff);
    let sbit = if ty.is_signed() && len != 0 {
        (a >> (pos + len - 1).min(msb)) & 1
    } else {
        0
    };
    let mut d = 0u64;
    for i in 0..w {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1
        } else {
            sbit
        };
        d |= bit << i;
    }
    d
}

/// `bfi.{b32,b64} d, f, b, pos, len`: copies `b` and inserts the low `len` bits of `f` at bit `pos` (both
/// taken mod 256); bits that would land past the msb are dropped.
pub(crate) fn bfi(ty: ScalarType, f: u64, b: u64, pos: u32, len: u32) -> u64 {
    let w = width(ty);
    let (pos, len) = (pos & 0xff, len & 0xff);
    let mut d = b & mask(w);
    let mut i = 0;
    while i < len && pos + i < w {
        d = (d & !(1 << (pos + i))) | (((f >> i) & 1) << (pos + i));
        i += 1;
    }
    d
}

/// `lop3.b32 d, a, b, c, lut`: each result bit is `lut` bit number `4·a + 2·b + c` of the input bits, the
/// encoding in which `lut = F(0xF0, 0xCC, 0xAA)`.
pub(crate) fn lop3(a: u32, b: u32, c: u32, lut: u8) -> u32 {
    let mut d = 0;
    for i in 0..32 {
        let k = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1);
        d |= ((lut as u32 >> k) & 1) << i;
    }
    d
}

/// `setp` on an integer or bit type: signed for `.s*`, unsigned otherwise; `lo/ls/hi/hs` are always
/// unsigned. The unordered and `num/nan` forms are float-only; on integers they act as ordered (`num` true,
/// `nan` false).
pub(crate) fn int_cmp(op: CmpOp, ty: ScalarType, a: u64, b: u64) -> bool {
    let w = width(ty);
    let (ua, ub) = (a & mask(w), b & mask(w));
    let ext = |v: u64| ((v << (64 - w)) as i64) >> (64 - w);
    let (sa, sb) = (ext(ua), ext(ub));
    let signed = ty.is_signed();
    let lt = if signed { sa < sb } else { ua < ub };
    let eq = ua == ub;
    match op {
        CmpOp::Eq | CmpOp::Equ => eq,
        CmpOp::Ne | CmpOp::Neu => !eq,
        CmpOp::Lt | CmpOp::Ltu => lt,
        CmpOp::Le | CmpOp::Leu => lt || eq,
        CmpOp::Gt | CmpOp::Gtu => !lt && !eq,
        CmpOp::Ge | CmpOp::Geu => !lt,
        CmpOp::Lo => ua < ub,
        CmpOp::Ls => ua <= ub,
        CmpOp::Hi => ua > ub,
        CmpOp::Hs => ua >= ub,
        CmpOp::Num => true,
        CmpOp::Nan => false,
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // Byte loops read best with explicit indices.
mod tests {
    use super::*;
    use crate::numeric::test_rng::Rng;

    /// The ISA's mode table, transcribed row by row as (d.b3, d.b2, d.b1, d.b0) for selectors 0..3.
    const TABLE: [(PrmtMode, [[u32; 4]; 4]); 6] = [
        (PrmtMode::F4e, [[3, 2, 1, 0], [4, 3, 2, 1], [5, 4, 3, 2], [6, 5, 4, 3]]),
        (PrmtMode::B4e, [[5, 6, 7, 0], [6, 7, 0, 1], [7, 0, 1, 2], [0, 1, 2, 3]]),
        (PrmtMode::Rc8, [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]]),
        (PrmtMode::Ecl, [[3, 2, 1, 0], [3, 2, 1, 1], [3, 2, 2, 2], [3, 3, 3, 3]]),
        (PrmtMode::Ecr, [[0, 0, 0, 0], [1, 1, 1, 0], [2, 2, 1, 0], [3, 2, 1, 0]]),
        (PrmtMode::Rc16, [[1, 0, 1, 0], [3, 2, 3, 2], [1, 0, 1, 0], [3, 2, 3, 2]]),
    ];

    #[test]
    fn prmt_modes_follow_the_isa_table() {
        let mut rng = Rng::new(10);
        for _ in 0..200 {
            let (a, b) = (rng.u32(), rng.u32());
            let bytes: Vec<u8> = a.to_le_bytes().into_iter().chain(b.to_le_bytes()).collect();
            for (mode, rows) in TABLE {
                for (s, row) in rows.iter().enumerate() {
                    let sel = (rng.u32() & !3) | s as u32;
                    let want = u32::from_le_bytes([3, 2, 1, 0].map(|k| bytes[row[k] as usize]));
                    assert_eq!(prmt(a, b, sel, Some(mode)), want, "{mode:?} sel {s}");
                }
            }
        }
    }

    #[test]
    fn prmt_generic_copies_or_sign_replicates_each_byte() {
        let mut rng = Rng::new(11);
        for _ in 0..1000 {
            let (a, b, sel) = (rng.u32(), rng.u32(), rng.u32() & 0xffff);
            let src = [a.to_le_bytes(), b.to_le_bytes()].concat();
            let d = prmt(a, b, sel, None).to_le_bytes();
            for i in 0..4 {
                let nib = (sel >> (4 * i)) & 0xf;
                let byte = src[(nib & 7) as usize];
                let want = if nib >= 8 {
                    if byte >= 0x80 {
                        0xff
                    } else {
                        0
                    }
                } else {
                    byte
                };
                assert_eq!(d[i], want);
            }
        }
    }

    #[test]
    fn bfe_matches_shift_formulation() {
        let mut rng = Rng::new(12);
        for ty in [ScalarType::U32, ScalarType::S32, ScalarType::U64, ScalarType::S64] {
            let w = ty.bits();
            for _ in 0..3000 {
                let a = rng.u64() & mask(w);
                let (pos, len) = (rng.below(80) as u32, rng.below(80) as u32);
                // Reference: widen a to 128 bits (sign-extended for signed types), shift, cut len bits.
                let wide: i128 = if ty.is_signed() {
                    ((a << (64 - w)) as i64 >> (64 - w)) as i128
                } else {
                    a as i128
                };
                let field = if len == 0 {
                    0
                } else {
                    let shifted = wide >> pos.min(127);
                    let cut = shifted & ((1i128 << len) - 1);
                    // Sign-extend the field from its top bit for signed types.
                    if ty.is_signed() && (cut >> (len - 1)) & 1 == 1 {
                        cut | !((1i128 << len) - 1)
                    } else {
                        cut
                    }
                };
                assert_eq!(
                    bfe(ty, a, pos, len),
                    field as u64 & mask(w),
                    "{ty:?} a {a:#x} pos {pos} len {len}"
                );
            }
        }
    }

    #[test]
    fn bfi_matches_mask_formulation() {
        let mut rng = Rng::new(13);
        for ty in [ScalarType::B32, ScalarType::B64] {
            let w = ty.bits();
            for _ in 0..3000 {
                let (f, b) = (rng.u64() & mask(w), rng.u64() & mask(w));
                let (pos, len) = (rng.below(72) as u32, rng.below(72) as u32);
                let field_mask: u128 = ((1u128 << len.min(64)) - 1) << pos;
                let want = ((b as u128 & !field_mask) | (((f as u128) << pos) & field_mask)) as u64 & mask(w);
                assert_eq!(bfi(ty, f, b, pos, len), want, "{ty:?} pos {pos} len {len}");
            }
        }
    }

    #[test]
    fn lop3_reproduces_boolean_functions() {
        let mut rng = Rng::new(14);
        for _ in 0..200 {
            let (a, b, c) = (rng.u32(), rng.u32(), rng.u32());
            assert_eq!(lop3(a, b, c, 0xF0 & 0xCC | 0xAA), (a & b) | c);
            assert_eq!(lop3(a, b, c, 0xF0 ^ 0xCC ^ 0xAA), a ^ b ^ c);
            assert_eq!(lop3(a, b, c, !0xF0 & 0xCC & !0xAA), !a & b & !c);
            assert_eq!(lop3(a, b, c, (0xF0 & 0xCC) | (!0xF0 & 0xAA)), (a & b) | (!a & c));
        }
    }

    #[test]
    fn int_cmp_signed_and_unsigned() {
        let mut rng = Rng::new(15);
        for _ in 0..3000 {
            let (a, b) = (rng.u64(), if rng.below(4) == 0 { 0 } else { rng.u64() });
            let b = if rng.below(8) == 0 { a } else { b };
            for (ty, sa, sb) in [
                (ScalarType::S32, a as i32 as i64, b as i32 as i64),
                (ScalarType::S16, a as i16 as i64, b as i16 as i64),
                (ScalarType::S64, a as i64, b as i64),
            ] {
                assert_eq!(int_cmp(CmpOp::Lt, ty, a, b), sa < sb);
                assert_eq!(int_cmp(CmpOp::Ge, ty, a, b), sa >= sb);
                assert_eq!(
                    int_cmp(CmpOp::Hi, ty, a, b),
                    (a & mask(ty.bits())) > (b & mask(ty.bits()))
                );
            }
            for (ty, ua, ub) in [
                (ScalarType::U32, a as u32 as u64, b as u32 as u64),
                (ScalarType::B8, a & 0xff, b & 0xff),
            ] {
                assert_eq!(int_cmp(CmpOp::Le, ty, a, b), ua <= ub);
                assert_eq!(int_cmp(CmpOp::Gt, ty, a, b), ua > ub);
                assert_eq!(int_cmp(CmpOp::Eq, ty, a, b), ua == ub);
                assert_eq!(int_cmp(CmpOp::Ls, ty, a, b), ua <= ub);
            }
        }
    }
}
