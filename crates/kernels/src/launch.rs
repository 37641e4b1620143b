//! Launch descriptors: which kernel, grid and block shapes, dynamic shared memory, and typed arguments.

use crate::{DevicePtr, KernelId};

/// A grid or block extent in x, y and z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    /// A one-dimensional extent.
    pub const fn x(x: u32) -> Self {
        Self { x, y: 1, z: 1 }
    }

    /// A two-dimensional extent.
    pub const fn xy(x: u32, y: u32) -> Self {
        Self { x, y, z: 1 }
    }

    /// The number of threads (or blocks) it spans.
    pub const fn count(&self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: Dim3,
    pub block: Dim3,
    /// Dynamic shared memory in bytes (`extern __shared__`).
    pub shared_bytes: u32,
}

/// One kernel argument, typed as the kernel's `.param` declares it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    Ptr(DevicePtr),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl KernelArg {
    /// The argument's bytes as the kernel reads them from its parameter space (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        match *self {
            KernelArg::Ptr(p) => p.0.to_le_bytes().to_vec(),
            KernelArg::I32(v) => v.to_le_bytes().to_vec(),
            KernelArg::U32(v) => v.to_le_bytes().to_vec(),
            KernelArg::I64(v) => v.to_le_bytes().to_vec(),
            KernelArg::U64(v) => v.to_le_bytes().to_vec(),
            KernelArg::F32(v) => v.to_le_bytes().to_vec(),
            KernelArg::F64(v) => v.to_le_bytes().to_vec(),
        }
    }

    /// The size of the argument in bytes.
    pub fn size(&self) -> usize {
        match self {
            KernelArg::I32(_) | KernelArg::U32(_) | KernelArg::F32(_) => 4,
            _ => 8,
        }
    }
}

/// A complete launch: the kernel, its shape and its arguments in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: KernelId,
    pub config: LaunchConfig,
    pub args: Vec<KernelArg>,
}
