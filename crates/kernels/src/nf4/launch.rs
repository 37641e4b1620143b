//! Launchers of `kernels/nf4.cu`: validate shapes and buffers, build the `Launch`, run it on any `GpuRuntime`
//! (CUDA or ptxsim). Quantize, dequantize, double quantization of the block scales and its inverse, and the GEMV
//! `y = x · Ŵᵀ` for decode shapes (M = 1..=16).

use std::sync::Arc;

use super::{check_blocksize, mean_offset, shape_err, NESTED_BLOCKSIZE};
use crate::elementwise::launch::check_buffer;
use crate::{Dim3, GpuBuffer, GpuRuntime, KernelArg, KernelId, Launch, LaunchConfig, Result};

/// Threads per CTA of every NF4 kernel (`kThreads`, 8 warps, in the .cu).
const THREADS: u32 = 256;
/// Warps per CTA of the quantize and GEMV kernels: one NF4 block, or one weight row, per warp.
const WARPS: usize = 8;
/// Elements each dequantize thread writes per step of its grid-stride loop.
const DEQUANT_PER_THREAD: usize = 8;
/// The most CTAs a grid-stride launch uses.
const MAX_GRID: usize = 1 << 20;
/// The largest M of the GEMV kernels.
pub const GEMV_MAX_ROWS: usize = 16;

/// The element type NF4 kernels read (quantize) or write (dequantize).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nf4Type {
    F32,
    F16,
    Bf16,
}

impl Nf4Type {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Nf4Type::F32 => 4,
            Nf4Type::F16 | Nf4Type::Bf16 => 2,
        }
    }

    const fn quantize_kernel(self) -> KernelId {
        match self {
            Nf4Type::F32 => KernelId::Nf4QuantizeF32,
            Nf4Type::F16 => KernelId::Nf4QuantizeF16,
            Nf4Type::Bf16 => KernelId::Nf4QuantizeBf16,
        }
    }

    const fn dequantize_kernel(self) -> KernelId {
        match self {
            Nf4Type::F32 => KernelId::Nf4DequantizeF32,
            Nf4Type::F16 => KernelId::Nf4DequantizeF16,
            Nf4Type::Bf16 => KernelId::Nf4DequantizeBf16,
        }
    }
}

/// A grid of `blocks` CTAs of 256 threads, failing past the CUDA grid limit.
fn grid(op: &'static str, blocks: usize) -> Result<LaunchConfig> {
    if blocks > i32::MAX as usize {
        return Err(shape_err(op, format!("{blocks} CTAs exceed the grid limit")));
    }
    Ok(LaunchConfig {
        grid: Dim3::x(blocks.max(1) as u32),
        block: Dim3::x(THREADS),
        shared_bytes: 0,
    })
}

/// Builds the launch that quantizes `x` (`n` elements of `dtype`) in blocks of `blocksize` into `packed`
/// (`ceil(n/2)` bytes) and `absmax` (`ceil(n/blocksize)` f32), after checking the sizes.
pub fn quantize_launch(
    rt: &Arc<dyn GpuRuntime>,
    dtype: Nf4Type,
    n: usize,
    blocksize: usize,
    x: &GpuBuffer,      // [n] of dtype
    packed: &GpuBuffer, // [ceil(n/2)] u8
    absmax: &GpuBuffer, // [ceil(n/blocksize)] f32
) -> Result<Launch> {
    const OP: &str = "nf4::launch::quantize";
    check_blocksize(OP, blocksize)?;
    let nblocks = n.div_ceil(blocksize);
    check_buffer(OP, "x", rt, x, n * dtype.size())?;
    check_buffer(OP, "packed", rt, packed, n.div_ceil(2))?;
    check_buffer(OP, "absmax", rt, absmax, nblocks * 4)?;
    Ok(Launch {
        kernel: dtype.quantize_kernel(),
        config: grid(OP, nblocks.div_ceil(WARPS))?,
        args: vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(packed.ptr()),
            KernelArg::Ptr(absmax.ptr()),
            KernelArg::U64(n as u64),
            KernelArg::U32(blocksize as u32),
        ],
    })
}

/// Quantizes `x` to NF4 on `rt`, bit for bit as `nf4::cpu::quantize`. Zero elements launch nothing.
pub fn quantize(
    rt: &Arc<dyn GpuRuntime>,
    dtype: Nf4Type,
    n: usize,
    blocksize: usize,
    x: &GpuBuffer,
    packed: &GpuBuffer,
    absmax: &GpuBuffer,
) -> Result<()> {
    let launch = quantize_launch(rt, dtype, n, blocksize, x, packed, absmax)?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: `quantize_launch` checked that the three buffers belong to `rt` and hold n elements, ceil(n/2)
    // bytes and ceil(n/blocksize) scales; warp b reads and writes only block b < ceil(n/blocksize) of each.
    unsafe { rt.launch(&launch) }
}

/// Builds the launch that dequantizes `n` NF4 codes into `out` (`n` elements of `dtype`).
pub fn dequantize_launch(
    rt: &Arc<dyn GpuRuntime>,
    dtype: Nf4Type,
    n: usize,
    blocksize: usize,
    packed: &GpuBuffer, // [ceil(n/2)] u8
    absmax: &GpuBuffer, // [ceil(n/blocksize)] f32
    out: &GpuBuffer,    // [n] of dtype
) -> Result<Launch> {
    const OP: &str = "nf4::launch::dequantize";
    check_blocksize(OP, blocksize)?;
    check_buffer(OP, "packed", rt, packed, n.div_ceil(2))?;
    check_buffer(OP, "absmax", rt, absmax, n.div_ceil(blocksize) * 4)?;
    check_buffer(OP, "out", rt, out, n * dtype.size())?;
    let threads = n.div_ceil(DEQUANT_PER_THREAD);
    Ok(Launch {
        kernel: dtype.dequantize_kernel(),
        config: grid(OP, threads.div_ceil(THREADS as usize).min(MAX_GRID))?,
        args: vec![
            KernelArg::Ptr(packed.ptr()),
            KernelArg::Ptr(absmax.ptr()),
            KernelArg::Ptr(out.ptr()),
            KernelArg::U64(n as u64),
            KernelArg::U32(blocksize as u32),
        ],
    })
}

/// Dequantizes on `rt`, bit for bit as `nf4::cpu::dequantize`. Zero elements launch nothing.
pub fn dequantize(
    rt: &Arc<dyn GpuRuntime>,
    dtype: Nf4Type,
    n: usize,
    blocksize: usize,
    packed: &GpuBuffer,
    absmax: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<()> {
    let launch = dequantize_launch(rt, dtype, n, blocksize, packed, absmax, out)?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: `dequantize_launch` checked the three buffers against n and blocksize. A thread reads the u32 of
    // codes 4t … 4t+3 only when its 8 elements are all below n (so 4t+3 < ceil(n/2)), writes 16-byte vectors only
    // then (buffers start at allocation bases, 256-byte aligned), and goes element by element otherwise.
    unsafe { rt.launch(&launch) }
}

/// The number of block scales as the double-quantize kernels take it (a u32).
fn check_nblocks(op: &'static str, nblocks: usize) -> Result<u32> {
    u32::try_from(nblocks).map_err(|_| shape_err(op, format!("{nblocks} block scales exceed u32")))
}

/// Builds the launch that double-quantizes `nblocks` f32 block scales around `offset` into `codes` (u8 each) and
/// `nested` (`ceil(nblocks/256)` f32).
pub fn double_quantize_launch(
    rt: &Arc<dyn GpuRuntime>,
    nblocks: usize,
    absmax: &GpuBuffer, // [nblocks] f32
    offset: f32,
    codes: &GpuBuffer,  // [nblocks] u8
    nested: &GpuBuffer, // [ceil(nblocks/256)] f32
) -> Result<Launch> {
    const OP: &str = "nf4::launch::double_quantize";
    let nb = check_nblocks(OP, nblocks)?;
    let groups = nblocks.div_ceil(NESTED_BLOCKSIZE);
    check_buffer(OP, "absmax", rt, absmax, nblocks * 4)?;
    check_buffer(OP, "codes", rt, codes, nblocks)?;
    check_buffer(OP, "nested", rt, nested, groups * 4)?;
    Ok(Launch {
        kernel: KernelId::Nf4DoubleQuantizeF32,
        config: grid(OP, groups)?,
        args: vec![
            KernelArg::Ptr(absmax.ptr()),
            KernelArg::Ptr(codes.ptr()),
            KernelArg::Ptr(nested.ptr()),
            KernelArg::F32(offset),
            KernelArg::U32(nb),
        ],
    })
}

/// Double-quantizes on `rt` around a given offset, bit for bit as `nf4::double_quantize_with_offset`.
pub fn double_quantize_with_offset(
    rt: &Arc<dyn GpuRuntime>,
    nblocks: usize,
    absmax: &GpuBuffer,
    offset: f32,
    codes: &GpuBuffer,
    nested: &GpuBuffer,
) -> Result<()> {
    let launch = double_quantize_launch(rt, nblocks, absmax, offset, codes, nested)?;
    if nblocks == 0 {
        return Ok(());
    }
    // SAFETY: `double_quantize_launch` checked the buffers against nblocks; CTA g reads and writes only scales
    // 256g … 256g+255 below nblocks and nested[g] with g < ceil(nblocks/256).
    unsafe { rt.launch(&launch) }
}

/// Double-quantizes on `rt` with `offset = nf4::mean_offset(absmax)` and returns the offset. The mean is taken on
/// the host (the scales are copied back: 4 bytes per NF4 block) because it reproduces torch's CPU summation order
/// bit for bit, which a device reduction in another order would not.
pub fn double_quantize(
    rt: &Arc<dyn GpuRuntime>,
    nblocks: usize,
    absmax: &GpuBuffer,
    codes: &GpuBuffer,
    nested: &GpuBuffer,
) -> Result<f32> {
    check_buffer("nf4::launch::double_quantize", "absmax", rt, absmax, nblocks * 4)?;
    let host: Vec<f32> = absmax.to_vec()?;
    let offset = mean_offset(&host[..nblocks]);
    double_quantize_with_offset(rt, nblocks, absmax, offset, codes, nested)?;
    Ok(offset)
}

/// Builds the launch that expands double-quantized scales: `absmax = map[codes] · nested + offset`.
pub fn double_dequantize_launch(
    rt: &Arc<dyn GpuRuntime>,
    nblocks: usize,
    codes: &GpuBuffer,  // [nblocks] u8
    nested: &GpuBuffer, // [ceil(nblocks/256)] f32
    offset: f32,
    absmax: &GpuBuffer, // [nblocks] f32
) -> Result<Launch> {
    const OP: &str = "nf4::launch::double_dequantize";
    let nb = check_nblocks(OP, nblocks)?;
    let groups = nblocks.div_ceil(NESTED_BLOCKSIZE);
    check_buffer(OP, "codes", rt, codes, nblocks)?;
    check_buffer(OP, "nested", rt, nested, groups * 4)?;
    check_buffer(OP, "absmax", rt, absmax, nblocks * 4)?;
    Ok(Launch {
        kernel: KernelId::Nf4DoubleDequantizeF32,
        config: grid(OP, groups)?,
        args: vec![
            KernelArg::Ptr(codes.ptr()),
            KernelArg::Ptr(nested.ptr()),
            KernelArg::F32(offset),
            KernelArg::Ptr(absmax.ptr()),
            KernelArg::U32(nb),
        ],
    })
}

/// Expands double-quantized scales on `rt`, bit for bit as `nf4::double_dequantize`.
pub fn double_dequantize(
    rt: &Arc<dyn GpuRuntime>,
    nblocks: usize,
    codes: &GpuBuffer,
    nested: &GpuBuffer,
    offset: f32,
    absmax: &GpuBuffer,
) -> Result<()> {
    let launch = double_dequantize_launch(rt, nblocks, codes, nested, offset, absmax)?;
    if nblocks == 0 {
        return Ok(());
    }
    // SAFETY: `double_dequantize_launch` checked the buffers against nblocks; thread i < nblocks of CTA g touches
    // codes[i], nested[g] and absmax[i] only.
    unsafe { rt.launch(&launch) }
}

/// The shape of an NF4 GEMV `y [m, n] = x [m, k] · Ŵᵀ` with `Ŵ [n, k]` in NF4 (flattened row-major, blocks of
/// `blocksize` across row ends, as bitsandbytes stores a `Linear4bit` weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvConfig {
    /// Rows of x and y: 1..=16 (decode batches).
    pub m: usize,
    /// Output features: rows of the weight.
    pub n: usize,
    /// Input features: columns of the weight.
    pub k: usize,
    /// Elements per NF4 block.
    pub blocksize: usize,
}

/// The block scales of a GEMV weight.
#[derive(Debug, Clone, Copy)]
pub enum GemvScales<'a> {
    /// Plain f32 scales: `[ceil(n·k/blocksize)]`.
    F32(&'a GpuBuffer),
    /// Double-quantized scales: u8 `codes [ceil(n·k/blocksize)]`, f32 `nested [ceil(codes/256)]` and the offset.
    Double {
        codes: &'a GpuBuffer,
        nested: &'a GpuBuffer,
        offset: f32,
    },
}

/// Builds the GEMV launch after checking the shape and buffers.
pub fn gemv_launch(
    rt: &Arc<dyn GpuRuntime>,
    cfg: GemvConfig,
    x: &GpuBuffer,      // [m, k] bf16 row-major
    packed: &GpuBuffer, // [ceil(n·k/2)] u8
    scales: GemvScales<'_>,
    y: &GpuBuffer, // [m, n] bf16 row-major
) -> Result<Launch> {
    const OP: &str = "nf4::launch::gemv";
    check_blocksize(OP, cfg.blocksize)?;
    if !(1..=GEMV_MAX_ROWS).contains(&cfg.m) || cfg.n > u32::MAX as usize || cfg.k > u32::MAX as usize {
        return Err(shape_err(
            OP,
            format!("{cfg:?}: m must be in 1..={GEMV_MAX_ROWS}, n and k at most u32::MAX"),
        ));
    }
    let elems = cfg
        .n
        .checked_mul(cfg.k)
        .ok_or_else(|| shape_err(OP, format!("{cfg:?}: n·k overflows")))?;
    let nblocks = elems.div_ceil(cfg.blocksize);
    check_buffer(OP, "x", rt, x, cfg.m * cfg.k * 2)?;
    check_buffer(OP, "packed", rt, packed, elems.div_ceil(2))?;
    check_buffer(OP, "y", rt, y, cfg.m * cfg.n * 2)?;
    let class = match cfg.m {
        1 => 0,
        2..=4 => 1,
        _ => 2,
    };
    let mut args = vec![KernelArg::Ptr(x.ptr()), KernelArg::Ptr(packed.ptr())];
    let kernel = match scales {
        GemvScales::F32(absmax) => {
            check_buffer(OP, "absmax", rt, absmax, nblocks * 4)?;
            args.push(KernelArg::Ptr(absmax.ptr()));
            [
                KernelId::Nf4GemvM1Bf16,
                KernelId::Nf4GemvM4Bf16,
                KernelId::Nf4GemvM16Bf16,
            ][class]
        }
        GemvScales::Double { codes, nested, offset } => {
            check_buffer(OP, "codes", rt, codes, nblocks)?;
            check_buffer(OP, "nested", rt, nested, nblocks.div_ceil(NESTED_BLOCKSIZE) * 4)?;
            args.extend([
                KernelArg::Ptr(codes.ptr()),
                KernelArg::Ptr(nested.ptr()),
                KernelArg::F32(offset),
            ]);
            [
                KernelId::Nf4GemvDqM1Bf16,
                KernelId::Nf4GemvDqM4Bf16,
                KernelId::Nf4GemvDqM16Bf16,
            ][class]
        }
    };
    args.extend([
        KernelArg::Ptr(y.ptr()),
        KernelArg::U32(cfg.m as u32),
        KernelArg::U32(cfg.n as u32),
        KernelArg::U32(cfg.k as u32),
        KernelArg::U32(cfg.blocksize as u32),
    ]);
    Ok(Launch {
        kernel,
        config: grid(OP, cfg.n.div_ceil(WARPS))?,
        args,
    })
}

/// Runs `y = x · Ŵᵀ` on `rt` (bf16 in and out, f32 accumulation). Zero output features launch nothing.
pub fn gemv(
    rt: &Arc<dyn GpuRuntime>,
    cfg: GemvConfig,
    x: &GpuBuffer,
    packed: &GpuBuffer,
    scales: GemvScales<'_>,
    y: &GpuBuffer,
) -> Result<()> {
    let launch = gemv_launch(rt, cfg, x, packed, scales, y)?;
    if cfg.n == 0 {
        return Ok(());
    }
    // SAFETY: `gemv_launch` checked every buffer against m, n, k and blocksize. Warp r reads the 16-byte chunks of
    // the codes that overlap row r < n, with one 16-byte load only when the whole chunk lies below ceil(n·k/2)
    // (byte loads otherwise; `packed` starts at an allocation base, 256-byte aligned), the scales of those
    // elements' blocks, x [m, k], and writes y[·, r].
    unsafe { rt.launch(&launch) }
}
