//! Launchers of `kernels/softmax.cu`: validate shapes and buffers, build the `Launch`, run it on any runtime.

use std::sync::Arc;

use super::{backward_kernel, forward_kernel, SoftmaxShape, LONG_ROW};
use crate::elementwise::launch::check_buffer;
use crate::elementwise::FloatType;
use crate::{Dim3, Error, GpuBuffer, GpuRuntime, KernelArg, KernelId, Launch, LaunchConfig, Result};

/// Rows per block of the warp-per-row kernels: 8 warps per block (`kWarpsPerBlock` in the .cu); the
/// block-per-row kernels use the same 256 threads for one row.
const ROWS_PER_BLOCK: usize = 8;

/// The longest row the kernels accept.
const MAX_COLS: usize = i32::MAX as usize;

/// Checks the shape and returns the grid and the element count.
fn check_shape(op: &'static str, shape: SoftmaxShape) -> Result<(LaunchConfig, usize)> {
    // The kernels step through a row in u32 by 32 or 256 lanes: a row below 2³¹ can never make that wrap.
    if shape.cols == 0 || shape.cols > MAX_COLS || shape.rows > u32::MAX as usize {
        return Err(Error::Shape { op, msg: format!("{shape:?}: cols must be in 1..={MAX_COLS} and rows ≤ u32::MAX") });
    }
    let n = shape
        .rows
        .checked_mul(shape.cols)
        .ok_or_else(|| Error::Shape { op, msg: format!("{shape:?}: rows·cols overflows") })?;
    // Long rows get a block each; short rows a warp each.
    let blocks = if shape.cols > LONG_ROW { shape.rows } else { shape.rows.div_ceil(ROWS_PER_BLOCK) }.max(1);
    if blocks > i32::MAX as usize {
        return Err(Error::Shape { op, msg: format!("{shape:?}: {blocks} blocks exceed the grid limit") });
    }
    let config =
        LaunchConfig { grid: Dim3::x(blocks as u32), block: Dim3::x(32 * ROWS_PER_BLOCK as u32), shared_bytes: 0 };
    Ok((config, n))
}

/// The launch of a row kernel over `bufs` (each rows·cols elements of `dtype`, passed in order) after checking
/// the shape and every buffer; the kernel's arguments are the buffers' pointers, then rows and cols.
fn row_launch(
    op: &'static str,
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    shape: SoftmaxShape,
    kernel: KernelId,
    bufs: &[(&'static str, &GpuBuffer)],
) -> Result<Launch> {
    let (config, n) = check_shape(op, shape)?;
    let mut args = Vec::with_capacity(bufs.len() + 2);
    for &(name, buf) in bufs {
        check_buffer(op, name, rt, buf, n * dtype.size())?;
        args.push(KernelArg::Ptr(buf.ptr()));
    }
    args.push(KernelArg::U32(shape.rows as u32));
    args.push(KernelArg::U32(shape.cols as u32));
    Ok(Launch { kernel, config, args })
}

/// Builds the launch of `y = softmax(x)` per row after checking the shape and buffers.
pub fn forward_launch(
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    shape: SoftmaxShape,
    x: &GpuBuffer, // [rows, cols] row-major
    y: &GpuBuffer, // [rows, cols] row-major
) -> Result<Launch> {
    let kernel = forward_kernel(dtype, shape.cols);
    row_launch("softmax::forward", rt, dtype, shape, kernel, &[("x", x), ("y", y)])
}

/// Runs `y = softmax(x)` per row on `rt`. Zero rows launch nothing.
pub fn forward(
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    shape: SoftmaxShape,
    x: &GpuBuffer,
    y: &GpuBuffer,
) -> Result<()> {
    let launch = forward_launch(rt, dtype, shape, x, y)?;
    if shape.rows == 0 {
        return Ok(());
    }
    // SAFETY: `forward_launch` checked that both buffers belong to `rt` and hold rows·cols elements of `dtype`;
    // warp (or block) r touches only row r < rows of each.
    unsafe { rt.launch(&launch) }
}

/// Builds the launch of `dx = y ⊙ (dy − Σ dy ⊙ y)` per row after checking the shape and buffers.
pub fn backward_launch(
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    shape: SoftmaxShape,
    y: &GpuBuffer,  // [rows, cols] row-major, the forward output
    dy: &GpuBuffer, // [rows, cols] row-major
    dx: &GpuBuffer, // [rows, cols] row-major
) -> Result<Launch> {
    let kernel = backward_kernel(dtype, shape.cols);
    row_launch("softmax::backward", rt, dtype, shape, kernel, &[("y", y), ("dy", dy), ("dx", dx)])
}

/// Runs `dx = y ⊙ (dy − Σ dy ⊙ y)` per row on `rt`. Zero rows launch nothing.
pub fn backward(
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    shape: SoftmaxShape,
    y: &GpuBuffer,
    dy: &GpuBuffer,
    dx: &GpuBuffer,
) -> Result<()> {
    let launch = backward_launch(rt, dtype, shape, y, dy, dx)?;
    if shape.rows == 0 {
        return Ok(());
    }
    // SAFETY: `backward_launch` checked that the three buffers belong to `rt` and hold rows·cols elements of
    // `dtype`; warp (or block) r touches only row r < rows of each.
    unsafe { rt.launch(&launch) }
}
