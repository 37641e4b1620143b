//! The decoded form of a PTX module: functions, symbols, and instructions as a compact enum decoded once at load.

use crate::numeric::{CmpOp, FloatBinOp, FloatMods, FloatUnOp, PrmtMode};
use crate::types::{Rounding, ScalarType};

/// A parsed PTX module.
#[derive(Debug, Clone)]
pub struct Module {
    /// Module-scope variables (`.global`, `.const`, `.shared`), in declaration order.
    pub(crate) globals: Vec<Symbol>,
    /// Every `.entry` and `.func` with a body (prototypes are dropped).
    pub(crate) functions: Vec<Function>,
    /// `.file` index → path, for error messages.
    pub(crate) files: Vec<(u32, String)>,
}

impl Module {
    /// The names of the `.entry` kernels, in declaration order.
    pub fn entry_names(&self) -> Vec<String> {
        self.functions
            .iter()
            .filter(|f| f.is_entry)
            .map(|f| f.name.clone())
            .collect()
    }

    pub(crate) fn function(&self, name: &str) -> Option<usize> {
        self.functions.iter().position(|f| f.name == name)
    }
}

/// A state space of a variable or memory instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Space {
    Generic,
    Global,
    Shared,
    Local,
    Const,
    /// A kernel's parameter space.
    Param,
}

/// A variable: where it lives, how large it is, and its initializer.
#[derive(Debug, Clone)]
pub(crate) struct Symbol {
    pub name: String,
    pub space: Space,
    pub size: usize,
    pub align: usize,
    /// `extern .shared … name[]`: the dynamic shared memory.
    pub is_extern: bool,
    pub init: Vec<u8>,
}

/// A `.entry` or `.func`.
#[derive(Debug, Clone)]
pub(crate) struct Function {
    pub name: String,
    pub is_entry: bool,
    /// Input parameters (kernel parameters for an entry).
    pub params: Vec<Symbol>,
    /// Return parameters of a `.func`.
    pub rets: Vec<Symbol>,
    /// `.local` variables and call-site `.param` variables (per-thread storage).
    pub locals: Vec<Symbol>,
    /// Number of registers (predicates included), numbered from 0 in this function.
    pub nregs: u32,
    pub code: Vec<Inst>,
    /// The PTX line of the `.entry`/`.func` directive.
    pub line: u32,
    /// `.maxntid` (false) or `.reqntid` (true): the thread count of a block it allows.
    pub max_threads: Option<(u64, bool)>,
}

/// Where a symbol operand points, before linking resolves it to an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SymRef {
    /// A module-scope variable (index into `Module::globals`).
    Global(u32),
    /// A parameter of the current function.
    Param(u32),
    /// A return parameter of the current function.
    Ret(u32),
    /// A `.local` or call-site `.param` of the current function.
    Local(u32),
    /// A function name (only as a call target).
    Func(u32),
}

/// A special register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    LaneMaskEq,
    LaneMaskLt,
    LaneMaskLe,
    LaneMaskGt,
    LaneMaskGe,
    Clock,
    Clock64,
    GlobalTimer,
    SmId,
    NSmId,
    DynSmem,
    TotalSmem,
}

/// An instruction operand.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Opnd {
    Reg(u32),
    Imm(u64),
    Sreg(Sreg),
    /// A symbol; linking turns it into `Imm` (its state-space address).
    Sym(SymRef),
    /// `[base + off]`: base is `Reg`, `Imm` or `Sym`.
    Addr(Box<Opnd>, i64),
    Vec(Vec<Opnd>),
    /// A branch target: instruction index (function-local before linking, program-wide after).
    Label(u32),
    /// `_`: a discarded result.
    Sink,
    /// `!%p`: a negated predicate source.
    NotReg(u32),
}

/// An integer multiply mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MulMode {
    Lo,
    Hi,
    Wide,
}

/// Carry handling of add/sub/mad (`.cc` sets the carry, `addc` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Carry {
    pub set: bool,
    pub use_in: bool,
}

/// An integer binary operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntOp {
    Add,
    Sub,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

/// An integer unary operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntUnOp {
    Abs,
    Neg,
    Not,
    Cnot,
    Popc,
    Clz,
    Brev,
    Bfind,
}

/// Combination of a setp result with a third predicate (`setp.lt.and …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolOp {
    And,
    Or,
    Xor,
}

/// An atomic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtomOp {
    Add,
    Min,
    Max,
    Exch,
    Cas,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

/// A shuffle mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// A vote mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

/// Instruction classes for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Int,
    Fp32,
    Fp16,
    Fp64,
    Tensor,
    Global,
    Shared,
    Local,
    Param,
    Control,
    Sync,
    Special,
    Atomic,
    Convert,
}

impl Class {
    /// Every class, in table order.
    pub const ALL: [Class; 14] = [
        Class::Int,
        Class::Fp32,
        Class::Fp16,
        Class::Fp64,
        Class::Tensor,
        Class::Global,
        Class::Shared,
        Class::Local,
        Class::Param,
        Class::Control,
        Class::Sync,
        Class::Special,
        Class::Atomic,
        Class::Convert,
    ];

    /// A short name for tables.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Int => "int",
            Class::Fp32 => "fp32",
            Class::Fp16 => "fp16/bf16",
            Class::Fp64 => "fp64",
            Class::Tensor => "mma/tensor",
            Class::Global => "ld/st global",
            Class::Shared => "ld/st shared",
            Class::Local => "ld/st local",
            Class::Param => "ld param/const",
            Class::Control => "control",
            Class::Sync => "sync/warp",
            Class::Special => "special/sfu",
            Class::Atomic => "atomic",
            Class::Convert => "convert/move",
        }
    }
}

/// A decoded operation with its modifiers.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Int {
        op: IntOp,
        ty: ScalarType,
        carry: Carry,
        sat: bool,
    },
    Mul {
        ty: ScalarType,
        mode: MulMode,
    },
    Mad {
        ty: ScalarType,
        mode: MulMode,
        carry: Carry,
    },
    Mul24 {
        ty: ScalarType,
        hi: bool,
        mad: bool,
    },
    Sad {
        ty: ScalarType,
    },
    IntUn {
        op: IntUnOp,
        ty: ScalarType,
        shift_amt: bool,
    },
    Bfe {
        ty: ScalarType,
    },
    Bfi {
        ty: ScalarType,
    },
    Prmt {
        mode: Option<PrmtMode>,
    },
    Lop3,
    Shf {
        left: bool,
        wrap: bool,
    },
    FBin {
        op: FloatBinOp,
        ty: ScalarType,
        m: FloatMods,
    },
    Fma {
        ty: ScalarType,
        m: FloatMods,
    },
    FUn {
        op: FloatUnOp,
        ty: ScalarType,
        m: FloatMods,
    },
    Copysign {
        ty: ScalarType,
    },
    Setp {
        cmp: CmpOp,
        ty: ScalarType,
        bool_op: Option<BoolOp>,
    },
    Selp {
        ty: ScalarType,
    },
    Mov {
        ty: ScalarType,
    },
    Cvt {
        dst: ScalarType,
        src: ScalarType,
        rnd: Option<Rounding>,
        ftz: bool,
        sat: bool,
        relu: bool,
    },
    /// `cvta.to.space` (`to = true`) or `cvta.space`.
    Cvta {
        to: bool,
        space: Space,
    },
    Ld {
        space: Space,
        ty: ScalarType,
        nvec: u8,
    },
    St {
        space: Space,
        ty: ScalarType,
        nvec: u8,
    },
    Atom {
        space: Space,
        op: AtomOp,
        ty: ScalarType,
        ret: bool,
    },
    CpAsync {
        size: u8,
        /// The fourth operand is an `ignore-src` predicate (true: zero-fill) rather than a `src-size`.
        ignore_src: bool,
    },
    /// `cp.async.commit_group`.
    CpAsyncCommit,
    /// `cp.async.wait_group N` (`Some(N)`: all but the newest N groups complete) or `cp.async.wait_all`.
    CpAsyncWait {
        keep: Option<u32>,
    },
    Ldmatrix {
        num: u8,
        trans: bool,
    },
    Mma {
        k: u8,
        ty: ScalarType,
    },
    Bra,
    /// Call a function (program-wide index after linking).
    Call {
        func: u32,
    },
    Ret,
    Exit,
    /// `bar.sync` / `barrier.sync`; `aligned` (every `bar`, and `barrier` with `.aligned`) requires all threads
    /// of the block to reach the same instruction.
    Bar {
        aligned: bool,
    },
    BarWarp,
    Shfl {
        mode: ShflMode,
    },
    Vote {
        mode: VoteMode,
    },
    Activemask,
    /// `redux.sync`: a warp-wide add/min/max/and/or/xor of one register.
    Redux {
        op: IntOp,
        ty: ScalarType,
    },
    /// `isspacep.space`: whether a generic address lies in that space.
    Isspacep {
        space: Space,
    },
    /// `dp4a.atype.btype`: four 8-bit products summed into a 32-bit accumulator.
    Dp4a {
        a_signed: bool,
        b_signed: bool,
    },
    /// `testp.kind.f32/f64`.
    Testp {
        kind: TestKind,
        ty: ScalarType,
    },
    Trap,
    Nop,
}

/// The property `testp` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestKind {
    Finite,
    Infinite,
    Number,
    NotANumber,
    Normal,
    Subnormal,
}

/// One instruction: guard predicate, operation and operands, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Inst {
    pub op: Op,
    /// `@%p` (false) / `@!%p` (true): the register index and whether it is negated.
    pub guard: Option<(u32, bool)>,
    pub args: Vec<Opnd>,
    pub class: Class,
    /// The line in the PTX text.
    pub line: u32,
    /// The `.loc` in force: (file index, line), 0 when unknown.
    pub loc: (u32, u32),
}
