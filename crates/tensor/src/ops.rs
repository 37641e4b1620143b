//! Tensor operations: elementwise maps, broadcasting arithmetic, comparisons, reductions, matmul, and the
//! zero-copy views. Each op computes its result through `Storage` and, when gradients are tracked, records a
//! `BackwardOp` holding only what the gradients of its *tracked* inputs need.

use std::sync::Arc;

use crate::backprop::{edges, BackwardOp, Node};
use crate::cpu::{BinaryOp, CmpOp, MatmulDims, ReduceOp, UnaryOp};
use crate::{DType, Error, Layout, Result, Shape, Storage, Tensor};

type Grad = Option<(BackwardOp, Vec<Option<Arc<Node>>>)>;

impl Tensor {
    // ----- elementwise -----

    pub(crate) fn unary_op(&self, op: UnaryOp) -> Result<Tensor> {
        let storage = self.storage().unary(self.layout(), op)?;
        let y = Tensor::from_op(storage, self.shape().clone(), None);
        let grad: Grad = edges(&[self]).map(|e| {
            let (save_x, save_y) = match op {
                UnaryOp::Neg | UnaryOp::Sign => (false, false),
                UnaryOp::Abs | UnaryOp::Sqr | UnaryOp::Log | UnaryOp::GeluTanh | UnaryOp::GeluErf | UnaryOp::Silu => (true, false),
                UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip | UnaryOp::Exp | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Relu => {
                    (false, true)
                }
                UnaryOp::GeluTanhDeriv | UnaryOp::GeluErfDeriv | UnaryOp::SiluDeriv => (false, false),
            };
            let bw = BackwardOp::Unary { op, x: save_x.then(|| self.detach()), y: save_y.then(|| y.detach()) };
            (bw, e)
        });
        Ok(match grad {
            None => y,
            Some(g) => y.view(Layout::contiguous(self.shape().clone()), Some(g)),
        })
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Abs)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqr)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Rsqrt)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Recip)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Log)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Relu)
    }
    /// GELU with the tanh approximation (GPT-2's `gelu_new`).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::GeluTanh)
    }
    /// Exact GELU, `x·Φ(x)` with the error function.
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::GeluErf)
    }
    /// SiLU (swish), `x·σ(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Silu)
    }
    /// −1, 0 or 1 by sign (zero gradient).
    pub fn sign(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sign)
    }

    /// `self · mul + add` with scalars.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let storage = self.storage().affine(self.layout(), mul, add)?;
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Affine { mul }, e));
        Ok(Tensor::from_op(storage, self.shape().clone(), grad))
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    /// `self^e` elementwise with a scalar exponent.
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        let storage = self.storage().powf(self.layout(), e)?;
        let grad: Grad = edges(&[self]).map(|ed| (BackwardOp::Powf { x: self.detach(), e }, ed));
        Ok(Tensor::from_op(storage, self.shape().clone(), grad))
    }

    fn check_device(&self, rhs: &Tensor, op: &'static str) -> Result<()> {
        if self.device() != rhs.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: rhs.device() });
        }
        Ok(())
    }

    fn binary_op(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        self.check_device(rhs, name)?;
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op: name, lhs: self.dtype(), rhs: rhs.dtype() });
        }
        let shape = self.shape().broadcast_with(rhs.shape(), name)?;
        let ll = self.layout().broadcast_as(&shape, name)?;
        let rl = rhs.layout().broadcast_as(&shape, name)?;
        let storage = if self.same_storage(rhs) {
            let s = self.storage();
            s.binary(&ll, &s, &rl, op)?
        } else {
            self.storage().binary(&ll, &rhs.storage(), &rl, op)?
        };
        let grad: Grad = edges(&[self, rhs]).map(|e| {
            let (tl, tr) = (e[0].is_some(), e[1].is_some());
            let (keep_l, keep_r) = match op {
                BinaryOp::Add | BinaryOp::Sub => (false, false),
                BinaryOp::Mul => (tr, tl),
                BinaryOp::Div => (tr, true),
                BinaryOp::Maximum | BinaryOp::Minimum => (true, true),
            };
            let bw = BackwardOp::Binary {
                op,
                lhs: keep_l.then(|| self.detach()),
                rhs: keep_r.then(|| rhs.detach()),
                lhs_shape: self.shape().clone(),
                rhs_shape: rhs.shape().clone(),
            };
            (bw, e)
        });
        Ok(Tensor::from_op(storage, shape, grad))
    }

    /// Elementwise sum with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Add, "add")
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Sub, "sub")
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Mul, "mul")
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Div, "div")
    }
    /// Elementwise maximum (NaN wins); the gradient goes to the larger input, to the left one on ties.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Maximum, "maximum")
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Minimum, "minimum")
    }

    fn cmp_op(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        self.check_device(rhs, "cmp")?;
        let shape = self.shape().broadcast_with(rhs.shape(), "cmp")?;
        let ll = self.layout().broadcast_as(&shape, "cmp")?;
        let rl = rhs.layout().broadcast_as(&shape, "cmp")?;
        let storage = if self.same_storage(rhs) {
            let s = self.storage();
            s.cmp(&ll, &s, &rl, op)?
        } else {
            self.storage().cmp(&ll, &rhs.storage(), &rl, op)?
        };
        Ok(Tensor::from_op(storage, shape, None))
    }
    /// Elementwise comparisons with broadcasting; U8 result (1 = true), never differentiated.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op(rhs, CmpOp::Eq)
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op(rhs, CmpOp::Ne)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op(rhs, CmpOp::Lt)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op(rhs, CmpOp::Le)
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op(rhs, CmpOp::Gt)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op(rhs, CmpOp::Ge)
    }

    /// `self ? on_true : on_false` elementwise, all three broadcast together; `self` is an integer mask.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let shape = self.shape().broadcast_with(on_true.shape(), "where_cond")?.broadcast_with(on_false.shape(), "where_cond")?;
        let cl = self.layout().broadcast_as(&shape, "where_cond")?;
        let tl = on_true.layout().broadcast_as(&shape, "where_cond")?;
        let fl = on_false.layout().broadcast_as(&shape, "where_cond")?;
        let storage = {
            let (c, t, f) = (self.storage(), on_true.storage(), on_false.storage());
            c.where_cond(&cl, &t, &tl, &f, &fl)?
        };
        let grad: Grad = edges(&[on_true, on_false]).map(|e| {
            let bw = BackwardOp::Where { cond: self.detach(), t_shape: on_true.shape().clone(), f_shape: on_false.shape().clone() };
            (bw, e)
        });
        Ok(Tensor::from_op(storage, shape, grad))
    }

    // ----- reductions -----

    fn resolve_dims(&self, dims: &[isize], op: &'static str) -> Result<Vec<usize>> {
        let mut out = dims.iter().map(|&d| self.shape().resolve_dim(d, op)).collect::<Result<Vec<_>>>()?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn squeeze_dims(&self, dims: &[usize]) -> Result<Tensor> {
        let kept: Vec<usize> = (0..self.rank()).filter(|d| !dims.contains(d)).map(|d| self.dims()[d]).collect();
        self.reshape(kept)
    }

    /// Sum over `dims` (negative allowed); keeps them as size 1 when `keepdim`.
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let dims = self.resolve_dims(dims, "sum")?;
        let storage = self.storage().reduce(self.layout(), &dims, ReduceOp::Sum)?;
        let mut out = self.dims().to_vec();
        dims.iter().for_each(|&d| out[d] = 1);
        // The backward of a keepdim sum is a broadcast back to the input shape.
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Sum { in_shape: self.shape().clone() }, e));
        let t = Tensor::from_op(storage, Shape::new(out), grad);
        if keepdim {
            Ok(t)
        } else {
            t.squeeze_dims(&dims)
        }
    }
    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let all: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&all, false)
    }
    /// Mean over `dims`.
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let rd = self.resolve_dims(dims, "mean")?;
        let n: usize = rd.iter().map(|&d| self.dims()[d]).product();
        self.sum(dims, keepdim)?.mul_scalar(1.0 / n.max(1) as f64)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.mul_scalar(1.0 / self.elem_count().max(1) as f64)
    }

    fn max_min(&self, dims: &[isize], keepdim: bool, op: ReduceOp, name: &'static str) -> Result<Tensor> {
        let dims = self.resolve_dims(dims, name)?;
        let storage = self.storage().reduce(self.layout(), &dims, op)?;
        let mut out = self.dims().to_vec();
        dims.iter().for_each(|&d| out[d] = 1);
        let y = Tensor::from_op(storage, Shape::new(out.clone()), None);
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::MaxMin { x: self.detach(), y: y.detach() }, e));
        let t = y.view(Layout::contiguous(Shape::new(out)), grad);
        if keepdim {
            Ok(t)
        } else {
            t.squeeze_dims(&dims)
        }
    }
    /// Maximum over `dims`; the gradient is shared equally among tied maxima.
    pub fn max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.max_min(dims, keepdim, ReduceOp::Max, "max")
    }
    pub fn min(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.max_min(dims, keepdim, ReduceOp::Min, "min")
    }
    fn arg(&self, dim: isize, keepdim: bool, op: ReduceOp) -> Result<Tensor> {
        let d = self.shape().resolve_dim(dim, "argmax")?;
        let storage = self.storage().reduce(self.layout(), &[d], op)?;
        let mut out = self.dims().to_vec();
        out[d] = 1;
        let t = Tensor::from_op(storage, Shape::new(out), None);
        if keepdim {
            Ok(t)
        } else {
            t.squeeze_dims(&[d])
        }
    }
    /// Index of the first maximum along `dim`, as U32.
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.arg(dim, keepdim, ReduceOp::ArgMax)
    }
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.arg(dim, keepdim, ReduceOp::ArgMin)
    }

    // ----- matmul -----

    /// Matrix product `[.., m, k] · [.., k, n]` with broadcast batch dims; strided operands are not copied.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.check_device(rhs, "matmul")?;
        let (lr, rr) = (self.rank(), rhs.rank());
        if lr < 2 || rr < 2 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        let (m, k) = (self.dims()[lr - 2], self.dims()[lr - 1]);
        let (k2, n) = (rhs.dims()[rr - 2], rhs.dims()[rr - 1]);
        if k != k2 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        let lb = Shape::new(self.dims()[..lr - 2].to_vec());
        let rb = Shape::new(rhs.dims()[..rr - 2].to_vec());
        let batch = lb.broadcast_with(&rb, "matmul").map_err(|_| Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape().clone(),
            rhs: rhs.shape().clone(),
        })?;
        let dims = MatmulDims { batch: batch.clone(), m, n, k };
        let storage = if self.same_storage(rhs) {
            let s = self.storage();
            s.matmul(self.layout(), &s, rhs.layout(), &dims)?
        } else {
            self.storage().matmul(self.layout(), &rhs.storage(), rhs.layout(), &dims)?
        };
        let mut out = batch.dims().to_vec();
        out.extend([m, n]);
        let grad: Grad = edges(&[self, rhs]).map(|e| {
            // d lhs = g · rhsᵀ needs rhs; d rhs = lhsᵀ · g needs lhs. Keep each only for a tracked partner.
            let bw = BackwardOp::Matmul {
                lhs: e[1].is_some().then(|| self.detach()),
                rhs: e[0].is_some().then(|| rhs.detach()),
                lhs_shape: self.shape().clone(),
                rhs_shape: rhs.shape().clone(),
            };
            (bw, e)
        });
        Ok(Tensor::from_op(storage, Shape::new(out), grad))
    }

    // ----- views and copies -----

    /// The same elements in a new shape (a view when contiguous, else a copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ElementCount { op: "reshape", elems: self.elem_count(), to: shape });
        }
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Reshape { from: self.shape().clone() }, e));
        match self.layout().reshape(&shape) {
            Some(l) => Ok(self.view(l, grad)),
            None => {
                let storage = self.storage().copy_contiguous(self.layout());
                Ok(Tensor::from_op(storage, shape, grad))
            }
        }
    }
    /// Flattens to one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }
    /// Reorders the dimensions (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank() || perm.iter().any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::invalid("permute", format!("{perm:?} is not a permutation of the dims of {:?}", self.dims())));
        }
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Permute { perm: perm.to_vec() }, e));
        Ok(self.view(self.layout().permute(perm), grad))
    }
    /// Swaps two dimensions (a view).
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (self.shape().resolve_dim(d0, "transpose")?, self.shape().resolve_dim(d1, "transpose")?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }
    /// Transposes the last two dimensions (a view).
    pub fn t(&self) -> Result<Tensor> {
        self.transpose(-2, -1)
    }
    /// `len` elements of `dim` starting at `start` (a view).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = self.shape().resolve_dim(dim, "narrow")?;
        let size = self.dims()[d];
        if start + len > size {
            return Err(Error::invalid("narrow", format!("range {start}..{} exceeds dim {d} of size {size}", start + len)));
        }
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Narrow { dim: d, start, size }, e));
        Ok(self.view(self.layout().narrow(d, start, len), grad))
    }
    /// Splits `dim` into `n` pieces as equal as possible (the last may be smaller), as views.
    pub fn chunk(&self, n: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = self.shape().resolve_dim(dim, "chunk")?;
        let size = self.dims()[d];
        if n == 0 {
            return Err(Error::invalid("chunk", "cannot split into 0 chunks"));
        }
        let step = size.div_ceil(n).max(1);
        (0..size).step_by(step).map(|s| self.narrow(d as isize, s, step.min(size - s))).collect()
    }
    /// Stretches size-1 (and missing leading) dims to `shape` (a view with zero strides).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        let l = self.layout().broadcast_as(&shape, "broadcast_as")?;
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Broadcast { from: self.shape().clone() }, e));
        Ok(self.view(l, grad))
    }
    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.shape().resolve_dim(dim, "squeeze")?;
        if self.dims()[d] != 1 {
            return Err(Error::InvalidShape { op: "squeeze", shape: self.shape().clone(), msg: format!("dim {d} is not 1") });
        }
        self.squeeze_dims(&[d])
    }
    /// Inserts a dimension of size 1 at `dim` (0..=rank; negative counts from the end of the new shape).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let r = self.rank() as isize + 1;
        let d = if dim < 0 { dim + r } else { dim };
        if d < 0 || d >= r {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, shape: self.shape().clone() });
        }
        let mut dims = self.dims().to_vec();
        dims.insert(d as usize, 1);
        self.reshape(dims)
    }
    /// A row-major copy when the view is not already contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let storage = self.storage().copy_contiguous(self.layout());
        let grad: Grad = edges(&[self]).map(|e| (BackwardOp::Identity, e));
        Ok(Tensor::from_op(storage, self.shape().clone(), grad))
    }
    /// Converts to `dtype` (a copy; floats round to nearest even, floats to integers truncate).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let storage = self.storage().to_dtype(self.layout(), dtype);
        let grad: Grad = (dtype.is_float() && self.dtype().is_float())
            .then(|| edges(&[self]).map(|e| (BackwardOp::Cast { from: self.dtype() }, e)))
            .flatten();
        Ok(Tensor::from_op(storage, self.shape().clone(), grad))
    }

    /// Joins tensors along `dim`; all other dims must agree.
    pub fn cat(parts: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| Error::invalid("cat", "no tensors to concatenate"))?;
        let d = first.shape().resolve_dim(dim, "cat")?;
        for p in parts {
            first.check_device(p, "cat")?;
            let ok = p.rank() == first.rank() && (0..p.rank()).all(|i| i == d || p.dims()[i] == first.dims()[i]);
            if !ok {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().clone(), rhs: p.shape().clone() });
            }
        }
        let guards: Vec<_> = parts.iter().map(|p| p.storage()).collect();
        let args: Vec<(&Storage, &Layout)> = guards.iter().zip(parts).map(|(g, p)| (&**g, p.layout())).collect();
        let storage = Storage::concat(&args, d)?;
        drop(args);
        drop(guards);
        let mut out = first.dims().to_vec();
        out[d] = parts.iter().map(|p| p.dims()[d]).sum();
        let grad: Grad = edges(parts).map(|e| (BackwardOp::Concat { dim: d, sizes: parts.iter().map(|p| p.dims()[d]).collect() }, e));
        Ok(Tensor::from_op(storage, Shape::new(out), grad))
    }
    /// Stacks same-shaped tensors along a new dimension `dim`.
    pub fn stack(parts: &[&Tensor], dim: isize) -> Result<Tensor> {
        let us = parts.iter().map(|p| p.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&us.iter().collect::<Vec<_>>(), dim)
    }
}
