//! Double quantization of NF4 block scales: the mean offset, bitsandbytes' blockwise 8-bit quantizer with the
//! signed dynamic map (its 65 536-bin lookup table reproduced exactly), and the inverse.

use std::sync::OnceLock;

use super::{check_len, shape_err, DYNAMIC_MAP_SIGNED_BITS, NESTED_BLOCKSIZE};
use crate::Result;

/// Bins of bitsandbytes' CPU 8-bit quantization table over `[-1, 1]`.
const LUT_SIZE: usize = 65_536;

/// Double-quantized block scales.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// `mean(absmax)`, subtracted before the 8-bit quantization.
    pub offset: f32,
    /// One 8-bit code per NF4 block: `[nblocks]`.
    pub codes: Vec<u8>,
    /// One f32 scale per 256 codes: `[nblocks.div_ceil(256)]`.
    pub nested_absmax: Vec<f32>,
}

/// The signed dynamic map as f32 values.
pub fn dynamic_map_signed() -> [f32; 256] {
    DYNAMIC_MAP_SIGNED_BITS.map(f32::from_bits)
}

/// The quantization table: bin `i` stands for `-1 + 2i/65535` (f32 arithmetic) and holds the index of the first
/// code whose upper midpoint `0.5·(c[j] + c[j+1])` is not below it.
fn lut() -> &'static [u8; LUT_SIZE] {
    static LUT: OnceLock<Box<[u8; LUT_SIZE]>> = OnceLock::new();
    LUT.get_or_init(|| {
        let code = dynamic_map_signed();
        let mids: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = Box::new([0u8; LUT_SIZE]);
        let mut j = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
            while j < mids.len() && mids[j] < val {
                j += 1;
            }
            *slot = j as u8;
        }
        lut
    })
}

/// The table bin of a scaled value: `trunc(((v + 1)·0.5)·65535 + 0.5)` after clamping `v` to `[-1, 1]`, each
/// step rounded to f32 (bitsandbytes' AVX2 sequence, no fused multiply-add).
#[inline]
fn lut_index(v: f32) -> usize {
    let v = v.clamp(-1.0, 1.0);
    let t = ((v + 1.0) * 0.5) * (LUT_SIZE - 1) as f32 + 0.5;
    t as usize
}

/// Below this many elements torch reduces on one thread (its `GRAIN_SIZE`), in the order `torch_serial_sum`
/// reproduces.
const TORCH_GRAIN: usize = 32_768;
/// Lanes of torch's `Vectorized<float>` in its sum kernel (what its AVX2 and AVX-512 builds both sum with).
const TORCH_LANES: usize = 8;

/// `offset = mean(absmax)` as bitsandbytes computes it, `torch.mean` in f32. Below 32 768 blocks torch sums on
/// one thread and this reproduces its summation order exactly (`torch_serial_sum`), then divides in f32. Above,
/// torch splits the sum across its threads, so the result depends on the thread count of whoever quantized; there
/// this takes the f64 sum divided by the count, rounded once, which lies within an ulp of torch's result in
/// practice. 0 for an empty slice.
pub fn mean_offset(absmax: &[f32]) -> f32 {
    let n = absmax.len();
    if n == 0 {
        0.0
    } else if n < TORCH_GRAIN {
        torch_serial_sum(absmax) / n as f32
    } else {
        (absmax.iter().map(|&a| a as f64).sum::<f64>() / n as f64) as f32
    }
}

/// torch's single-threaded f32 `sum` of a contiguous vector (ATen's `cascade_sum`): lanes of 8, four independent
/// accumulators (its `ilp_factor`), and four cascade levels that each take 16 rows before passing the partial
/// sum up; the leftover lanes and scalars are added at the end, lane by lane. Below 8 elements the same cascade
/// runs on scalars.
fn torch_serial_sum(x: &[f32]) -> f32 {
    if x.len() < TORCH_LANES {
        return row_sum::<1>(x, x.len())[0];
    }
    let vectors = x.len() / TORCH_LANES;
    let lanes = row_sum::<TORCH_LANES>(x, vectors);
    let mut total = 0f32;
    for &v in &x[vectors * TORCH_LANES..] {
        total += v;
    }
    for l in lanes {
        total += l;
    }
    total
}

/// ATen's `row_sum`: the first `items` groups of `W` lanes of `x` summed by four accumulators plus the cascade.
fn row_sum<const W: usize>(x: &[f32], items: usize) -> [f32; W] {
    const ILP: usize = 4;
    let rows = items / ILP;
    let [mut total, rest @ ..] = multi_row_sum::<W>(x, rows);
    for item in x[rows * ILP * W..items * W].chunks_exact(W) {
        add_lanes(&mut total, item);
    }
    for r in &rest {
        add_lanes(&mut total, r);
    }
    total
}

/// `dst[l] += src[l]` for every lane, in f32.
fn add_lanes<const W: usize>(dst: &mut [f32; W], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// ATen's `multi_row_sum` with four levels of 2^4 rows (the level size for fewer than 2^20 rows, which covers
/// every serial sum). A row is four groups of `W` lanes, one per accumulator.
fn multi_row_sum<const W: usize>(x: &[f32], rows: usize) -> [[f32; W]; 4] {
    const LEVELS: usize = 4;
    const POWER: usize = 4;
    const STEP: usize = 1 << POWER;
    let mut acc = [[[0f32; W]; 4]; LEVELS];
    let add_row = |acc: &mut [[f32; W]; 4], row: usize| {
        for (a, group) in acc.iter_mut().zip(x[row * 4 * W..(row + 1) * 4 * W].chunks_exact(W)) {
            add_lanes(a, group);
        }
    };
    let mut i = 0;
    while i + STEP <= rows {
        for _ in 0..STEP {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, b) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add_lanes(a, b);
                *b = [0.0; W];
            }
            if i & ((STEP - 1) << (j * POWER)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        add_row(&mut acc[0], i);
        i += 1;
    }
    let [mut first, rest @ ..] = acc;
    for level in &rest {
        for (a, b) in first.iter_mut().zip(level) {
            add_lanes(a, b);
        }
    }
    first
}

/// Double-quantizes NF4 block scales with `offset = mean_offset(absmax)`.
pub fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    double_quantize_with_offset(absmax, mean_offset(absmax))
}

/// Double-quantizes NF4 block scales around a given offset: `absmax − offset` (f32) in blocks of 256, each block
/// scaled by `1/max|·|` and looked up in bitsandbytes' table; an all-zero block gets codes 0 and scale 0.
pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> DoubleQuant {
    let lut = lut();
    let n = absmax.len();
    let mut codes = vec![0u8; n];
    let mut nested_absmax = Vec::with_capacity(n.div_ceil(NESTED_BLOCKSIZE));
    for (b, (block, out)) in absmax
        .chunks(NESTED_BLOCKSIZE)
        .zip(codes.chunks_mut(NESTED_BLOCKSIZE))
        .enumerate()
    {
        // bitsandbytes ignores NaN lanes when taking the block maximum.
        let am = block
            .iter()
            .map(|&a| (a - offset).abs())
            .filter(|a| !a.is_nan())
            .fold(0f32, f32::max);
        nested_absmax.push(am);
        debug_assert_eq!(nested_absmax.len(), b + 1);
        if am == 0.0 {
            continue;
        }
        let inv = 1.0 / am;
        for (o, &a) in out.iter_mut().zip(block) {
            *o = lut[lut_index((a - offset) * inv)];
        }
    }
    DoubleQuant {
        offset,
        codes,
        nested_absmax,
    }
}

/// Reconstructs the f32 block scales: `code[q] · nested_absmax[i / 256] + offset`, two f32 roundings.
pub fn double_dequantize(dq: &DoubleQuant, out: &mut [f32]) -> Result<()> {
    check_len("nf4::double_dequantize", "out", out.len(), dq.codes.len())?;
    double_dequantize_range(dq, 0, out)
}

/// Reconstructs block scales `first .. first + out.len()` only (what one tile of a fused matmul needs).
pub fn double_dequantize_range(dq: &DoubleQuant, first: usize, out: &mut [f32]) -> Result<()> {
    const OP: &str = "nf4::double_dequantize";
    if dq.nested_absmax.len() != dq.codes.len().div_ceil(NESTED_BLOCKSIZE) {
        return Err(shape_err(
            OP,
            format!(
                "{} codes need {} nested absmax values, got {}",
                dq.codes.len(),
                dq.codes.len().div_ceil(NESTED_BLOCKSIZE),
                dq.nested_absmax.len()
            ),
        ));
    }
    let codes = first
        .checked_add(out.len())
        .and_then(|end| dq.codes.get(first..end))
        .ok_or_else(|| {
            shape_err(
                OP,
                format!("scales {first}..+{} exceed {} blocks", out.len(), dq.codes.len()),
            )
        })?;
    let code = dynamic_map_signed();
    for (i, (o, &q)) in out.iter_mut().zip(codes).enumerate() {
        let scaled = code[q as usize] * dq.nested_absmax[(first + i) / NESTED_BLOCKSIZE];
        *o = scaled + dq.offset;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_monotone_and_spans_the_map() {
        let l = lut();
        assert_eq!(l[0], 0);
        assert_eq!(l[LUT_SIZE - 1], 255);
        assert!(l.windows(2).all(|w| w[0] <= w[1]));
        let code = dynamic_map_signed();
        assert!(code.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(code[255], 1.0);
    }

    #[test]
    fn round_trip_error_is_small() {
        let absmax: Vec<f32> = (0..700).map(|i| 0.5 + ((i * 37) % 101) as f32 / 50.0).collect();
        let dq = double_quantize(&absmax);
        let mut back = vec![0f32; absmax.len()];
        double_dequantize(&dq, &mut back).unwrap();
        for (a, b) in absmax.iter().zip(&back) {
            assert!(
                (a - b).abs() <= 0.02 * dq.nested_absmax.iter().fold(0f32, |m, &v| m.max(v)),
                "{a} vs {b}"
            );
        }
    }
}
