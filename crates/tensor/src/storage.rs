//! `Storage`: the closed enum over backends. Tensor ops call these methods; each matches on the arm and calls
//! that backend's kernel. Only the CPU arm exists today; the GPU arm (shared by `Device::Cuda` and
//! `Device::Sim`) adds one arm per method here and nothing in the callers changes.

use crate::cpu::{self, BinaryOp, CmpOp, CpuStorage, MatmulDims, ReduceOp, UnaryOp};
use crate::{DType, Device, Layout, Result};

/// A tensor's buffer on some device.
#[derive(Debug, Clone)]
pub enum Storage {
    Cpu(CpuStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }
    pub(crate) fn cpu(&self) -> &CpuStorage {
        match self {
            Storage::Cpu(s) => s,
        }
    }
    pub(crate) fn copy_contiguous(&self, l: &Layout) -> Storage {
        match self {
            Storage::Cpu(s) => Storage::Cpu(s.copy_contiguous(l)),
        }
    }
    pub(crate) fn to_dtype(&self, l: &Layout, dtype: DType) -> Storage {
        match self {
            Storage::Cpu(s) => Storage::Cpu(s.to_dtype(l, dtype)),
        }
    }
    pub(crate) fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.unary(l, op)?)),
        }
    }
    pub(crate) fn affine(&self, l: &Layout, mul: f64, add: f64) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.affine(l, mul, add)?)),
        }
    }
    pub(crate) fn powf(&self, l: &Layout, e: f64) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.powf(l, e)?)),
        }
    }
    pub(crate) fn binary(&self, ll: &Layout, rhs: &Storage, rl: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.binary(ll, b, rl, op)?)),
        }
    }
    pub(crate) fn cmp(&self, ll: &Layout, rhs: &Storage, rl: &Layout, op: CmpOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.cmp(ll, b, rl, op)?)),
        }
    }
    pub(crate) fn where_cond(&self, cl: &Layout, t: &Storage, tl: &Layout, f: &Storage, fl: &Layout) -> Result<Storage> {
        match (self, t, f) {
            (Storage::Cpu(c), Storage::Cpu(t), Storage::Cpu(f)) => Ok(Storage::Cpu(c.where_cond(cl, t, tl, f, fl)?)),
        }
    }
    pub(crate) fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.reduce(l, dims, op)?)),
        }
    }
    pub(crate) fn matmul(&self, ll: &Layout, rhs: &Storage, rl: &Layout, d: &MatmulDims) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.matmul(ll, b, rl, d)?)),
        }
    }
    pub(crate) fn softmax_last(&self, l: &Layout, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.softmax_last(l, log)?)),
        }
    }
    pub(crate) fn softmax_last_bwd(&self, yl: &Layout, g: &Storage, gl: &Layout, log: bool) -> Result<Storage> {
        match (self, g) {
            (Storage::Cpu(y), Storage::Cpu(g)) => Ok(Storage::Cpu(y.softmax_last_bwd(yl, g, gl, log)?)),
        }
    }
    pub(crate) fn index_select(&self, l: &Layout, dim: usize, ids: &[i64]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.index_select(l, dim, ids)?)),
        }
    }
    pub(crate) fn index_add(&self, l: &Layout, dim: usize, ids: &[i64], size: usize) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.index_add(l, dim, ids, size)?)),
        }
    }
    pub(crate) fn gather(&self, l: &Layout, dim: usize, ids: &[i64], ids_dims: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.gather(l, dim, ids, ids_dims)?)),
        }
    }
    pub(crate) fn scatter_add(&self, l: &Layout, dim: usize, ids: &[i64], dims: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.scatter_add(l, dim, ids, dims)?)),
        }
    }
    pub(crate) fn index_vec(&self, l: &Layout, op: &'static str) -> Result<Vec<i64>> {
        match self {
            Storage::Cpu(s) => s.index_vec(l, op),
        }
    }
    pub(crate) fn concat(parts: &[(&Storage, &Layout)], dim: usize) -> Result<Storage> {
        let cpu: Vec<(&CpuStorage, &Layout)> = parts.iter().map(|(s, l)| (s.cpu(), *l)).collect();
        Ok(Storage::Cpu(cpu::concat(&cpu, dim)?))
    }
}
