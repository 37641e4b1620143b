//! The `GpuRuntime` trait that CUDA (cudarc) and ptxsim implement, and an owning device buffer on top of it.

use std::sync::Arc;

use crate::{Error, Launch, Result};

/// A device address as the kernels see it (a CUdeviceptr on CUDA, a simulated address on ptxsim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    pub const fn offset(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }
}

/// Free and total device memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInfo {
    pub free: usize,
    pub total: usize,
}

/// Element type of the vendor GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmDType {
    /// f32 in, f32 out.
    F32,
    /// bf16 in, bf16 out, f32 accumulation.
    Bf16,
}

/// A row-major GEMM `c = alpha·op(a)·op(b) + beta·c` for the runtime's library GEMM (cuBLAS, or a CPU stand-in).
///
/// `op(a)` is `[m, k]`, `op(b)` is `[k, n]`, `c` is `[m, n]`. `lda`, `ldb`, `ldc` are row strides in elements of
/// the matrices as stored (`a` stored as `[k, m]` when `trans_a`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmConfig {
    pub dtype: GemmDType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: DevicePtr,
    pub lda: usize,
    pub trans_a: bool,
    pub b: DevicePtr,
    pub ldb: usize,
    pub trans_b: bool,
    pub c: DevicePtr,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// What a GPU backend must provide: memory, copies, kernel launches and a library GEMM.
///
/// Methods that take raw device pointers are `unsafe`: the caller promises the ranges lie inside live
/// allocations of this runtime. ptxsim checks it anyway; a real GPU may fault or corrupt device memory.
pub trait GpuRuntime: Send + Sync + std::fmt::Debug {
    /// A short human-readable name, e.g. `"cuda:0 (NVIDIA H200)"` or `"ptxsim"`.
    fn name(&self) -> String;
    /// Allocates `bytes` of device memory (contents unspecified).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    /// Frees an allocation made by `alloc`.
    ///
    /// # Safety
    /// `ptr` came from this runtime's `alloc`, is not used afterwards, and no launch still reads it.
    unsafe fn free(&self, ptr: DevicePtr) -> Result<()>;
    /// Copies host bytes to device memory.
    ///
    /// # Safety
    /// `dst..dst + src.len()` lies inside one live allocation.
    unsafe fn copy_h2d(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    /// Copies device memory to host bytes (synchronizes first).
    ///
    /// # Safety
    /// `src..src + dst.len()` lies inside one live allocation.
    unsafe fn copy_d2h(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Copies `bytes` between device ranges.
    ///
    /// # Safety
    /// Both ranges lie inside live allocations.
    unsafe fn copy_d2d(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to `value`.
    ///
    /// # Safety
    /// The range lies inside one live allocation.
    unsafe fn memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<()>;
    /// Launches a kernel (asynchronously on CUDA; ptxsim runs it to completion).
    ///
    /// # Safety
    /// Every pointer argument covers what the kernel reads and writes for this configuration; the launchers
    /// in this crate check that before they call it.
    unsafe fn launch(&self, launch: &Launch) -> Result<()>;
    /// Waits until all launched work has finished.
    fn synchronize(&self) -> Result<()>;
    /// Runs the library GEMM (cuBLAS on CUDA).
    ///
    /// # Safety
    /// The matrices described by `cfg` lie inside live allocations.
    unsafe fn gemm(&self, cfg: &GemmConfig) -> Result<()>;
    /// Free and total device memory.
    fn memory_info(&self) -> Result<MemoryInfo>;
}

/// An owned device allocation of `len` bytes, freed on drop; copies in and out are bounds-checked.
#[derive(Debug)]
pub struct GpuBuffer {
    rt: Arc<dyn GpuRuntime>,
    ptr: DevicePtr,
    len: usize,
}

impl GpuBuffer {
    /// Allocates `len` bytes, zeroed.
    pub fn zeroed(rt: &Arc<dyn GpuRuntime>, len: usize) -> Result<Self> {
        let ptr = rt.alloc(len.max(1))?;
        let buf = Self { rt: rt.clone(), ptr, len };
        // SAFETY: the range is the allocation just made.
        unsafe { rt.memset(ptr, 0, len)? };
        Ok(buf)
    }

    /// Allocates a buffer holding a copy of `data`.
    pub fn from_slice<T: bytemuck::Pod>(rt: &Arc<dyn GpuRuntime>, data: &[T]) -> Result<Self> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let ptr = rt.alloc(bytes.len().max(1))?;
        let buf = Self { rt: rt.clone(), ptr, len: bytes.len() };
        // SAFETY: the range is the allocation just made, exactly `bytes.len()` long.
        unsafe { rt.copy_h2d(ptr, bytes)? };
        Ok(buf)
    }

    /// Copies the buffer back into a vector of `T` (the length must be a multiple of `size_of::<T>()`).
    pub fn to_vec<T: bytemuck::Pod>(&self) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        if size == 0 || self.len % size != 0 {
            return Err(Error::Shape {
                op: "GpuBuffer::to_vec",
                msg: format!("{} bytes is not a whole number of {size}-byte elements", self.len),
            });
        }
        let mut out = vec![T::zeroed(); self.len / size];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        // SAFETY: the range is this buffer's own live allocation.
        unsafe { self.rt.copy_d2h(self.ptr, dst)? };
        Ok(out)
    }

    /// Overwrites the buffer with `data`, which must be exactly as long.
    pub fn write<T: bytemuck::Pod>(&self, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() != self.len {
            return Err(Error::BufferTooSmall { op: "GpuBuffer::write", name: "data", have: bytes.len(), need: self.len });
        }
        // SAFETY: the range is this buffer's own live allocation.
        unsafe { self.rt.copy_h2d(self.ptr, bytes) }
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The runtime that owns the allocation.
    pub fn runtime(&self) -> &Arc<dyn GpuRuntime> {
        &self.rt
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `alloc` on this runtime and the buffer is the only owner. A failure to free
        // cannot be reported from drop; the runtime keeps its own accounting.
        let _ = unsafe { self.rt.free(self.ptr) };
    }
}
