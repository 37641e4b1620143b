//! The CPU twin of the NF4 kernels: plain loops, one element at a time, the reference for the fast path, the
//! CUDA kernels and the tests. See the module docs of `nf4` for the exact rules it follows.

use super::{
    check_blocksize, check_gemv, check_len, code_of, GemvShape, Nf4Element, Nf4Quantized, Nf4Ref, NF4_CODEBOOK,
    SCALE_FLOOR, ZERO_CODE,
};
use crate::Result;

/// The absmax of a block as torch computes it: the largest |x|, NaN if any element is NaN.
pub(crate) fn block_absmax(xs: impl Iterator<Item = f32>) -> f32 {
    let mut m = 0f32;
    for v in xs {
        let a = v.abs();
        if a > m || a.is_nan() {
            m = a;
        }
        if m.is_nan() {
            break;
        }
    }
    m
}

/// Quantizes `x` (any length ≥ 0) to NF4 in blocks of `blocksize`.
pub fn quantize<T: Nf4Element>(x: &[T], blocksize: usize) -> Result<Nf4Quantized> {
    check_blocksize("nf4::cpu::quantize", blocksize)?;
    let n = x.len();
    let nblocks = n.div_ceil(blocksize);
    let mut codes = vec![ZERO_CODE; n + n % 2];
    let mut absmax = vec![0f32; nblocks];
    for b in 0..nblocks {
        let block = &x[b * blocksize..((b + 1) * blocksize).min(n)];
        let am = block_absmax(block.iter().map(|v| v.to_f32()));
        let full = block.len() == blocksize;
        let floored = am.max(SCALE_FLOOR);
        // bitsandbytes multiplies full blocks by a reciprocal but divides the short last block.
        let inv = 1.0 / floored;
        for (i, v) in block.iter().enumerate() {
            let v = v.to_f32();
            let scaled = if full { v * inv } else { v / floored };
            codes[b * blocksize + i] = code_of(scaled);
        }
        absmax[b] = if full { am } else { floored };
    }
    let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    Ok(Nf4Quantized {
        packed,
        absmax,
        len: n,
        blocksize,
    })
}

/// The code of element `i`.
#[inline]
pub fn nibble(packed: &[u8], i: usize) -> u8 {
    let byte = packed[i / 2];
    if i % 2 == 0 {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// Dequantizes `w` into `out` (`[w.len]`): `codebook[nibble] · absmax` in f32, rounded to `T`.
pub fn dequantize<T: Nf4Element>(w: Nf4Ref<'_>, out: &mut [T]) -> Result<()> {
    w.validate("nf4::cpu::dequantize")?;
    check_len("nf4::cpu::dequantize", "out", out.len(), w.len)?;
    for (i, o) in out.iter_mut().enumerate() {
        let v = NF4_CODEBOOK[nibble(w.packed, i) as usize] * w.absmax[i / w.blocksize];
        *o = T::from_f32(v);
    }
    Ok(())
}

/// `y = Ŵ · x` with `Ŵ [rows, cols]` NF4, `x [cols]`, `y [rows]`; each dequantized weight is the f32 value
/// `dequantize` produces, and the dot products accumulate in f64.
pub fn gemv(w: Nf4Ref<'_>, shape: GemvShape, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_gemv("nf4::cpu::gemv", &w, shape, x.len(), y.len())?;
    for (r, yr) in y.iter_mut().enumerate() {
        let mut acc = 0f64;
        for (c, &xc) in x.iter().enumerate() {
            let i = r * shape.cols + c;
            let wv = NF4_CODEBOOK[nibble(w.packed, i) as usize] * w.absmax[i / w.blocksize];
            acc += wv as f64 * xc as f64;
        }
        *yr = acc as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nf4::{NF4_THRESHOLDS, SCALE_FLOOR};

    #[test]
    fn thresholds_sit_between_codes() {
        for i in 0..15 {
            assert!(NF4_CODEBOOK[i] < NF4_THRESHOLDS[i] && NF4_THRESHOLDS[i] < NF4_CODEBOOK[i + 1]);
            assert_eq!(
                code_of(NF4_THRESHOLDS[i]),
                i as u8,
                "a value on a midpoint takes the lower code"
            );
            assert_eq!(code_of(NF4_CODEBOOK[i]), i as u8);
        }
        assert_eq!(code_of(1.0), 15);
    }

    #[test]
    fn edges_follow_bitsandbytes_cpu() {
        // Full zero block: absmax 0 and the zero code; short zero tail: the floor; odd length: zero-code pad.
        let x: Vec<f32> = (0..32)
            .map(|i| i as f32 - 7.5)
            .chain(std::iter::repeat_n(0.0, 32 + 5))
            .collect();
        let q = quantize(&x, 32).unwrap();
        assert_eq!(q.absmax, vec![23.5, 0.0, SCALE_FLOOR]);
        assert!(q.packed[16..32].iter().all(|&b| b == 0x77));
        assert_eq!(q.packed.last().copied(), Some(0x77));
        assert!(quantize(&x, 48).is_err() && quantize(&x, 16).is_err() && quantize(&x, 8192).is_err());
    }

    #[test]
    fn bf16_rounding_matches_half() {
        use crate::nf4::Nf4Element;
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -3.0e38,
        ];
        let mut s = 0x1234_5678u32;
        let randoms = (0..100_000).map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            f32::from_bits(s)
        });
        for v in specials.into_iter().chain(randoms) {
            let (a, b) = (<half::bf16 as Nf4Element>::from_f32(v), half::bf16::from_f32(v));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{v:e}: {a} vs {b}"
            );
        }
    }
}
