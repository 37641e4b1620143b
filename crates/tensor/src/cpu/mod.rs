//! The CPU backend: `CpuStorage` (a typed host buffer with its memory charge) and the kernels that compute on
//! it. Floating ops compute in f32 (f64 for F64 tensors); F16/BF16 are converted on the way in and out.

mod elementwise;
mod index;
mod matmul;
pub(crate) mod nf4_matmul;
mod reduce;
mod vecmath;

pub(crate) use matmul::MatmulDims;

use std::borrow::Cow;

use half::{bf16, f16};

use crate::memory::MemoryCharge;
use crate::{DType, Device, Error, Float, Layout, Result, WithDType};

/// A typed host buffer.
#[derive(Debug, Clone)]
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U8(Vec<u8>),
    U32(Vec<u32>),
    I64(Vec<i64>),
}

/// Host storage: the buffer plus the memory-accounting charge it holds while alive.
#[derive(Debug)]
pub struct CpuStorage {
    data: CpuData,
    _charge: MemoryCharge,
}

impl Clone for CpuStorage {
    fn clone(&self) -> Self {
        CpuStorage::new(self.data.clone())
    }
}

macro_rules! each_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            CpuData::F32($v) => $body,
            CpuData::F64($v) => $body,
            CpuData::F16($v) => $body,
            CpuData::BF16($v) => $body,
            CpuData::U8($v) => $body,
            CpuData::U32($v) => $body,
            CpuData::I64($v) => $body,
        }
    };
}

impl CpuData {
    pub fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
            CpuData::F16(_) => DType::F16,
            CpuData::BF16(_) => DType::BF16,
            CpuData::U8(_) => DType::U8,
            CpuData::U32(_) => DType::U32,
            CpuData::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        each_data!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw little-endian bytes of the buffer.
    pub fn as_bytes(&self) -> &[u8] {
        each_data!(self, v => bytemuck::cast_slice(v))
    }
    /// A zero-filled buffer.
    pub fn zeros(dtype: DType, n: usize) -> CpuData {
        match dtype {
            DType::F32 => CpuData::F32(vec![0.0; n]),
            DType::F64 => CpuData::F64(vec![0.0; n]),
            DType::F16 => CpuData::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuData::BF16(vec![bf16::ZERO; n]),
            DType::U8 => CpuData::U8(vec![0; n]),
            DType::U32 => CpuData::U32(vec![0; n]),
            DType::I64 => CpuData::I64(vec![0; n]),
        }
    }
    /// Decodes little-endian bytes (any alignment) into a buffer of `dtype`.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> CpuData {
        fn read<T: WithDType>(bytes: &[u8]) -> Vec<T> {
            let n = bytes.len() / std::mem::size_of::<T>();
            let mut out = vec![T::from_f64(0.0); n];
            bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
            out
        }
        match dtype {
            DType::F32 => CpuData::F32(read(bytes)),
            DType::F64 => CpuData::F64(read(bytes)),
            DType::F16 => CpuData::F16(read(bytes)),
            DType::BF16 => CpuData::BF16(read(bytes)),
            DType::U8 => CpuData::U8(bytes.to_vec()),
            DType::U32 => CpuData::U32(read(bytes)),
            DType::I64 => CpuData::I64(read(bytes)),
        }
    }
    /// Builds a buffer of `dtype` from f64 values (used by constructors and casts from integer types).
    pub fn from_f64_iter(dtype: DType, it: impl Iterator<Item = f64>) -> CpuData {
        match dtype {
            DType::F32 => CpuData::F32(it.map(|v| v as f32).collect()),
            DType::F64 => CpuData::F64(it.collect()),
            DType::F16 => CpuData::F16(it.map(f16::from_f64).collect()),
            DType::BF16 => CpuData::BF16(it.map(bf16::from_f64).collect()),
            DType::U8 => CpuData::U8(it.map(|v| v as u8).collect()),
            DType::U32 => CpuData::U32(it.map(|v| v as u32).collect()),
            DType::I64 => CpuData::I64(it.map(|v| v as i64).collect()),
        }
    }
    /// Element `i` as f64.
    pub fn get_f64(&self, i: usize) -> f64 {
        each_data!(self, v => v[i].to_f64())
    }
}

/// Conversion of a compute-type vector into storage of a given dtype. When `T` is the storage type the vector
/// is moved, not copied (a checked downcast, no unsafe).
pub(crate) fn float_into_data<T: Float>(v: Vec<T>, dtype: DType) -> CpuData {
    let any = match (Box::new(v) as Box<dyn std::any::Any>).downcast::<Vec<f32>>() {
        Ok(f) => return f32_into_data(*f, dtype),
        Err(any) => any,
    };
    match any.downcast::<Vec<f64>>() {
        Ok(f) if dtype == DType::F64 => CpuData::F64(*f),
        Ok(f) => CpuData::from_f64_iter(dtype, f.into_iter()),
        Err(_) => unreachable!("Float is implemented for f32 and f64 only"),
    }
}

fn f32_into_data(v: Vec<f32>, dtype: DType) -> CpuData {
    match dtype {
        DType::F32 => CpuData::F32(v),
        DType::F16 => CpuData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        DType::BF16 => CpuData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        d => CpuData::from_f64_iter(d, v.iter().map(|&x| x as f64)),
    }
}

impl CpuStorage {
    pub fn new(data: CpuData) -> Self {
        let bytes = data.len() * data.dtype().size_in_bytes();
        CpuStorage { data, _charge: MemoryCharge::new(Device::Cpu, bytes) }
    }
    pub fn data(&self) -> &CpuData {
        &self.data
    }
    pub(crate) fn data_mut(&mut self) -> &mut CpuData {
        &mut self.data
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The elements selected by `layout` as a contiguous slice of compute type `T`, borrowed when possible.
    pub(crate) fn float_slice<T: Float>(&self, layout: &Layout) -> Cow<'_, [T]> {
        let same = self.dtype() == T::DTYPE;
        if same {
            let all: &[T] = bytemuck::cast_slice(self.data.as_bytes());
            if let Some(r) = layout.contiguous_range() {
                return Cow::Borrowed(&all[r]);
            }
            return Cow::Owned(layout.offsets().map(|o| all[o]).collect());
        }
        let conv = |o: usize| -> T {
            match &self.data {
                CpuData::F32(v) => T::from_f32(v[o]),
                CpuData::F16(v) => T::from_f32(v[o].to_f32()),
                CpuData::BF16(v) => T::from_f32(v[o].to_f32()),
                d => T::from_f64(d.get_f64(o)),
            }
        };
        match layout.contiguous_range() {
            Some(r) => Cow::Owned(r.map(conv).collect()),
            None => Cow::Owned(layout.offsets().map(conv).collect()),
        }
    }

    /// The elements selected by `layout` as contiguous i64 indices (from U8, U32 or I64 storage).
    pub(crate) fn index_vec(&self, layout: &Layout, op: &'static str) -> Result<Vec<i64>> {
        let get: &dyn Fn(usize) -> i64 = match &self.data {
            CpuData::U8(v) => &|o| v[o] as i64,
            CpuData::U32(v) => &|o| v[o] as i64,
            CpuData::I64(v) => &|o| v[o],
            d => return Err(Error::UnsupportedDType { op, dtype: d.dtype() }),
        };
        Ok(layout.offsets().map(get).collect())
    }

    /// A contiguous copy of the view in the same dtype.
    pub(crate) fn copy_contiguous(&self, layout: &Layout) -> CpuStorage {
        fn gather<T: Copy>(v: &[T], layout: &Layout) -> Vec<T> {
            match layout.contiguous_range() {
                Some(r) => v[r].to_vec(),
                None => {
                    let (inner, stride, rows) = layout.rows();
                    let mut out = Vec::with_capacity(layout.shape().elem_count());
                    for start in rows {
                        if stride == 1 {
                            out.extend_from_slice(&v[start..start + inner]);
                        } else {
                            out.extend((0..inner).map(|i| v[start + i * stride]));
                        }
                    }
                    out
                }
            }
        }
        let data = match &self.data {
            CpuData::F32(v) => CpuData::F32(gather(v, layout)),
            CpuData::F64(v) => CpuData::F64(gather(v, layout)),
            CpuData::F16(v) => CpuData::F16(gather(v, layout)),
            CpuData::BF16(v) => CpuData::BF16(gather(v, layout)),
            CpuData::U8(v) => CpuData::U8(gather(v, layout)),
            CpuData::U32(v) => CpuData::U32(gather(v, layout)),
            CpuData::I64(v) => CpuData::I64(gather(v, layout)),
        };
        CpuStorage::new(data)
    }

    /// Converts the view to `dtype`, contiguous.
    pub(crate) fn to_dtype(&self, layout: &Layout, dtype: DType) -> CpuStorage {
        if dtype == self.dtype() {
            return self.copy_contiguous(layout);
        }
        let data = match (dtype, &self.data) {
            (DType::F32, _) => CpuData::F32(self.float_slice::<f32>(layout).into_owned()),
            (DType::F64, _) => CpuData::F64(self.float_slice::<f64>(layout).into_owned()),
            (DType::F16, CpuData::F32(_)) | (DType::BF16, CpuData::F32(_)) => {
                float_into_data(self.float_slice::<f32>(layout).into_owned(), dtype)
            }
            (d, src) => CpuData::from_f64_iter(d, layout.offsets().map(|o| src.get_f64(o))),
        };
        CpuStorage::new(data)
    }

    /// Writes `src` (a contiguous buffer of the same dtype) into the elements this `layout` selects.
    pub(crate) fn write_strided(&mut self, layout: &Layout, src: &CpuData, op: &'static str) -> Result<()> {
        fn put<T: Copy>(dst: &mut [T], src: &[T], layout: &Layout) {
            match layout.contiguous_range() {
                Some(r) => dst[r].copy_from_slice(src),
                None => layout.offsets().zip(src).for_each(|(o, &v)| dst[o] = v),
            }
        }
        match (&mut self.data, src) {
            (CpuData::F32(d), CpuData::F32(s)) => put(d, s, layout),
            (CpuData::F64(d), CpuData::F64(s)) => put(d, s, layout),
            (CpuData::F16(d), CpuData::F16(s)) => put(d, s, layout),
            (CpuData::BF16(d), CpuData::BF16(s)) => put(d, s, layout),
            (CpuData::U8(d), CpuData::U8(s)) => put(d, s, layout),
            (CpuData::U32(d), CpuData::U32(s)) => put(d, s, layout),
            (CpuData::I64(d), CpuData::I64(s)) => put(d, s, layout),
            (d, s) => return Err(Error::DTypeMismatch { op, lhs: d.dtype(), rhs: s.dtype() }),
        }
        Ok(())
    }
}

/// Runs `f` with the compute type of `dtype` (f64 for F64, else f32), or fails for integer dtypes.
macro_rules! float_dispatch {
    ($dtype:expr, $op:expr, $f:ident $(:: $g:ident)* ($($arg:expr),*)) => {
        match $dtype {
            $crate::DType::F64 => $f $(:: $g)* ::<f64>($($arg),*),
            d if d.is_float() => $f $(:: $g)* ::<f32>($($arg),*),
            d => Err($crate::Error::UnsupportedDType { op: $op, dtype: d }),
        }
    };
}
pub(crate) use float_dispatch;

pub(crate) use elementwise::{swiglu, swiglu_bwd, BinaryOp, CmpOp, UnaryOp};
pub(crate) use index::{concat, rope};
pub(crate) use reduce::{
    causal_softmax, causal_softmax_bwd, cross_entropy_bwd, cross_entropy_fwd, norm_bwd, norm_fwd, CausalArgs, CeArgs,
    NormArgs, ReduceOp,
};
