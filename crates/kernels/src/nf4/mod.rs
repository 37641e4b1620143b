//! NF4 (bitsandbytes' 4-bit NormalFloat): blockwise quantize / dequantize, double quantization of the block
//! scales, and an NF4 matrix–vector product, bit-exact with bitsandbytes' CPU path.
//!
//! Format (docs/reference.md, "NF4"). The row-major flattened tensor of `n` elements is cut into blocks of `blocksize`
//! consecutive elements (a power of two in 32..=4096; the last block may be short). Per block
//! `absmax = max|x|` in f32; each element is scaled by `x · (1/absmax)` (a reciprocal, then a multiply) and
//! mapped to the nibble whose [`NF4_CODEBOOK`] value is nearest, decided by counting the [`NF4_THRESHOLDS`]
//! (the f32 midpoints of neighbouring codebook values) that the scaled value exceeds strictly — so a value on a
//! midpoint takes the lower code, as bitsandbytes' comparison tree and `torch.bucketize` do. Two nibbles per
//! byte, the first element in the high nibble. Dequantized: `codebook[nibble] · absmax` in f32, then rounded
//! (to nearest even) to the output dtype.
//!
//! What bitsandbytes 0.50's CPU path does at the edges, and rankfold therefore does too:
//! - an all-zero block stores `absmax = 0` and the zero code `0b0111` for every element (bnb's CUDA kernel would
//!   compute 0·∞ = NaN and store `0b0000`; both dequantize to 0);
//! - the last block, when short, is scaled by a true division `x / max(absmax, 1e-38)` instead of the
//!   reciprocal-multiply, and stores the clamped absmax, so an all-zero short last block stores `1e-38`;
//! - an odd element count pads the last low nibble with the code of 0.0, `0b0111` (the CUDA kernel pads with the
//!   nibble 0; the CPU path quantizes a padding zero).
//!
//! Double quantization ([`double_quantize`]): `offset = mean(absmax)`, and `absmax − offset` is quantized in
//! blocks of 256 with bitsandbytes' signed 8-bit dynamic map ([`DYNAMIC_MAP_SIGNED_BITS`]), reproducing its CPU
//! quantizer, which looks the scaled value up in a 65 536-bin table rather than searching for the exact nearest
//! code. Reconstruction: `absmax = code[q] · nested_absmax[b] + offset`, two f32 roundings. The offset is torch's
//! f32 mean, reproduced bit for bit ([`torch_mean`]: its cascade summation order, and from 32 768 blocks up its
//! split of the sum across intra-op threads, so the offset bitsandbytes writes there depends on
//! `torch.get_num_threads()`). [`double_quantize`] uses torch's one-thread order ([`DEFAULT_TORCH_THREADS`]);
//! [`double_quantize_threads`] takes the thread count of the run to match.
//!
//! Two implementations: [`cpu`] is the plain-loop twin (the reference of the tests and of the CUDA kernels) and
//! [`fast`] is the multi-threaded path whose inner loops vectorize; they agree bit for bit.

pub mod cpu;
mod dq;
mod dynamic_map;
pub mod fast;
pub mod launch;

pub use dq::{
    double_dequantize, double_dequantize_range, double_quantize, double_quantize_threads, double_quantize_with_offset,
    dynamic_map_signed, mean_offset, torch_mean, torch_sum, DoubleQuant, DEFAULT_TORCH_THREADS,
};
pub use dynamic_map::DYNAMIC_MAP_SIGNED_BITS;

use crate::{Error, Result};

/// The 16 NF4 code values, index `0b0000 → 0b1111` (QLoRA, Dettmers et al. 2023; bitsandbytes' table).
// The literals are the published f64 digits; each rounds to the f32 bitsandbytes uses (checked against its table).
#[allow(clippy::excessive_precision)]
pub const NF4_CODEBOOK: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The 15 decision thresholds: `(NF4_CODEBOOK[i] + NF4_CODEBOOK[i + 1]) / 2` in f32 (the halving is exact,
/// so this is the true midpoint rounded once). A scaled value `v` gets the code `#{i : v > NF4_THRESHOLDS[i]}`.
pub const NF4_THRESHOLDS: [f32; 15] = {
    let mut t = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        t[i] = (NF4_CODEBOOK[i] + NF4_CODEBOOK[i + 1]) * 0.5;
        i += 1;
    }
    t
};

/// The code of 0.0 (`0b0111`): what an all-zero block and an odd tensor's padding nibble hold.
pub const ZERO_CODE: u8 = 7;

/// The smallest and largest block sizes bitsandbytes accepts (all powers of two in between are allowed).
pub const MIN_BLOCKSIZE: usize = 32;
/// See [`MIN_BLOCKSIZE`].
pub const MAX_BLOCKSIZE: usize = 4096;
/// The block size of the second-level (double) quantization of the block scales.
pub const NESTED_BLOCKSIZE: usize = 256;
/// The floor bitsandbytes puts under a block's absmax before scaling by it (`clamp(min=1e-38)`, an f32 subnormal).
pub const SCALE_FLOOR: f32 = 1e-38;

/// An element type NF4 reads from and writes to: f32, f16 or bf16 (through `half`).
pub trait Nf4Element: Copy + Send + Sync + 'static {
    /// The dtype's name, for messages: "f32", "f16", "bf16".
    const NAME: &'static str;
    /// Widens exactly to f32.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type, to nearest even.
    fn from_f32(v: f32) -> Self;
}

impl Nf4Element for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Nf4Element for half::f16 {
    const NAME: &'static str = "f16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

impl Nf4Element for half::bf16 {
    const NAME: &'static str = "bf16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    /// Round to nearest even on the bits, as `half::bf16::from_f32` does (a NaN stays a quiet NaN), written
    /// branch-free so that the dequantize loops vectorize.
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        let b = v.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = ((b >> 16) as u16) | 0x0040;
        half::bf16::from_bits(if v.is_nan() { nan } else { rounded })
    }
}

/// A tensor of `len` elements quantized to NF4 with single-level (f32) block scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Quantized {
    /// Two codes per byte, first element in the high nibble: `[len.div_ceil(2)]`.
    pub packed: Vec<u8>,
    /// One f32 scale per block: `[len.div_ceil(blocksize)]`.
    pub absmax: Vec<f32>,
    /// The number of quantized elements.
    pub len: usize,
    /// Elements per block.
    pub blocksize: usize,
}

impl Nf4Quantized {
    /// A borrowed view for the dequantize / GEMV functions.
    pub fn view(&self) -> Nf4Ref<'_> {
        Nf4Ref {
            packed: &self.packed,
            absmax: &self.absmax,
            len: self.len,
            blocksize: self.blocksize,
        }
    }
}

/// Borrowed NF4 data: packed codes and f32 block scales (double-quantized scales are expanded first with
/// [`double_dequantize`]).
#[derive(Debug, Clone, Copy)]
pub struct Nf4Ref<'a> {
    /// `[len.div_ceil(2)]`, first element in the high nibble.
    pub packed: &'a [u8],
    /// `[len.div_ceil(blocksize)]`.
    pub absmax: &'a [f32],
    /// The number of elements.
    pub len: usize,
    /// Elements per block.
    pub blocksize: usize,
}

impl Nf4Ref<'_> {
    /// Checks that the blocksize is valid and the buffers hold exactly what `len` needs.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        check_blocksize(op, self.blocksize)?;
        if self.packed.len() != self.len.div_ceil(2) {
            return Err(shape_err(
                op,
                format!(
                    "{} elements need {} packed bytes, got {}",
                    self.len,
                    self.len.div_ceil(2),
                    self.packed.len()
                ),
            ));
        }
        let nb = self.len.div_ceil(self.blocksize);
        if self.absmax.len() != nb {
            return Err(shape_err(
                op,
                format!(
                    "{} elements in blocks of {} need {nb} absmax values, got {}",
                    self.len,
                    self.blocksize,
                    self.absmax.len()
                ),
            ));
        }
        Ok(())
    }
}

/// The shape of an NF4 matrix–vector product `y = Ŵ · x`: `Ŵ [rows, cols]` row-major (flattened into blocks
/// across row ends, as bitsandbytes does), `x [cols]`, `y [rows]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvShape {
    /// Output features (rows of the weight).
    pub rows: usize,
    /// Input features (columns of the weight).
    pub cols: usize,
}

/// Fails unless `blocksize` is a power of two in `MIN_BLOCKSIZE..=MAX_BLOCKSIZE`.
pub fn check_blocksize(op: &'static str, blocksize: usize) -> Result<()> {
    if !blocksize.is_power_of_two() || !(MIN_BLOCKSIZE..=MAX_BLOCKSIZE).contains(&blocksize) {
        return Err(shape_err(
            op,
            format!("blocksize {blocksize} is not a power of two in {MIN_BLOCKSIZE}..={MAX_BLOCKSIZE}"),
        ));
    }
    Ok(())
}

pub(crate) fn shape_err(op: &'static str, msg: String) -> Error {
    Error::Shape { op, msg }
}

pub(crate) fn check_gemv(op: &'static str, w: &Nf4Ref<'_>, shape: GemvShape, x: usize, y: usize) -> Result<()> {
    w.validate(op)?;
    let n = shape
        .rows
        .checked_mul(shape.cols)
        .ok_or_else(|| shape_err(op, format!("{shape:?} overflows")))?;
    if n != w.len {
        return Err(shape_err(
            op,
            format!("weight holds {} elements, {shape:?} needs {n}", w.len),
        ));
    }
    if x != shape.cols || y != shape.rows {
        return Err(shape_err(
            op,
            format!("x [{x}] and y [{y}] do not fit a weight of {shape:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_len(op: &'static str, what: &str, have: usize, need: usize) -> Result<()> {
    if have != need {
        return Err(shape_err(op, format!("{what} holds {have} elements, expected {need}")));
    }
    Ok(())
}

/// The NF4 code of one scaled value: the number of thresholds it exceeds strictly.
#[inline(always)]
pub fn code_of(v: f32) -> u8 {
    let mut c = 0u8;
    for t in NF4_THRESHOLDS {
        c += (v > t) as u8;
    }
    c
}
