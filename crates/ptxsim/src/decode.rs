//! Decoding an opcode with its dotted modifiers (`ld.global.nc.v4.f32`) into an `ir::Op` and its counter class.

use crate::error::{Result, SimError};
use crate::ir::{
    AtomOp, BoolOp, Carry, Class, IntOp, IntUnOp, MulMode, Op, Opnd, ShflMode, Space, SymRef,
    TestKind, VoteMode,
};
use crate::numeric::{CmpOp, FloatBinOp, FloatMods, FloatUnOp, PrmtMode};
use crate::types::{Rounding, ScalarType};

/// The modifiers of one opcode, sorted into types, a rounding mode and plain words.
struct Mods<'a> {
    types: Vec<ScalarType>,
    rnd: Option<Rounding>,
    words: Vec<&'a str>,
}

impl Mods<'_> {
    fn has(&self, w: &str) -> bool {
        self.words.contains(&w)
    }

    fn float(&self) -> FloatMods {
        FloatMods {
            rnd: self.rnd,
            ftz: self.has("ftz"),
            sat: self.has("sat"),
            nan: self.has("NaN"),
            approx: self.has("approx") || self.has("full"),
        }
    }

    fn space(&self) -> Space {
        for w in &self.words {
            match *w {
                "global" => return Space::Global,
                "shared" | "shared::cta" => return Space::Shared,
                "local" => return Space::Local,
                "param" => return Space::Param,
                "const" => return Space::Const,
                _ => {}
            }
        }
        Space::Generic
    }

    fn nvec(&self) -> u8 {
        if self.has("v4") {
            4
        } else if self.has("v2") {
            2
        } else {
            1
        }
    }
}

fn float_class(ty: ScalarType) -> Class {
    match ty {
        ScalarType::F64 => Class::Fp64,
        ScalarType::F32 | ScalarType::Tf32 => Class::Fp32,
        ScalarType::F16 | ScalarType::F16x2 | ScalarType::Bf16 | ScalarType::Bf16x2 => Class::Fp16,
        _ => Class::Int,
    }
}

fn mem_class(space: Space) -> Class {
    match space {
        Space::Shared => Class::Shared,
        Space::Local => Class::Local,
        Space::Param | Space::Const => Class::Param,
        Space::Global | Space::Generic => Class::Global,
    }
}

fn cmp_op(w: &str) -> Option<CmpOp> {
    use CmpOp::*;
    Some(match w {
        "eq" => Eq,
        "ne" => Ne,
        "lt" => Lt,
        "le" => Le,
        "gt" => Gt,
        "ge" => Ge,
        "equ" => Equ,
        "neu" => Neu,
        "ltu" => Ltu,
        "leu" => Leu,
        "gtu" => Gtu,
        "geu" => Geu,
        "num" => Num,
        "nan" => Nan,
        "lo" => Lo,
        "ls" => Ls,
        "hi" => Hi,
        "hs" => Hs,
        _ => return None,
    })
}

/// Decodes `parts` (the opcode split at dots) for the operands `args`.
pub(crate) fn decode(parts: &[&str], args: &[Opnd], line: u32) -> Result<(Op, Class)> {
    let bad = |msg: String| SimError::Parse { line, msg };
    let base = parts[0];
    let mut m = Mods {
        types: vec![],
        rnd: None,
        words: vec![],
    };
    for w in &parts[1..] {
        if let Some(t) = ScalarType::parse(w) {
            m.types.push(t);
        } else if let Some(r) = Rounding::parse(w) {
            m.rnd = Some(r);
        } else {
            m.words.push(w);
        }
    }
    let ty = m.types.last().copied().unwrap_or(ScalarType::B32);
    let need_ty = || {
        if m.types.is_empty() {
            Err(bad(format!("`{}` has no type suffix", parts.join("."))))
        } else {
            Ok(())
        }
    };
    let mul_mode = if m.has("hi") {
        MulMode::Hi
    } else if m.has("wide") {
        MulMode::Wide
    } else {
        MulMode::Lo
    };
    let fc = float_class(ty);
    let r: (Op, Class) = match base {
        "add" | "sub" | "addc" | "subc" => {
            need_ty()?;
            if ty.is_float() {
                let op = if base == "add" {
                    FloatBinOp::Add
                } else {
                    FloatBinOp::Sub
                };
                (
                    Op::FBin {
                        op,
                        ty,
                        m: m.float(),
                    },
                    fc,
                )
            } else {
                let op = if base.starts_with("add") {
                    IntOp::Add
                } else {
                    IntOp::Sub
                };
                let carry = Carry {
                    set: m.has("cc"),
                    use_in: base.ends_with('c'),
                };
                (
                    Op::Int {
                        op,
                        ty,
                        carry,
                        sat: m.has("sat"),
                    },
                    Class::Int,
                )
            }
        }
        "mul" => {
            need_ty()?;
            if ty.is_float() {
                (
                    Op::FBin {
                        op: FloatBinOp::Mul,
                        ty,
                        m: m.float(),
                    },
                    fc,
                )
            } else {
                (Op::Mul { ty, mode: mul_mode }, Class::Int)
            }
        }
        "mad" | "madc" => {
            need_ty()?;
            if ty.is_float() {
                (Op::Fma { ty, m: m.float() }, fc)
            } else {
                let carry = Carry {
                    set: m.has("cc"),
                    use_in: base == "madc",
                };
                (
                    Op::Mad {
                        ty,
                        mode: mul_mode,
                        carry,
                    },
                    Class::Int,
                )
            }
        }
        "mul24" | "mad24" => (
            Op::Mul24 {
                ty,
                hi: m.has("hi"),
                mad: base == "mad24",
            },
            Class::Int,
        ),
        "sad" => (Op::Sad { ty }, Class::Int),
        "div" | "rem" | "min" | "max" => {
            need_ty()?;
            if ty.is_float() {
                let op = match base {
                    "div" => FloatBinOp::Div,
                    "min" => FloatBinOp::Min,
                    "max" => FloatBinOp::Max,
                    _ => return Err(bad("rem on a float type".into())),
                };
                (
                    Op::FBin {
                        op,
                        ty,
                        m: m.float(),
                    },
                    fc,
                )
            } else {
                let op = match base {
                    "div" => IntOp::Div,
                    "rem" => IntOp::Rem,
                    "min" => IntOp::Min,
                    _ => IntOp::Max,
                };
                (
                    Op::Int {
                        op,
                        ty,
                        carry: Carry::default(),
                        sat: false,
                    },
                    Class::Int,
                )
            }
        }
        "abs" | "neg" if ty.is_float() => {
            let op = if base == "abs" {
                FloatUnOp::Abs
            } else {
                FloatUnOp::Neg
            };
            (
                Op::FUn {
                    op,
                    ty,
                    m: m.float(),
                },
                fc,
            )
        }
        "abs" | "neg" | "not" | "cnot" | "popc" | "clz" | "brev" | "bfind" => {
            need_ty()?;
            let op = match base {
                "abs" => IntUnOp::Abs,
                "neg" => IntUnOp::Neg,
                "not" => IntUnOp::Not,
                "cnot" => IntUnOp::Cnot,
                "popc" => IntUnOp::Popc,
                "clz" => IntUnOp::Clz,
                "brev" => IntUnOp::Brev,
                _ => IntUnOp::Bfind,
            };
            (
                Op::IntUn {
                    op,
                    ty,
                    shift_amt: m.has("shiftamt"),
                },
                Class::Int,
            )
        }
        "and" | "or" | "xor" | "shl" | "shr" => {
            need_ty()?;
            let op = match base {
                "and" => IntOp::And,
                "or" => IntOp::Or,
                "xor" => IntOp::Xor,
                "shl" => IntOp::Shl,
                _ => IntOp::Shr,
            };
            (
                Op::Int {
                    op,
                    ty,
                    carry: Carry::default(),
                    sat: false,
                },
                Class::Int,
            )
        }
        "bfe" => (Op::Bfe { ty }, Class::Int),
        "bfi" => (Op::Bfi { ty }, Class::Int),
        "prmt" => {
            let mode = m.words.iter().find_map(|w| {
                Some(match *w {
                    "f4e" => PrmtMode::F4e,
                    "b4e" => PrmtMode::B4e,
                    "rc8" => PrmtMode::Rc8,
                    "ecl" => PrmtMode::Ecl,
                    "ecr" => PrmtMode::Ecr,
                    "rc16" => PrmtMode::Rc16,
                    _ => return None,
                })
            });
            (Op::Prmt { mode }, Class::Int)
        }
        "lop3" => (Op::Lop3, Class::Int),
        "shf" => (
            Op::Shf {
                left: m.has("l"),
                wrap: m.has("wrap"),
            },
            Class::Int,
        ),
        "fma" => (Op::Fma { ty, m: m.float() }, fc),
        "sqrt" | "rsqrt" | "rcp" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            let op = match base {
                "sqrt" => FloatUnOp::Sqrt,
                "rsqrt" => FloatUnOp::Rsqrt,
                "rcp" => FloatUnOp::Rcp,
                "ex2" => FloatUnOp::Ex2,
                "lg2" => FloatUnOp::Lg2,
                "sin" => FloatUnOp::Sin,
                "cos" => FloatUnOp::Cos,
                _ => FloatUnOp::Tanh,
            };
            let class = if m.has("approx") || !matches!(base, "sqrt" | "rcp") {
                Class::Special
            } else {
                fc
            };
            (
                Op::FUn {
                    op,
                    ty,
                    m: m.float(),
                },
                class,
            )
        }
        "copysign" => (Op::Copysign { ty }, fc),
        "setp" => {
            need_ty()?;
            let cmp = parts
                .get(1)
                .and_then(|w| cmp_op(w))
                .ok_or_else(|| bad(format!("bad setp `{}`", parts.join("."))))?;
            let bool_op = if m.has("and") {
                Some(BoolOp::And)
            } else if m.has("or") {
                Some(BoolOp::Or)
            } else if m.has("xor") {
                Some(BoolOp::Xor)
            } else {
                None
            };
            (
                Op::Setp { cmp, ty, bool_op },
                if ty.is_float() { fc } else { Class::Int },
            )
        }
        "selp" => (Op::Selp { ty }, Class::Int),
        "mov" => {
            let class = if args.iter().any(|a| matches!(a, Opnd::Sreg(_))) {
                Class::Special
            } else {
                Class::Convert
            };
            (Op::Mov { ty }, class)
        }
        "cvt" => {
            if m.types.len() != 2 {
                return Err(bad(format!("cvt needs two types: `{}`", parts.join("."))));
            }
            let op = Op::Cvt {
                dst: m.types[0],
                src: m.types[1],
                rnd: m.rnd,
                ftz: m.has("ftz"),
                sat: m.has("sat") || m.has("satfinite"),
                relu: m.has("relu"),
            };
            (op, Class::Convert)
        }
        "cvta" => (
            Op::Cvta {
                to: m.has("to"),
                space: m.space(),
            },
            Class::Convert,
        ),
        "ld" | "ldu" | "st" => {
            need_ty()?;
            let space = if base == "ldu" {
                Space::Global
            } else {
                m.space()
            };
            let nvec = m.nvec();
            let op = if base == "st" {
                Op::St { space, ty, nvec }
            } else {
                Op::Ld { space, ty, nvec }
            };
            (op, mem_class(space))
        }
        "atom" | "red" => {
            need_ty()?;
            let op = m
                .words
                .iter()
                .find_map(|w| {
                    Some(match *w {
                        "add" => AtomOp::Add,
                        "min" => AtomOp::Min,
                        "max" => AtomOp::Max,
                        "exch" => AtomOp::Exch,
                        "cas" => AtomOp::Cas,
                        "and" => AtomOp::And,
                        "or" => AtomOp::Or,
                        "xor" => AtomOp::Xor,
                        "inc" => AtomOp::Inc,
                        "dec" => AtomOp::Dec,
                        _ => return None,
                    })
                })
                .ok_or_else(|| bad(format!("unsupported atomic `{}`", parts.join("."))))?;
            (
                Op::Atom {
                    space: m.space(),
                    op,
                    ty,
                    ret: base == "atom",
                },
                Class::Atomic,
            )
        }
        "cp" if m.has("async") => {
            if m.has("commit_group") {
                (Op::CpAsyncCommit, Class::Sync)
            } else if m.has("wait_all") {
                (Op::CpAsyncWait { keep: None }, Class::Sync)
            } else if m.has("wait_group") {
                let Some(Opnd::Imm(n)) = args.first() else {
                    return Err(bad(
                        "cp.async.wait_group needs an immediate group count".into()
                    ));
                };
                (
                    Op::CpAsyncWait {
                        keep: Some(*n as u32),
                    },
                    Class::Sync,
                )
            } else {
                let size = match args.get(2) {
                    Some(Opnd::Imm(s @ (4 | 8 | 16))) => *s as u8,
                    _ => return Err(bad("cp.async needs a copy size of 4, 8 or 16".into())),
                };
                (
                    Op::CpAsync {
                        size,
                        ignore_src: false,
                    },
                    Class::Global,
                )
            }
        }
        "ldmatrix" => {
            let num = if m.has("x4") {
                4
            } else if m.has("x2") {
                2
            } else {
                1
            };
            (
                Op::Ldmatrix {
                    num,
                    trans: m.has("trans"),
                },
                Class::Shared,
            )
        }
        "mma" => {
            let k = if m.has("m16n8k16") {
                16
            } else if m.has("m16n8k8") {
                8
            } else {
                return Err(bad(format!("unsupported mma shape `{}`", parts.join("."))));
            };
            if !m.has("row") || !m.has("col") || m.types.len() != 4 || m.types[0] != ScalarType::F32
            {
                return Err(bad(format!(
                    "only mma .row.col with f32 accumulators is supported: `{}`",
                    parts.join(".")
                )));
            }
            let ab = m.types[1];
            if !matches!(ab, ScalarType::F16 | ScalarType::Bf16) {
                return Err(bad(format!(
                    "unsupported mma input type `{}`",
                    parts.join(".")
                )));
            }
            (Op::Mma { k, ty: ab }, Class::Tensor)
        }
        "bra" => (Op::Bra, Class::Control),
        "call" => {
            let func = args
                .iter()
                .find_map(|a| match a {
                    Opnd::Sym(SymRef::Func(i)) => Some(*i),
                    _ => None,
                })
                .ok_or_else(|| bad("call without a direct target".into()))?;
            (Op::Call { func }, Class::Control)
        }
        "ret" => (Op::Ret, Class::Control),
        "exit" => (Op::Exit, Class::Control),
        "bar" | "barrier" => {
            if m.has("warp") {
                (Op::BarWarp, Class::Sync)
            } else if m.has("sync") || parts.len() == 1 || m.has("aligned") {
                let aligned = base == "bar" || m.has("aligned");
                (Op::Bar { aligned }, Class::Sync)
            } else {
                return Err(bad(format!("unsupported barrier `{}`", parts.join("."))));
            }
        }
        "membar" | "fence" | "nanosleep" | "prefetch" | "prefetchu" | "pmevent"
        | "griddepcontrol" => (Op::Nop, Class::Sync),
        "shfl" => {
            let mode = if m.has("up") {
                ShflMode::Up
            } else if m.has("down") {
                ShflMode::Down
            } else if m.has("bfly") {
                ShflMode::Bfly
            } else {
                ShflMode::Idx
            };
            (Op::Shfl { mode }, Class::Sync)
        }
        "vote" => {
            let mode = if m.has("all") {
                VoteMode::All
            } else if m.has("any") {
                VoteMode::Any
            } else if m.has("uni") {
                VoteMode::Uni
            } else {
                VoteMode::Ballot
            };
            (Op::Vote { mode }, Class::Sync)
        }
        "activemask" => (Op::Activemask, Class::Sync),
        "redux" => {
            need_ty()?;
            let op = if m.has("add") {
                IntOp::Add
            } else if m.has("min") {
                IntOp::Min
            } else if m.has("max") {
                IntOp::Max
            } else if m.has("and") {
                IntOp::And
            } else if m.has("or") {
                IntOp::Or
            } else if m.has("xor") {
                IntOp::Xor
            } else {
                return Err(bad(format!("unsupported redux `{}`", parts.join("."))));
            };
            (Op::Redux { op, ty }, Class::Sync)
        }
        "isspacep" => (Op::Isspacep { space: m.space() }, Class::Int),
        "dp4a" if m.types.len() == 2 => {
            let op = Op::Dp4a {
                a_signed: m.types[0].is_signed(),
                b_signed: m.types[1].is_signed(),
            };
            (op, Class::Int)
        }
        "testp" => {
            let kind = match parts.get(1).copied() {
                Some("finite") => TestKind::Finite,
                Some("infinite") => TestKind::Infinite,
                Some("number") => TestKind::Number,
                Some("notanumber") => TestKind::NotANumber,
                Some("normal") => TestKind::Normal,
                Some("subnormal") => TestKind::Subnormal,
                _ => return Err(bad(format!("unsupported testp `{}`", parts.join(".")))),
            };
            (Op::Testp { kind, ty }, fc)
        }
        "trap" | "brkpt" => (Op::Trap, Class::Control),
        _ => {
            return Err(bad(format!(
                "unsupported instruction `{}`",
                parts.join(".")
            )))
        }
    };
    let need = min_operands(&r.0);
    if args.len() < need {
        return Err(bad(format!(
            "`{}` needs at least {need} operands, found {}",
            parts.join("."),
            args.len()
        )));
    }
    Ok(r)
}

/// The fewest operands each operation reads or writes (the executor indexes them without further checks).
fn min_operands(op: &Op) -> usize {
    match op {
        Op::Ret
        | Op::Exit
        | Op::Bar { .. }
        | Op::BarWarp
        | Op::Trap
        | Op::Nop
        | Op::Call { .. } => 0,
        Op::CpAsyncCommit | Op::CpAsyncWait { .. } => 0,
        Op::Bra | Op::Activemask => 1,
        Op::IntUn { .. } | Op::FUn { .. } | Op::Mov { .. } | Op::Cvt { .. } | Op::Cvta { .. } => 2,
        Op::Ld { .. } | Op::St { .. } | Op::Ldmatrix { .. } | Op::Vote { .. } => 2,
        Op::Isspacep { .. } | Op::Testp { .. } => 2,
        Op::Atom { ret, .. } => 2 + usize::from(*ret),
        Op::Int { .. }
        | Op::Mul { .. }
        | Op::FBin { .. }
        | Op::Copysign { .. }
        | Op::Redux { .. } => 3,
        Op::CpAsync { .. } => 3,
        Op::Mul24 { mad, .. } => 3 + usize::from(*mad),
        Op::Setp { bool_op, .. } => 3 + usize::from(bool_op.is_some()),
        Op::Mad { .. } | Op::Sad { .. } | Op::Bfe { .. } | Op::Prmt { .. } | Op::Shf { .. } => 4,
        Op::Fma { .. } | Op::Selp { .. } | Op::Dp4a { .. } | Op::Mma { .. } | Op::Shfl { .. } => 4,
        Op::Bfi { .. } | Op::Lop3 => 5,
    }
}
