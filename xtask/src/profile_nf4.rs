//! The NF4 family in `cargo xtask profile`: default shapes, minimum traffic, random operands built through
//! `nf4::launch`, and for the GEMV a line that isolates the weight stream from the other global traffic.
//!
//! Shapes: quantize / dequantize `N` (1048576, blocksize 64, a bf16/f16/f32 side as the kernel says); double
//! (de)quantize `NBLOCKS` (65536); GEMV `MxNxK` (1x1024x4096, blocksize 64; M must fit the kernel's `_m<R>`).

use std::sync::Arc;

use anyhow::{bail, Result};
use half::bf16;
use rankfold_kernels::nf4::launch::{self, GemvConfig, GemvScales, Nf4Type};
use rankfold_kernels::nf4::{self, cpu};
use rankfold_kernels::{GpuBuffer, GpuRuntime, KernelId, Launch};
use rankfold_ptxsim::Counters;

/// The blocksize every NF4 profile uses.
const BLOCKSIZE: usize = 64;

/// What an NF4 kernel does, for the workload and the operands.
enum Op {
    Quantize(Nf4Type),
    Dequantize(Nf4Type),
    DoubleQuantize,
    DoubleDequantize,
    /// The largest M the kernel takes and whether its scales are double-quantized.
    Gemv {
        max_m: usize,
        double: bool,
    },
}

fn op_of(kernel: KernelId) -> Result<Op> {
    use KernelId::*;
    Ok(match kernel {
        Nf4QuantizeF32 => Op::Quantize(Nf4Type::F32),
        Nf4QuantizeF16 => Op::Quantize(Nf4Type::F16),
        Nf4QuantizeBf16 => Op::Quantize(Nf4Type::Bf16),
        Nf4DequantizeF32 => Op::Dequantize(Nf4Type::F32),
        Nf4DequantizeF16 => Op::Dequantize(Nf4Type::F16),
        Nf4DequantizeBf16 => Op::Dequantize(Nf4Type::Bf16),
        Nf4DoubleQuantizeF32 => Op::DoubleQuantize,
        Nf4DoubleDequantizeF32 => Op::DoubleDequantize,
        Nf4GemvM1Bf16 => Op::Gemv {
            max_m: 1,
            double: false,
        },
        Nf4GemvM4Bf16 => Op::Gemv {
            max_m: 4,
            double: false,
        },
        Nf4GemvM16Bf16 => Op::Gemv {
            max_m: 16,
            double: false,
        },
        Nf4GemvDqM1Bf16 => Op::Gemv { max_m: 1, double: true },
        Nf4GemvDqM4Bf16 => Op::Gemv { max_m: 4, double: true },
        Nf4GemvDqM16Bf16 => Op::Gemv {
            max_m: 16,
            double: true,
        },
        other => bail!("{} is not an NF4 kernel", other.name()),
    })
}

/// The default shape of an NF4 kernel.
pub(crate) fn default_shape(kernel: KernelId) -> &'static str {
    match op_of(kernel) {
        Ok(Op::Gemv { max_m: 1, .. }) => "1x1024x4096",
        Ok(Op::Gemv { max_m: 4, .. }) => "4x1024x4096",
        Ok(Op::Gemv { .. }) => "16x256x4096",
        Ok(Op::DoubleQuantize | Op::DoubleDequantize) => "65536",
        _ => "1048576",
    }
}

/// The GEMV's (m, n, k), checked against the kernel's range of M.
fn gemv_dims(shape: &str, max_m: usize) -> Result<(usize, usize, usize)> {
    let d = crate::profile::dims(shape, 3, "MxNxK")?;
    let lo = match max_m {
        1 => 1,
        4 => 2,
        _ => 5,
    };
    if !(lo..=max_m).contains(&d[0]) {
        bail!(
            "this GEMV kernel takes M in {lo}..={max_m} (the launcher picks by M), got {}",
            d[0]
        );
    }
    Ok((d[0], d[1], d[2]))
}

/// Minimum bytes and FLOPs (when the workload has a formula) of an NF4 kernel at `shape`.
pub(crate) fn workload(kernel: KernelId, shape: &str) -> Result<(u64, Option<u64>)> {
    let scales = |elems: usize, double: bool| {
        let blocks = elems.div_ceil(BLOCKSIZE);
        if double {
            blocks + 4 * blocks.div_ceil(nf4::NESTED_BLOCKSIZE)
        } else {
            4 * blocks
        }
    };
    Ok(match op_of(kernel)? {
        Op::Quantize(t) | Op::Dequantize(t) => {
            let n = crate::profile::dims(shape, 1, "N")?[0];
            ((n * t.size() + n.div_ceil(2) + scales(n, false)) as u64, None)
        }
        Op::DoubleQuantize | Op::DoubleDequantize => {
            let nb = crate::profile::dims(shape, 1, "NBLOCKS")?[0];
            ((4 * nb + nb + 4 * nb.div_ceil(nf4::NESTED_BLOCKSIZE)) as u64, None)
        }
        Op::Gemv { max_m, double } => {
            let (m, n, k) = gemv_dims(shape, max_m)?;
            let bytes = (n * k).div_ceil(2) + scales(n * k, double) + 2 * m * k + 2 * m * n;
            (bytes as u64, Some(2 * (m * n * k) as u64))
        }
    })
}

/// `n` uniform values in [-1, 1) from a fixed seed (xorshift).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// A device buffer of `v` in the element type `t`.
fn typed(rt: &Arc<dyn GpuRuntime>, t: Nf4Type, v: &[f32]) -> Result<GpuBuffer> {
    Ok(match t {
        Nf4Type::F32 => GpuBuffer::from_slice(rt, v)?,
        Nf4Type::F16 => GpuBuffer::from_slice(rt, &v.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>())?,
        Nf4Type::Bf16 => GpuBuffer::from_slice(rt, &v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())?,
    })
}

/// Random operands on `rt` and the launch, built through `nf4::launch`; the buffers must outlive the launch.
pub(crate) fn build(rt: &Arc<dyn GpuRuntime>, kernel: KernelId, shape: &str) -> Result<(Launch, Vec<GpuBuffer>)> {
    match op_of(kernel)? {
        Op::Quantize(t) => {
            let n = crate::profile::dims(shape, 1, "N")?[0];
            let x = typed(rt, t, &uniform(n, 7))?;
            let packed = GpuBuffer::zeroed(rt, n.div_ceil(2))?;
            let absmax = GpuBuffer::zeroed(rt, 4 * n.div_ceil(BLOCKSIZE))?;
            let l = launch::quantize_launch(rt, t, n, BLOCKSIZE, &x, &packed, &absmax)?;
            Ok((l, vec![x, packed, absmax]))
        }
        Op::Dequantize(t) => {
            let n = crate::profile::dims(shape, 1, "N")?[0];
            let q = cpu::quantize(&uniform(n, 8), BLOCKSIZE)?;
            let (packed, absmax) = (
                GpuBuffer::from_slice(rt, &q.packed)?,
                GpuBuffer::from_slice(rt, &q.absmax)?,
            );
            let out = GpuBuffer::zeroed(rt, n * t.size())?;
            let l = launch::dequantize_launch(rt, t, n, BLOCKSIZE, &packed, &absmax, &out)?;
            Ok((l, vec![packed, absmax, out]))
        }
        Op::DoubleQuantize | Op::DoubleDequantize => {
            let nb = crate::profile::dims(shape, 1, "NBLOCKS")?[0];
            let scales: Vec<f32> = uniform(nb, 9).iter().map(|v| 0.5 + v.abs()).collect();
            let dq = nf4::double_quantize(&scales);
            let absmax = GpuBuffer::from_slice(rt, &scales)?;
            let codes = GpuBuffer::from_slice(rt, &dq.codes)?;
            let nested = GpuBuffer::from_slice(rt, &dq.nested_absmax)?;
            let l = if matches!(op_of(kernel)?, Op::DoubleQuantize) {
                launch::double_quantize_launch(rt, nb, &absmax, dq.offset, &codes, &nested)?
            } else {
                launch::double_dequantize_launch(rt, nb, &codes, &nested, dq.offset, &absmax)?
            };
            Ok((l, vec![absmax, codes, nested]))
        }
        Op::Gemv { max_m, double } => {
            let (m, n, k) = gemv_dims(shape, max_m)?;
            let q = cpu::quantize(&uniform(n * k, 10), BLOCKSIZE)?;
            let dq = nf4::double_quantize(&q.absmax);
            let x = typed(rt, Nf4Type::Bf16, &uniform(m * k, 11))?;
            let packed = GpuBuffer::from_slice(rt, &q.packed)?;
            let absmax = GpuBuffer::from_slice(rt, &q.absmax)?;
            let codes = GpuBuffer::from_slice(rt, &dq.codes)?;
            let nested = GpuBuffer::from_slice(rt, &dq.nested_absmax)?;
            let y = GpuBuffer::zeroed(rt, 2 * m * n)?;
            let scales = if double {
                GemvScales::Double {
                    codes: &codes,
                    nested: &nested,
                    offset: dq.offset,
                }
            } else {
                GemvScales::F32(&absmax)
            };
            let l = launch::gemv_launch(
                rt,
                GemvConfig {
                    m,
                    n,
                    k,
                    blocksize: BLOCKSIZE,
                },
                &x,
                &packed,
                scales,
                &y,
            )?;
            Ok((l, vec![x, packed, absmax, codes, nested, y]))
        }
    }
}

/// For the plain-scale GEMV with K a multiple of 1024 (every warp iteration has 32 full 16-byte chunks): the
/// weight stream's requests and sectors, left after subtracting the modelled other traffic of the kernel (per warp
/// iteration one scale load over 1024/64 consecutive f32 and 4·M 16-byte loads of x at a 64-byte lane stride; M
/// two-byte stores of y per row; one 64-byte codebook read from constant memory per CTA). `None` otherwise.
pub(crate) fn weight_stream_line(kernel: KernelId, shape: &str, c: &Counters) -> Option<String> {
    let Ok(Op::Gemv { max_m, double: false }) = op_of(kernel) else {
        return None;
    };
    let (m, n, k) = gemv_dims(shape, max_m).ok()?;
    if k % 1024 != 0 {
        return None;
    }
    let (m, n, k) = (m as u64, n as u64, k as u64);
    let iterations = n * k / 1024;
    let ctas = n.div_ceil(8);
    let scale_sectors = (4 * 1024 / BLOCKSIZE as u64).div_ceil(32);
    let other_requests = iterations * (1 + 4 * m) + m * n + ctas;
    let other_sectors = iterations * (scale_sectors + 4 * 32 * m) + m * n + 2 * ctas;
    let requests = c.global_requests.checked_sub(other_requests)?;
    let sectors = c.global_sectors.checked_sub(other_sectors)?;
    let bytes = n * k / 2;
    Some(format!(
        "weights   {} B in {requests} warp requests = {:.0} B per request ({:.1} B per lane; 512 = 16-byte loads) over \
         {sectors} sectors = {:.2}× the minimum {}\n",
        bytes,
        bytes as f64 / requests.max(1) as f64,
        bytes as f64 / requests.max(1) as f64 / 32.0,
        sectors as f64 / (bytes / 32).max(1) as f64,
        bytes / 32
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankfold_ptxsim::SimRuntime;

    /// The GEMV's weight stream, isolated from x, scales and y, is 16 bytes per lane over the minimum sectors.
    #[test]
    fn gemv_weight_stream_is_16_byte_coalesced() -> Result<()> {
        let sim = Arc::new(SimRuntime::new());
        let kernel = crate::profile::find_kernel("nf4_gemv_m4_bf16")?;
        let r = crate::profile::profile(&sim, kernel, Some("3x16x2048"))?;
        let line = weight_stream_line(kernel, "3x16x2048", &r.counters).expect("K is a multiple of 1024");
        assert!(line.contains("= 512 B per request") && line.contains("= 1.00× the minimum"), "{line}");
        Ok(())
    }

    /// Every NF4 kernel has a default shape that profiles within the simulator's limits.
    #[test]
    fn every_nf4_kernel_profiles() -> Result<()> {
        let sim = Arc::new(SimRuntime::new());
        for &k in KernelId::ALL.iter().filter(|k| k.name().starts_with("nf4_")) {
            let small = match op_of(k)? {
                Op::Gemv { max_m, .. } => format!("{max_m}x8x1024"),
                _ => "4099".to_string(),
            };
            let r = crate::profile::profile(&sim, k, Some(&small))?;
            assert!(r.counters.launches == 1 && r.work.min_bytes > 0, "{}", k.name());
        }
        Ok(())
    }
}
