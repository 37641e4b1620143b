//! The fast CPU path of NF4: rayon over groups of blocks, and inner loops written so that LLVM vectorizes them
//! (a branch-free threshold count per element, an integer absmax, contiguous code buffers). On x86-64 each hot
//! loop is compiled twice, plainly and for AVX-512, and picked at run time. Bit-exact with `nf4::cpu`.

use rayon::prelude::*;

use super::{
    check_blocksize, check_gemv, check_len, code_of, GemvShape, Nf4Element, Nf4Quantized, Nf4Ref, NF4_CODEBOOK,
    SCALE_FLOOR,
};
use crate::Result;

/// Elements per rayon task: large enough to amortize scheduling, small enough to balance two to 64 cores.
const TASK_ELEMS: usize = 1 << 16;
/// Codes computed into a stack buffer before packing (a multiple of every blocksize below 64 and of 2).
const CODE_CHUNK: usize = 64;

/// When set, the fast path skips its AVX-512 versions (so tests can check the portable build on any machine).
static PORTABLE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the fast path use only its portable (baseline instruction set) loops from now on, or not. Results are
/// bit-identical either way; this exists so that tests exercise both builds on an AVX-512 machine.
pub fn set_portable_only(on: bool) {
    PORTABLE_ONLY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `$body` (an expression using only inlined generic helpers) under the best instruction set available.
macro_rules! multiversion {
    ($name:ident < $($g:ident : $b:path),* > ($($arg:ident : $ty:ty),*) -> $ret:ty $body:block) => {
        fn $name<$($g: $b),*>($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic<$($g: $b),*>($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,bmi2")]
                unsafe fn wide<$($g: $b),*>($($arg: $ty),*) -> $ret {
                    generic::<$($g),*>($($arg),*)
                }
                if !PORTABLE_ONLY.load(std::sync::atomic::Ordering::Relaxed)
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("bmi2")
                {
                    // SAFETY: `wide` only enables the target features checked just above, on this very CPU.
                    return unsafe { wide::<$($g),*>($($arg),*) };
                }
            }
            generic::<$($g),*>($($arg),*)
        }
    };
}

/// Quantizes `x` to NF4 in blocks of `blocksize` on all cores; equal to `nf4::cpu::quantize`.
pub fn quantize<T: Nf4Element>(x: &[T], blocksize: usize) -> Result<Nf4Quantized> {
    let mut packed = vec![0u8; x.len().div_ceil(2)];
    let mut absmax = vec![0f32; x.len().div_ceil(blocksize.max(1))];
    quantize_into(x, blocksize, &mut packed, &mut absmax)?;
    Ok(Nf4Quantized {
        packed,
        absmax,
        len: x.len(),
        blocksize,
    })
}

/// Quantizes `x` into caller-provided buffers: `packed [x.len().div_ceil(2)]`, `absmax [x.len().div_ceil(blocksize)]`.
pub fn quantize_into<T: Nf4Element>(x: &[T], blocksize: usize, packed: &mut [u8], absmax: &mut [f32]) -> Result<()> {
    const OP: &str = "nf4::fast::quantize";
    check_blocksize(OP, blocksize)?;
    check_len(OP, "packed", packed.len(), x.len().div_ceil(2))?;
    check_len(OP, "absmax", absmax.len(), x.len().div_ceil(blocksize))?;
    let blocks_per_task = (TASK_ELEMS / blocksize).max(1);
    let task = blocks_per_task * blocksize;
    x.par_chunks(task)
        .zip(packed.par_chunks_mut(task / 2))
        .zip(absmax.par_chunks_mut(blocks_per_task))
        .for_each(|((x, p), a)| quantize_task(x, blocksize, p, a));
    Ok(())
}

multiversion! {
quantize_task<T: Nf4Element>(x: &[T], blocksize: usize, packed: &mut [u8], absmax: &mut [f32]) -> () {
    for ((xb, pb), am_out) in x.chunks(blocksize).zip(packed.chunks_mut(blocksize / 2)).zip(absmax.iter_mut()) {
        *am_out = quantize_block(xb, pb, xb.len() == blocksize);
    }
}
}

/// Quantizes one block into `packed [xb.len().div_ceil(2)]` and returns the absmax to store.
#[inline(always)]
fn quantize_block<T: Nf4Element>(xb: &[T], packed: &mut [u8], full: bool) -> f32 {
    // For non-NaN floats the order of |x| equals the order of its bits as integers; a NaN wins, as in torch.
    let mut m = 0u32;
    for v in xb {
        m = m.max(v.to_f32().to_bits() & 0x7fff_ffff);
    }
    let am = f32::from_bits(m);
    let floored = am.max(SCALE_FLOOR);
    if !full {
        // The short last block: bitsandbytes divides (rare, so the plain twin loop is fine here).
        let mut codes = [0u8; 2];
        for (pi, pair) in xb.chunks(2).enumerate() {
            codes[1] = super::ZERO_CODE;
            for (k, v) in pair.iter().enumerate() {
                codes[k] = code_of(v.to_f32() / floored);
            }
            packed[pi] = (codes[0] << 4) | codes[1];
        }
        return floored;
    }
    let inv = 1.0 / floored;
    let mut codes = [0u8; CODE_CHUNK];
    for (xc, pc) in xb.chunks(CODE_CHUNK).zip(packed.chunks_mut(CODE_CHUNK / 2)) {
        let codes = &mut codes[..xc.len()];
        for (c, v) in codes.iter_mut().zip(xc) {
            *c = code_of(v.to_f32() * inv);
        }
        for (p, c) in pc.iter_mut().zip(codes.chunks_exact(2)) {
            *p = (c[0] << 4) | c[1];
        }
    }
    am
}

/// Each byte's two dequantized codebook values, high nibble first.
static PAIRS: [[f32; 2]; 256] = {
    let mut t = [[0f32; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [NF4_CODEBOOK[b >> 4], NF4_CODEBOOK[b & 15]];
        b += 1;
    }
    t
};

/// Dequantizes `w` into `out [w.len]` on all cores; equal to `nf4::cpu::dequantize`.
pub fn dequantize<T: Nf4Element>(w: Nf4Ref<'_>, out: &mut [T]) -> Result<()> {
    const OP: &str = "nf4::fast::dequantize";
    w.validate(OP)?;
    check_len(OP, "out", out.len(), w.len)?;
    let task = (TASK_ELEMS / w.blocksize).max(1) * w.blocksize;
    out.par_chunks_mut(task)
        .enumerate()
        .for_each(|(t, o)| dequantize_span(w, t * task, o));
    Ok(())
}

/// Dequantizes elements `start .. start + out.len()` of `w` into `out` on the calling thread (the building block
/// of the fused matmul, which dequantizes one cache-sized tile at a time).
pub fn dequantize_range<T: Nf4Element>(w: Nf4Ref<'_>, start: usize, out: &mut [T]) -> Result<()> {
    const OP: &str = "nf4::fast::dequantize_range";
    w.validate(OP)?;
    if start.checked_add(out.len()).is_none_or(|end| end > w.len) {
        return Err(super::shape_err(
            OP,
            format!("range {start}..+{} exceeds {} elements", out.len(), w.len),
        ));
    }
    dequantize_span(w, start, out);
    Ok(())
}

multiversion! {
dequantize_span<T: Nf4Element>(w: Nf4Ref<'_>, start: usize, out: &mut [T]) -> () {
    let end = start + out.len();
    let mut i = start;
    let mut rest = out;
    while i < end {
        let b = i / w.blocksize;
        let seg_end = ((b + 1) * w.blocksize).min(end);
        let (seg, tail) = std::mem::take(&mut rest).split_at_mut(seg_end - i);
        dequantize_segment(w.packed, w.absmax[b], i, seg);
        i = seg_end;
        rest = tail;
    }
}
}

/// Dequantizes elements `i .. i + out.len()`, all in one block of scale `s`.
#[inline(always)]
fn dequantize_segment<T: Nf4Element>(packed: &[u8], s: f32, mut i: usize, mut out: &mut [T]) {
    if i % 2 == 1 && !out.is_empty() {
        out[0] = T::from_f32(NF4_CODEBOOK[(packed[i / 2] & 15) as usize] * s);
        out = &mut out[1..];
        i += 1;
    }
    let pairs = out.len() / 2;
    let bytes = &packed[i / 2..i / 2 + pairs];
    let (body, tail) = out.split_at_mut(pairs * 2);
    for (o, &byte) in body.chunks_exact_mut(2).zip(bytes) {
        let p = PAIRS[byte as usize];
        o[0] = T::from_f32(p[0] * s);
        o[1] = T::from_f32(p[1] * s);
    }
    if let Some(o) = tail.first_mut() {
        *o = T::from_f32(NF4_CODEBOOK[(packed[(i + pairs * 2) / 2] >> 4) as usize] * s);
    }
}

/// `y = Ŵ · x` on all cores: rows in parallel, each row dequantized into a buffer and dotted in f32 lanes.
pub fn gemv(w: Nf4Ref<'_>, shape: GemvShape, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_gemv("nf4::fast::gemv", &w, shape, x.len(), y.len())?;
    let rows_per_task = (TASK_ELEMS / shape.cols.max(1)).max(1);
    y.par_chunks_mut(rows_per_task).enumerate().for_each(|(t, ys)| {
        let mut row = vec![0f32; shape.cols];
        for (k, yr) in ys.iter_mut().enumerate() {
            let r = t * rows_per_task + k;
            dequantize_span(w, r * shape.cols, &mut row);
            *yr = dot(&row, x);
        }
    });
    Ok(())
}

multiversion! {
dot<>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, at) = a.split_at(a.len() / 16 * 16);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}
}
