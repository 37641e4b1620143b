//! Double quantization of NF4 block scales: the mean offset, bitsandbytes' blockwise 8-bit quantizer with the
//! signed dynamic map (`crate::blockwise8`, its 65 536-bin lookup table reproduced exactly), and the inverse.

use super::{check_len, shape_err, DYNAMIC_MAP_SIGNED_BITS, NESTED_BLOCKSIZE};
use crate::blockwise8::DynamicMap;
use crate::Result;

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

/// torch's `at::internal::GRAIN_SIZE`: a reduction of fewer elements runs on one thread whatever the thread count.
const TORCH_GRAIN: usize = 32_768;
/// Lanes of the `Vectorized<float>` torch's f32 sum kernel adds with (its AVX2 and AVX-512 builds give the same
/// sums: both were checked against torch 2.15 with `ATEN_CPU_CAPABILITY` set to each).
const TORCH_LANES: usize = 8;

/// The intra-op thread count whose summation order [`mean_offset`] and [`double_quantize`] reproduce: one thread,
/// torch's order under `torch.set_num_threads(1)`, and under any thread count below 32 768 blocks.
pub const DEFAULT_TORCH_THREADS: usize = 1;

/// `offset = mean(absmax)` as bitsandbytes' CPU path computes it (`torch.mean` in f32), in the summation order
/// of [`DEFAULT_TORCH_THREADS`]; see [`torch_mean`].
pub fn mean_offset(absmax: &[f32]) -> f32 {
    torch_mean(absmax, DEFAULT_TORCH_THREADS)
}

/// torch's f32 `mean` of a contiguous vector, bit for bit, as computed on the CPU with `threads` intra-op threads
/// (`torch.get_num_threads()`; 0 counts as 1): the sum of [`torch_sum`] divided by the count in f32. 0 for an
/// empty slice (torch gives NaN; an empty tensor has no block scales to offset).
pub fn torch_mean(x: &[f32], threads: usize) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    torch_sum(x, threads) / x.len() as f32
}

/// torch's f32 `sum` of a contiguous vector with `threads` intra-op threads (ATen's `parallel_reduce`).
///
/// Below 32 768 elements, or on one thread, it is one serial cascade sum (ATen's `cascade_sum`: lanes of 8, four
/// accumulators, four cascade levels). Otherwise torch's two-pass reduction: `tasks = min(threads, ceil(n / 32768))`
/// chunks of `ceil(n / tasks)` elements are summed serially into a buffer of `threads` zeros, one slot per task,
/// and the buffer is then summed by the same kernel.
/// The result therefore depends on the thread count above the grain size, as torch's does.
pub fn torch_sum(x: &[f32], threads: usize) -> f32 {
    let threads = threads.max(1);
    let n = x.len();
    if n < TORCH_GRAIN || threads == 1 {
        return serial_sum(x);
    }
    let tasks = threads.min(n.div_ceil(TORCH_GRAIN));
    let chunk = n.div_ceil(tasks);
    let mut buffer = vec![0f32; threads];
    for (slot, part) in buffer.iter_mut().zip(x.chunks(chunk)) {
        *slot += serial_sum(part);
    }
    serial_sum(&buffer)
}

/// torch's single-threaded f32 `sum` of a contiguous vector (ATen's `cascade_sum`). From 8 elements up: lanes of
/// 8 (`vectorized_inner_sum`), summed by four independent accumulators (its `ilp_factor`) through a four-level
/// cascade ([`multi_row_sum`]); then the scalar tail, then the 8 lanes, are added one by one to a zero. Below 8
/// elements the same `row_sum` runs on single scalars (`scalar_inner_sum`).
fn serial_sum(x: &[f32]) -> f32 {
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

/// ATen's `utils::CeilLog2`: 1 up to 2, else `floor(log2(x − 1)) + 1`.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// ATen's `multi_row_sum`: four cascade levels of `2^p` rows each, `p = max(4, ceil_log2(rows) / 4)`. Level 0
/// adds `2^p` rows, then passes its sum up to level 1 and restarts; level `j` passes up whenever the row index
/// is a multiple of `2^(p·(j+1))`. A row is four groups of `W` lanes, one per accumulator.
fn multi_row_sum<const W: usize>(x: &[f32], rows: usize) -> [[f32; W]; 4] {
    const LEVELS: usize = 4;
    let power = (ceil_log2(rows) / LEVELS).max(4);
    let step = 1usize << power;
    let mut acc = [[[0f32; W]; 4]; LEVELS];
    let add_row = |acc: &mut [[f32; W]; 4], row: usize| {
        for (a, group) in acc.iter_mut().zip(x[row * 4 * W..(row + 1) * 4 * W].chunks_exact(W)) {
            add_lanes(a, group);
        }
    };
    let mut i = 0;
    while i + step <= rows {
        for _ in 0..step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, b) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add_lanes(a, b);
                *b = [0.0; W];
            }
            if i & ((step - 1) << (j * power)) != 0 {
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

/// Double-quantizes NF4 block scales with `offset = mean_offset(absmax)` (torch's order on one thread).
pub fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    double_quantize_with_offset(absmax, mean_offset(absmax))
}

/// Double-quantizes NF4 block scales as bitsandbytes' CPU path does under `torch.set_num_threads(threads)`:
/// the offset is [`torch_mean`] with that thread count (it matters from 32 768 blocks up).
pub fn double_quantize_threads(absmax: &[f32], threads: usize) -> DoubleQuant {
    double_quantize_with_offset(absmax, torch_mean(absmax, threads))
}

/// Double-quantizes NF4 block scales around a given offset: `absmax − offset` (f32) in blocks of 256, each block
/// scaled by `1/max|·|` and looked up in bitsandbytes' table; an all-zero block gets codes 0 and scale 0.
pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> DoubleQuant {
    let map = DynamicMap::signed();
    let n = absmax.len();
    let mut codes = vec![0u8; n];
    let mut nested_absmax = Vec::with_capacity(n.div_ceil(NESTED_BLOCKSIZE));
    let mut shifted = Vec::with_capacity(NESTED_BLOCKSIZE);
    for (block, out) in absmax.chunks(NESTED_BLOCKSIZE).zip(codes.chunks_mut(NESTED_BLOCKSIZE)) {
        shifted.clear();
        shifted.extend(block.iter().map(|&a| a - offset));
        nested_absmax.push(crate::blockwise8::quantize_block(&shifted, map, out));
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
