//! PTX scalar types and rounding modifiers, shared by the parser, the executor and the numeric semantics.

/// A PTX fundamental type as written in an instruction suffix (`.u32`, `.f16x2`, `.pred` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    Pred,
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    Tf32,
    F32,
    F64,
}

impl ScalarType {
    /// Parses a suffix without its dot, e.g. `"u32"`.
    pub fn parse(s: &str) -> Option<Self> {
        use ScalarType::*;
        Some(match s {
            "pred" => Pred,
            "b8" => B8,
            "b16" => B16,
            "b32" => B32,
            "b64" => B64,
            "b128" => B128,
            "u8" => U8,
            "u16" => U16,
            "u32" => U32,
            "u64" => U64,
            "s8" => S8,
            "s16" => S16,
            "s32" => S32,
            "s64" => S64,
            "f16" => F16,
            "f16x2" => F16x2,
            "bf16" => Bf16,
            "bf16x2" => Bf16x2,
            "tf32" => Tf32,
            "f32" => F32,
            "f64" => F64,
            _ => return None,
        })
    }

    /// Size in bytes (a predicate counts as 1).
    pub const fn size(self) -> usize {
        use ScalarType::*;
        match self {
            Pred | B8 | U8 | S8 => 1,
            B16 | U16 | S16 | F16 | Bf16 => 2,
            B32 | U32 | S32 | F32 | F16x2 | Bf16x2 | Tf32 => 4,
            B64 | U64 | S64 | F64 => 8,
            B128 => 16,
        }
    }

    /// Size in bits.
    pub const fn bits(self) -> u32 {
        self.size() as u32 * 8
    }

    /// Whether it is a signed integer type.
    pub const fn is_signed(self) -> bool {
        matches!(self, ScalarType::S8 | ScalarType::S16 | ScalarType::S32 | ScalarType::S64)
    }

    /// Whether it is a floating-point type (packed forms included).
    pub const fn is_float(self) -> bool {
        use ScalarType::*;
        matches!(self, F16 | F16x2 | Bf16 | Bf16x2 | Tf32 | F32 | F64)
    }
}

/// A rounding modifier. `Rn/Rz/Rm/Rp` round floating results (`.rn` to nearest even, `.rz` toward zero, `.rm`
/// toward −∞, `.rp` toward +∞); `Rna` is `.rna` (nearest, ties away, used by cvt to tf32); `Rni/Rzi/Rmi/Rpi`
/// round to an integral value (float→int cvt, or float→float cvt to an integer value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    Rn,
    Rz,
    Rm,
    Rp,
    Rna,
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

impl Rounding {
    /// Parses a modifier without its dot, e.g. `"rn"`.
    pub fn parse(s: &str) -> Option<Self> {
        use Rounding::*;
        Some(match s {
            "rn" => Rn,
            "rz" => Rz,
            "rm" => Rm,
            "rp" => Rp,
            "rna" => Rna,
            "rni" => Rni,
            "rzi" => Rzi,
            "rmi" => Rmi,
            "rpi" => Rpi,
            _ => return None,
        })
    }
}
