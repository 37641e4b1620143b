//! ggml tensor types and the dequantizers for the ones rankfold reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//!
//! Block layouts (ggml-common.h), all little-endian, 32 elements per quantized block:
//! - Q8_0, 34 bytes: f16 scale `d`, then 32 × i8 `q`; element i is `q[i] · d`.
//! - Q4_0, 18 bytes: f16 `d`, then 16 bytes of nibbles; element i < 16 is the low nibble of byte i, element
//!   16 + i the high nibble of byte i; each is `(nibble − 8) · d`.
//! - Q4_1, 20 bytes: f16 `d`, f16 min `m`, then the nibbles as in Q4_0; each element is `nibble · d + m`.
//!
//! The arithmetic is done in f32 in the same order as ggml's reference (and gguf-py's numpy) dequantizers, so
//! the results agree bit for bit.

use half::f16;

/// A ggml tensor type. The ones with a known block size and byte size can be range-checked; only the six
/// listed in the module docs can be dequantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Any other type id (K-quants, IQ types, integer types, ...), kept so the file can still be listed.
    Other(u32),
}

impl GgmlType {
    /// The type for a stored id.
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The stored type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)` where known (ggml's type traits table).
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self.id() {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    /// Whether `dequantize_into` handles this type.
    pub fn can_dequantize(self) -> bool {
        !matches!(self, GgmlType::Other(_))
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgmlType::Other(id) => write!(f, "ggml type {id}"),
            t => write!(f, "{t:?}"),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`; the lengths must match exactly.
pub(crate) fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (bs, ts) = ty
        .block_layout()
        .filter(|_| ty.can_dequantize())
        .ok_or_else(|| {
            format!("{ty} cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
        })?;
    if out.len() % bs != 0 || bytes.len() != out.len() / bs * ts {
        return Err(format!(
            "{} bytes of {ty} do not hold {} elements (blocks of {bs} elements in {ts} bytes)",
            bytes.len(),
            out.len()
        ));
    }
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (x, &q) in o.iter_mut().zip(&b[2..]) {
                    *x = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                let (lo, hi) = o.split_at_mut(16);
                for (i, &q) in b[2..].iter().enumerate() {
                    lo[i] = d * f32::from((q & 0x0f) as i8 - 8);
                    hi[i] = d * f32::from((q >> 4) as i8 - 8);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let (lo, hi) = o.split_at_mut(16);
                for (i, &q) in b[4..].iter().enumerate() {
                    lo[i] = d * f32::from(q & 0x0f) + m;
                    hi[i] = d * f32::from(q >> 4) + m;
                }
            }
        }
        GgmlType::Other(_) => unreachable!("filtered by can_dequantize above"),
    }
    Ok(())
}
