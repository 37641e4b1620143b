//! `Tensor`: a cheaply clonable handle to a view (layout) of shared storage, plus the autograd node that records
//! how it was computed when gradients are being tracked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backprop::{BackwardOp, Node};
use crate::cpu::{CpuData, CpuStorage};
use crate::{DType, Device, Error, Layout, Result, Shape, Storage, WithDType};

/// A unique id per tensor handle created by an op or constructor (views get their own ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// Present when this tensor takes part in gradient tracking (a leaf that requires grad, or an op output
    /// with at least one tracked input).
    pub(crate) node: Option<Arc<Node>>,
}

/// An n-dimensional array on a device. Cloning is cheap (reference counted).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {:?}{}]", self.dims(), self.dtype(), self.device(), if self.requires_grad() { ", grad" } else { "" })
    }
}

impl Tensor {
    // ----- construction -----

    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        let (dtype, device) = (storage.dtype(), storage.device());
        Tensor(Arc::new(Inner { id: TensorId::new(), storage: Arc::new(RwLock::new(storage)), layout, dtype, device, node: None }))
    }

    /// The result of an op: new storage (contiguous), optionally recorded for backward.
    pub(crate) fn from_op(storage: Storage, shape: Shape, grad: Option<(BackwardOp, Vec<Option<Arc<Node>>>)>) -> Tensor {
        let t = Tensor::from_storage(storage, Layout::contiguous(shape));
        t.with_node(grad)
    }

    /// A view sharing this tensor's storage with a new layout, optionally recorded for backward.
    pub(crate) fn view(&self, layout: Layout, grad: Option<(BackwardOp, Vec<Option<Arc<Node>>>)>) -> Tensor {
        let inner = Inner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout,
            dtype: self.dtype(),
            device: self.device(),
            node: None,
        };
        Tensor(Arc::new(inner)).with_node(grad)
    }

    fn with_node(self, grad: Option<(BackwardOp, Vec<Option<Arc<Node>>>)>) -> Tensor {
        match grad {
            None => self,
            Some((op, inputs)) => {
                let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|_| unreachable!("a tensor just made has one owner"));
                inner.node = Some(Arc::new(Node::op(inner.id, op, inputs)));
                Tensor(Arc::new(inner))
            }
        }
    }

    /// A tensor from host data in row-major order.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount { op: "from_vec", elems: data.len(), to: shape });
        }
        let cpu = CpuData::from_bytes(T::DTYPE, bytemuck::cast_slice(&data));
        Tensor::from_cpu_data(cpu, shape, device)
    }

    /// A tensor from a slice in row-major order.
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    pub(crate) fn from_cpu_data(data: CpuData, shape: Shape, device: Device) -> Result<Tensor> {
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount { op: "from_data", elems: data.len(), to: shape });
        }
        match device {
            Device::Cpu => Ok(Tensor::from_storage(Storage::Cpu(CpuStorage::new(data)), Layout::contiguous(shape))),
            d => Err(Error::DeviceUnavailable(d, "the GPU backend is not built yet; use Device::Cpu".into())),
        }
    }

    /// A scalar (rank-0) f32 tensor.
    pub fn scalar(v: f32, device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![v], (), device)
    }

    pub fn full(v: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = CpuData::from_f64_iter(dtype, std::iter::repeat_n(v, shape.elem_count()));
        Tensor::from_cpu_data(data, shape, device)
    }
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_cpu_data(CpuData::zeros(dtype, shape.elem_count()), shape, device)
    }
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape().clone(), self.dtype(), self.device())
    }
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape().clone(), self.dtype(), self.device())
    }
    /// `[start, start+1, …, end)` as a 1-D tensor of `dtype`.
    pub fn arange(start: i64, end: i64, dtype: DType, device: Device) -> Result<Tensor> {
        let n = (end - start).max(0) as usize;
        let data = CpuData::from_f64_iter(dtype, (start..end).map(|v| v as f64));
        Tensor::from_cpu_data(data, Shape::from(n), device)
    }

    // ----- accessors -----

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// The size of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.dims()[self.shape().resolve_dim(dim, "dim")?])
    }
    /// The two dims of a matrix, or an error naming `op`.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.dims() {
            &[a, b] => Ok((a, b)),
            _ => Err(Error::InvalidShape { op, shape: self.shape().clone(), msg: "expected a matrix".into() }),
        }
    }
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// The elements in row-major order as `T`, converting from the stored dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        let st = self.storage();
        let s = st.cpu();
        if s.dtype() == T::DTYPE {
            let c = s.copy_contiguous(self.layout());
            return Ok(bytemuck::cast_slice(c.data().as_bytes()).to_vec());
        }
        Ok(self.layout().offsets().map(|o| T::from_f64(s.data().get_f64(o))).collect())
    }
    /// The elements as f32 in row-major order.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.to_vec::<f32>()
    }
    /// The single value of a tensor with one element, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::InvalidShape { op: "to_scalar", shape: self.shape().clone(), msg: "expected one element".into() });
        }
        Ok(self.to_vec::<f64>()?[0])
    }

    // ----- gradient tracking -----

    /// Whether this tensor is a leaf that receives gradients.
    pub fn requires_grad(&self) -> bool {
        self.0.node.as_ref().is_some_and(|n| n.is_leaf())
    }
    /// Whether gradients flow through this tensor (a leaf that requires grad or a result computed from one).
    pub fn tracks_grad(&self) -> bool {
        self.0.node.is_some()
    }
    /// A handle to the same data as a leaf that receives gradients (`on`), or that is frozen (`!on`).
    pub fn with_requires_grad(&self, on: bool) -> Tensor {
        let id = TensorId::new();
        let node = on.then(|| Arc::new(Node::leaf(id)));
        let inner = Inner { id, storage: self.0.storage.clone(), layout: self.0.layout.clone(), dtype: self.dtype(), device: self.device(), node };
        Tensor(Arc::new(inner))
    }
    /// The same data with no gradient history.
    pub fn detach(&self) -> Tensor {
        if self.0.node.is_none() {
            return self.clone();
        }
        self.with_requires_grad(false)
    }
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.node.as_ref()
    }

    /// Overwrites this tensor's elements with `src` (same shape and dtype), in place; the storage is shared
    /// with every view of it. Used by optimizers and loaders; not recorded for autograd.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "assign", lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        if src.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: "assign", lhs: self.dtype(), rhs: src.dtype() });
        }
        let data = src.storage().copy_contiguous(src.layout());
        let mut dst = self.storage_mut();
        match (&mut *dst, &data) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.write_strided(self.layout(), s.data(), "assign"),
        }
    }
}
