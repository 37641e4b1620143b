//! Launchers of `kernels/elementwise.cu`: validate views and buffers, build the `Launch`, run it on any runtime.
//!
//! Strided launches read their dims and strides from a small device buffer (`info`, u32) held by a
//! [`DeviceLayout`]; a layout whose views are all contiguous uploads nothing and takes the kernels' fast path.

use std::sync::Arc;

use super::{contiguous_strides, BinaryOp, FloatType, UnaryOp, MAX_RANK};
use crate::{Dim3, Error, GpuBuffer, GpuRuntime, KernelArg, KernelId, Launch, LaunchConfig, Result};

/// Threads per block of every elementwise kernel.
const BLOCK: u32 = 256;
/// The grid-stride loop caps the grid at this many blocks.
const MAX_BLOCKS: u32 = 65_535;
/// The kernels index elements with u32 and step by the grid size, so n stays below 2^31.
const MAX_ELEMS: usize = (1 << 31) - 1;

/// Checks a strided view of `dims` over a buffer of `len` elements and returns the element count of `dims`.
pub(crate) fn check_view(op: &'static str, name: &str, dims: &[usize], strides: &[usize], len: usize) -> Result<usize> {
    if dims.len() > MAX_RANK {
        return Err(Error::Shape { op, msg: format!("rank {} exceeds the maximum {MAX_RANK}", dims.len()) });
    }
    if strides.len() != dims.len() {
        return Err(Error::Shape {
            op,
            msg: format!("`{name}` has {} strides for {} dims {dims:?}", strides.len(), dims.len()),
        });
    }
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape { op, msg: format!("dims {dims:?} overflow usize") })?;
    if n == 0 {
        return Ok(0);
    }
    let last = dims
        .iter()
        .zip(strides)
        .try_fold(0usize, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)))
        .ok_or_else(|| Error::Shape { op, msg: format!("`{name}` strides {strides:?} overflow usize") })?;
    if last >= len {
        return Err(Error::Shape {
            op,
            msg: format!("`{name}` with dims {dims:?} and strides {strides:?} reaches element {last}, it holds {len}"),
        });
    }
    Ok(n)
}

/// Checks that `buf` belongs to `rt` and holds at least `need` bytes.
pub(crate) fn check_buffer(
    op: &'static str,
    name: &'static str,
    rt: &Arc<dyn GpuRuntime>,
    buf: &GpuBuffer,
    need: usize,
) -> Result<()> {
    if !std::ptr::addr_eq(Arc::as_ptr(rt), Arc::as_ptr(buf.runtime())) {
        return Err(Error::Shape { op, msg: format!("buffer `{name}` belongs to another runtime") });
    }
    if buf.len() < need {
        return Err(Error::BufferTooSmall { op, name, have: buf.len(), need });
    }
    Ok(())
}

/// The output dims and one strided view per input, with its `info` buffer on the device when any view is
/// not contiguous. It must outlive every launch that uses it (drop it after a synchronize).
#[derive(Debug)]
pub struct DeviceLayout {
    dims: Vec<usize>,
    strides: Vec<Vec<usize>>,
    n: usize,
    info: Option<GpuBuffer>,
}

impl DeviceLayout {
    /// A layout whose inputs are all contiguous views of `dims` (nothing is uploaded).
    pub fn contiguous(dims: &[usize], inputs: usize) -> Result<Self> {
        let strides = contiguous_strides(dims);
        let n = check_view("elementwise::DeviceLayout", "output", dims, &strides, usize::MAX)?;
        check_gpu_limits(dims, &[])?;
        Ok(Self { dims: dims.to_vec(), strides: vec![strides; inputs], n, info: None })
    }

    /// A layout with one strided view per input (element strides, 0 broadcasts); uploads `info` unless every
    /// view is contiguous.
    pub fn new(rt: &Arc<dyn GpuRuntime>, dims: &[usize], strides: &[&[usize]]) -> Result<Self> {
        const OP: &str = "elementwise::DeviceLayout";
        let contiguous = contiguous_strides(dims);
        let n = check_view(OP, "output", dims, &contiguous, usize::MAX)?;
        for s in strides {
            check_view(OP, "input", dims, s, usize::MAX)?;
        }
        check_gpu_limits(dims, strides)?;
        // A size-1 dim is only ever read at index 0, so its stride does not matter.
        let dense = |s: &[usize]| dims.iter().zip(s).zip(&contiguous).all(|((&d, &s), &c)| d == 1 || s == c);
        let all_contiguous = strides.iter().all(|s| dense(s));
        let info = if all_contiguous || n == 0 {
            None
        } else {
            // dims, then each input's strides; every value fits u32 (checked above).
            let words: Vec<u32> = dims.iter().chain(strides.iter().flat_map(|s| s.iter())).map(|&v| v as u32).collect();
            Some(GpuBuffer::from_slice(rt, &words)?)
        };
        Ok(Self { dims: dims.to_vec(), strides: strides.iter().map(|s| s.to_vec()).collect(), n, info })
    }

    /// The output dims.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The number of output elements.
    pub fn elem_count(&self) -> usize {
        self.n
    }

    /// Whether the launch takes the contiguous fast path.
    pub fn is_contiguous(&self) -> bool {
        self.info.is_none()
    }
}

/// Checks what the kernels' u32 indexing can address.
fn check_gpu_limits(dims: &[usize], strides: &[&[usize]]) -> Result<()> {
    const OP: &str = "elementwise::DeviceLayout";
    let n: usize = dims.iter().product();
    if n > MAX_ELEMS {
        return Err(Error::Shape { op: OP, msg: format!("{n} elements exceed the kernels' limit {MAX_ELEMS}") });
    }
    if let Some(&s) = strides.iter().flat_map(|s| s.iter()).find(|&&s| s > u32::MAX as usize) {
        return Err(Error::Shape { op: OP, msg: format!("stride {s} does not fit u32") });
    }
    Ok(())
}

/// The grid of a grid-stride launch over `n` elements.
fn config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS as usize) as u32;
    LaunchConfig { grid: Dim3::x(blocks), block: Dim3::x(BLOCK), shared_bytes: 0 }
}

/// Checks a layout against the input buffers and the output and returns the kernel's `info` and `rank`.
fn check_launch(
    op: &'static str,
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    inputs: &[(&'static str, &GpuBuffer)],
    y: &GpuBuffer,
    layout: &DeviceLayout,
) -> Result<(KernelArg, u32)> {
    if layout.strides.len() != inputs.len() {
        return Err(Error::Shape {
            op,
            msg: format!("the layout describes {} inputs, the op takes {}", layout.strides.len(), inputs.len()),
        });
    }
    for ((name, buf), strides) in inputs.iter().zip(&layout.strides) {
        check_buffer(op, name, rt, buf, 0)?;
        check_view(op, name, &layout.dims, strides, buf.len() / dtype.size())?;
    }
    check_buffer(op, "y", rt, y, layout.n * dtype.size())?;
    Ok(match &layout.info {
        Some(info) => {
            check_buffer(op, "info", rt, info, 0)?;
            (KernelArg::Ptr(info.ptr()), layout.dims.len() as u32)
        }
        // Rank 0 selects the contiguous path, which never reads `info`; it gets a valid address anyway.
        None => (KernelArg::Ptr(y.ptr()), 0),
    })
}

/// The launch of `kernel` over `inputs` after [`check_launch`]: the kernel's arguments are the inputs'
/// pointers in order, then `y`, `info`, `rank` and n.
fn strided_launch(
    op: &'static str,
    rt: &Arc<dyn GpuRuntime>,
    dtype: FloatType,
    kernel: KernelId,
    inputs: &[(&'static str, &GpuBuffer)],
    y: &GpuBuffer,
    layout: &DeviceLayout,
) -> Result<Launch> {
    let (info, rank) = check_launch(op, rt, dtype, inputs, y, layout)?;
    let mut args: Vec<KernelArg> = inputs.iter().map(|(_, buf)| KernelArg::Ptr(buf.ptr())).collect();
    args.extend([KernelArg::Ptr(y.ptr()), info, KernelArg::U32(rank), KernelArg::U32(layout.n as u32)]);
    Ok(Launch { kernel, config: config(layout.n), args })
}

/// Builds the launch of `y = op(a, b)` after checking every view and buffer.
pub fn binary_launch(
    rt: &Arc<dyn GpuRuntime>,
    op: BinaryOp,
    dtype: FloatType,
    a: &GpuBuffer, // strided view of layout.dims (layout.strides[0])
    b: &GpuBuffer, // strided view of layout.dims (layout.strides[1])
    y: &GpuBuffer, // [n] contiguous
    layout: &DeviceLayout,
) -> Result<Launch> {
    strided_launch("elementwise::binary", rt, dtype, op.kernel(dtype), &[("a", a), ("b", b)], y, layout)
}

/// Runs `y = op(a, b)` on `rt`; `y` is contiguous over `layout.dims()`. An empty output launches nothing.
pub fn binary(
    rt: &Arc<dyn GpuRuntime>,
    op: BinaryOp,
    dtype: FloatType,
    a: &GpuBuffer,
    b: &GpuBuffer,
    y: &GpuBuffer,
    layout: &DeviceLayout,
) -> Result<()> {
    let launch = binary_launch(rt, op, dtype, a, b, y, layout)?;
    if layout.n == 0 {
        return Ok(());
    }
    // SAFETY: `check_launch` verified that every buffer belongs to `rt`, that the highest element each strided
    // view reaches lies inside its buffer, that `y` holds n elements, and that `info` (when passed) is the live
    // upload of exactly these dims and strides; the kernel reads and writes nothing else.
    unsafe { rt.launch(&launch) }
}

/// Builds the launch of `y = op(x)` after checking the view and buffers.
pub fn unary_launch(
    rt: &Arc<dyn GpuRuntime>,
    op: UnaryOp,
    dtype: FloatType,
    x: &GpuBuffer, // strided view of layout.dims (layout.strides[0])
    y: &GpuBuffer, // [n] contiguous
    layout: &DeviceLayout,
) -> Result<Launch> {
    strided_launch("elementwise::unary", rt, dtype, op.kernel(dtype), &[("x", x)], y, layout)
}

/// Runs `y = op(x)` on `rt`; `y` is contiguous over `layout.dims()`. An empty output launches nothing.
pub fn unary(
    rt: &Arc<dyn GpuRuntime>,
    op: UnaryOp,
    dtype: FloatType,
    x: &GpuBuffer,
    y: &GpuBuffer,
    layout: &DeviceLayout,
) -> Result<()> {
    let launch = unary_launch(rt, op, dtype, x, y, layout)?;
    if layout.n == 0 {
        return Ok(());
    }
    // SAFETY: `check_launch` verified that both buffers belong to `rt`, that the highest element the view of `x`
    // reaches lies inside `x`, that `y` holds n elements, and that `info` (when passed) is the live upload of
    // exactly these dims and strides; the kernel reads and writes nothing else.
    unsafe { rt.launch(&launch) }
}
