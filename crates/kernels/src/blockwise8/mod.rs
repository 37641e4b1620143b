//! bitsandbytes' 8-bit blockwise dynamic quantization as its CPU path computes it (`quantize_blockwise` and
//! `dequantize_blockwise`): the code of the NF4 double-quantized scales (signed map) and of the 8-bit optimizer
//! states (signed map for the first moment, unsigned for the second).
//!
//! Math: per block of `blocksize` elements `absmax = max |x|` (NaN lanes ignored); each element is scaled by
//! `x · (1/absmax)`, clamped to [−1, 1] and mapped through a table of 65,536 bins over [−1, 1]: bin
//! `trunc(((v + 1)·0.5)·65535 + 0.5)` holds the index of the first code whose upper midpoint
//! `0.5·(c[j] + c[j+1])` is not below the bin's value `−1 + 2i/65535`. That is bitsandbytes' CPU quantizer: near
//! a midpoint it can pick the neighbour of the exactly nearest code. An all-zero block stores absmax 0 and codes 0.
//! Dequantized: `code[q] · absmax` in f32.
//! Reference: bitsandbytes 0.50.2 (`csrc/cpu_ops.cpp`, `backends/cpu/ops.py`); docs/reference.md.

use std::sync::OnceLock;

use crate::nf4::DYNAMIC_MAP_SIGNED_BITS;
use crate::{Error, Result};

mod unsigned_map;

pub use unsigned_map::DYNAMIC_MAP_UNSIGNED_BITS;

/// Bins of the lookup table over [−1, 1].
const LUT_SIZE: usize = 65_536;

/// A 256-value code and its lookup table.
#[derive(Debug)]
pub struct DynamicMap {
    code: [f32; 256],
    lut: Box<[u8; LUT_SIZE]>,
}

impl DynamicMap {
    fn new(bits: &[u32; 256]) -> DynamicMap {
        let code = bits.map(f32::from_bits);
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
        DynamicMap { code, lut }
    }

    /// bitsandbytes' signed dynamic map (`create_dynamic_map(signed=True)`).
    pub fn signed() -> &'static DynamicMap {
        static MAP: OnceLock<DynamicMap> = OnceLock::new();
        MAP.get_or_init(|| DynamicMap::new(&DYNAMIC_MAP_SIGNED_BITS))
    }

    /// bitsandbytes' unsigned dynamic map (`create_dynamic_map(signed=False)`).
    pub fn unsigned() -> &'static DynamicMap {
        static MAP: OnceLock<DynamicMap> = OnceLock::new();
        MAP.get_or_init(|| DynamicMap::new(&DYNAMIC_MAP_UNSIGNED_BITS))
    }

    /// The 256 code values, ascending.
    pub fn code(&self) -> &[f32; 256] {
        &self.code
    }

    /// The code of a scaled value: `trunc(((v + 1)·0.5)·65535 + 0.5)` after clamping `v` to [−1, 1], each step
    /// rounded to f32 (bitsandbytes' sequence, no fused multiply-add), then the table.
    #[inline]
    pub fn encode(&self, v: f32) -> u8 {
        let v = v.clamp(-1.0, 1.0);
        let t = ((v + 1.0) * 0.5) * (LUT_SIZE - 1) as f32 + 0.5;
        // t lies in [0.5, 65535.5], so the mask changes nothing; it lets the compiler drop the bounds check.
        self.lut[(t as u32 & (LUT_SIZE as u32 - 1)) as usize]
    }
}

/// `max |x|` over a block, NaN lanes ignored (as bitsandbytes' CPU quantizer takes it). Eight running maxima
/// (a comparison that is false for NaN keeps the old one) make the loop vectorize; the maximum of non-NaN values
/// does not depend on the order, so the result is the plain running maximum's.
#[inline]
pub fn block_absmax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    for &v in chunks.remainder() {
        let a = v.abs();
        lanes[0] = if a > lanes[0] { a } else { lanes[0] };
    }
    lanes.into_iter().fold(0f32, |m, l| if l > m { l } else { m })
}

/// Quantizes one block of at most `blocksize` values into `codes`; returns its absmax.
#[inline]
pub fn quantize_block(x: &[f32], map: &DynamicMap, codes: &mut [u8]) -> f32 {
    let am = block_absmax(x);
    if am == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let inv = 1.0 / am;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = map.encode(v * inv);
    }
    am
}

fn check(op: &'static str, what: &str, have: usize, need: usize) -> Result<()> {
    if have != need {
        return Err(Error::Shape { op, msg: format!("`{what}` has {have} elements, need {need}") });
    }
    Ok(())
}

/// Quantizes `x` in blocks of `blocksize` (the last may be short): `codes [x.len()]`, `absmax [blocks]`.
pub fn quantize_blockwise(x: &[f32], blocksize: usize, map: &DynamicMap, codes: &mut [u8], absmax: &mut [f32]) -> Result<()> {
    const OP: &str = "blockwise8::quantize";
    if blocksize == 0 {
        return Err(Error::Shape { op: OP, msg: "blocksize 0".into() });
    }
    check(OP, "codes", codes.len(), x.len())?;
    check(OP, "absmax", absmax.len(), x.len().div_ceil(blocksize))?;
    for ((xb, cb), a) in x.chunks(blocksize).zip(codes.chunks_mut(blocksize)).zip(absmax.iter_mut()) {
        *a = quantize_block(xb, map, cb);
    }
    Ok(())
}

/// The inverse: `out[i] = code[codes[i]] · absmax[i / blocksize]` in f32.
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], blocksize: usize, map: &DynamicMap, out: &mut [f32]) -> Result<()> {
    const OP: &str = "blockwise8::dequantize";
    if blocksize == 0 {
        return Err(Error::Shape { op: OP, msg: "blocksize 0".into() });
    }
    check(OP, "out", out.len(), codes.len())?;
    check(OP, "absmax", absmax.len(), codes.len().div_ceil(blocksize))?;
    for ((ob, cb), &a) in out.chunks_mut(blocksize).zip(codes.chunks(blocksize)).zip(absmax) {
        for (o, &c) in ob.iter_mut().zip(cb) {
            *o = map.code[c as usize] * a;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_monotone_and_span_their_maps() {
        for map in [DynamicMap::signed(), DynamicMap::unsigned()] {
            assert!(map.lut.windows(2).all(|w| w[0] <= w[1]));
            assert!(map.code.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(map.code[255], 1.0);
            assert_eq!(map.encode(1.0), 255);
        }
        assert_eq!(DynamicMap::signed().encode(-1.0), 0);
        assert_eq!(DynamicMap::unsigned().code()[0], 0.0);
    }

    #[test]
    fn round_trip_stays_within_the_widest_code_gap() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 2003) as f32 / 1001.0 - 1.0).collect();
        for (map, lo) in [(DynamicMap::signed(), -1.0f32), (DynamicMap::unsigned(), 0.0)] {
            let x: Vec<f32> = x.iter().map(|&v| v.max(lo)).collect();
            let (mut q, mut a) = (vec![0u8; x.len()], vec![0f32; 4]);
            quantize_blockwise(&x, 256, map, &mut q, &mut a).unwrap();
            let mut back = vec![0f32; x.len()];
            dequantize_blockwise(&q, &a, 256, map, &mut back).unwrap();
            let gap = map.code.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max);
            for (i, (v, b)) in x.iter().zip(&back).enumerate() {
                assert!((v - b).abs() <= gap * a[i / 256], "{i}: {v} vs {b}");
            }
        }
        let mut q = vec![7u8; 3];
        assert_eq!(quantize_block(&[0.0, -0.0, f32::NAN], DynamicMap::signed(), &mut q), 0.0);
        assert_eq!(q, [0, 0, 0], "an all-zero block stores codes 0");
        assert!(quantize_blockwise(&[1.0; 5], 256, DynamicMap::signed(), &mut [0; 5], &mut [0.0; 2]).is_err());
    }
}
