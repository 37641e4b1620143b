//! Launchers of `kernels/softmax.cu`: validate shapes and buffers, build the `Launch`, run it on any runtime.

use std::sync::Arc;

use super::{backward_kernel, forward_kernel, SoftmaxShape, LONG_ROW};
use crate::elementwise::launch::check_buffer;
use crate::elementwise::FloatType;
use crate::{Dim3, Error, GpuBuffer, GpuRuntime, KernelArg, Launch, LaunchConfig, Result};

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

/// Builds the launch of `y = softmax(x)` per row after checking the shape and buffers.
pub fn forward_launch(
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    shape: SoftmaxShape,
    x: &GpuBuffer, // [rows, cols] row-major
    y: &GpuBuffer, // [rows, cols] row-major
) -> Result<Launch> {
    const OP: &str = "softmax::forward";
    let (config, n) = check_shape(OP, shape)?;
    check_buffer(OP, "x", rt, x, n * dtype.size())?;
    check_buffer(OP, "y", rt, y, n * dtype.size())?;
    Ok(Launch {
        kernel: forward_kernel(dtype, shape.cols),
        config,
        args: vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::U32(shape.rows as u32),
            KernelArg::U32(shape.cols as u32),
        ],
    })
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
    const OP: &str = "softmax::backward";
    let (config, n) = check_shape(OP, shape)?;
    check_buffer(OP, "y", rt, y, n * dtype.size())?;
    check_buffer(OP, "dy", rt, dy, n * dtype.size())?;
    check_buffer(OP, "dx", rt, dx, n * dtype.size())?;
    Ok(Launch {
        kernel: backward_kernel(dtype, shape.cols),
        config,
        args: vec![
            KernelArg::Ptr(y.ptr()),
            KernelArg::Ptr(dy.ptr()),
            KernelArg::Ptr(dx.ptr()),
            KernelArg::U32(shape.rows as u32),
            KernelArg::U32(shape.cols as u32),
        ],
    })
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
