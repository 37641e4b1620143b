//! The launcher of `kernels/gemm.cu`: validates shapes, strides and buffers, builds the `Launch`, runs it.

use std::sync::Arc;

use super::{kernel, GemmParams};
use crate::elementwise::launch::check_buffer;
use crate::elementwise::FloatType;
use crate::{Dim3, Error, GpuBuffer, GpuRuntime, KernelArg, Launch, LaunchConfig, Result};

/// The CTA tile in m and n (`BM`, `BN` in the .cu) and its thread count.
const TILE: usize = 128;
const THREADS: u32 = 256;
/// The grid's y extent (m tiles) is limited to 65535 blocks.
const MAX_M_TILES: usize = 65_535;

/// Builds the launch of `c = alpha·a·op(b) + beta·c` with `out` the element type of `c`.
pub fn gemm_launch(
    rt: &Arc<dyn GpuRuntime>,
    p: &GemmParams,
    out: FloatType,
    a: &GpuBuffer, // [m, k] bf16 row-major, row stride lda
    b: &GpuBuffer, // [n, k] (Nt) or [k, n] (Nn) bf16 row-major, row stride ldb
    c: &GpuBuffer, // [m, n] `out` row-major, row stride ldc
) -> Result<Launch> {
    const OP: &str = "gemm";
    check_buffer(OP, "a", rt, a, 0)?;
    check_buffer(OP, "b", rt, b, 0)?;
    check_buffer(OP, "c", rt, c, 0)?;
    p.check(OP, a.len() / 2, b.len() / 2, c.len() / out.size())?;
    if p.m.div_ceil(TILE) > MAX_M_TILES {
        return Err(Error::Shape { op: OP, msg: format!("m = {} exceeds {} rows", p.m, MAX_M_TILES * TILE) });
    }
    let grid = Dim3::xy(p.n.div_ceil(TILE).max(1) as u32, p.m.div_ceil(TILE).max(1) as u32);
    Ok(Launch {
        kernel: kernel(p.layout, out),
        config: LaunchConfig { grid, block: Dim3::x(THREADS), shared_bytes: 0 },
        args: vec![
            KernelArg::Ptr(a.ptr()),
            KernelArg::Ptr(b.ptr()),
            KernelArg::Ptr(c.ptr()),
            KernelArg::U32(p.m as u32),
            KernelArg::U32(p.n as u32),
            KernelArg::U32(p.k as u32),
            KernelArg::U32(p.lda as u32),
            KernelArg::U32(p.ldb as u32),
            KernelArg::U32(p.ldc as u32),
            KernelArg::F32(p.alpha),
            KernelArg::F32(p.beta),
        ],
    })
}

/// Runs `c = alpha·a·op(b) + beta·c` on `rt`. An empty C (m = 0 or n = 0) launches nothing.
pub fn gemm(
    rt: &Arc<dyn GpuRuntime>,
    p: &GemmParams,
    out: FloatType,
    a: &GpuBuffer,
    b: &GpuBuffer,
    c: &GpuBuffer,
) -> Result<()> {
    let launch = gemm_launch(rt, p, out, a, b, c)?;
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    // SAFETY: `gemm_launch` checked that the buffers belong to `rt`, that every stride covers its row, and that
    // each buffer holds (rows − 1)·ld + cols elements; the kernel reads A and B and writes C only at in-range
    // (row, column) pairs (partial tiles are zero-filled or bounds-checked) and reads C only when beta ≠ 0.
    unsafe { rt.launch(&launch) }
}
