//! Reverse-mode autograd: the graph `Node`, the backward table (`BackwardOp` → input gradients), `no_grad`,
//! and `GradStore`.
//!
//! What each op saves for its backward pass (only for the inputs that are tracked, so a frozen weight never
//! makes its op keep an activation that only the weight's own gradient would need):
//!
//! | op | saves |
//! |---|---|
//! | neg, sign, add, sub, affine, sum, mean, views, cast, concat | nothing (shapes only) |
//! | abs, sqr, log, gelu, gelu_erf, silu, powf | input x |
//! | sqrt, rsqrt, recip, exp, tanh, sigmoid, relu | output y |
//! | mul | the *other* operand, only when this one is tracked |
//! | div | rhs always; lhs only when rhs is tracked |
//! | maximum, minimum | both operands |
//! | matmul | rhs when lhs is tracked; lhs when rhs is tracked |
//! | max, min (reductions) | input and output |
//! | where_cond | the condition |
//! | softmax, log_softmax, causal_softmax | output y |
//! | swiglu | gate and up |
//! | layer_norm, rms_norm | input x, weight, per-row mean and 1/std |
//! | index_select, embedding, gather | the indices |
//! | cross_entropy | logits, per-row log-sum-exp, targets |
//! | rope | cos and sin tables |
//! | nf4_linear | the NF4 weight (shared, never dequantized whole) |
//!
//! Graph edges point at input *nodes*, not input tensors, so an edge never keeps an input's storage alive.
//! `backward` releases each node's saved tensors as soon as its gradient has been propagated.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::cpu::{self, BinaryOp, UnaryOp};
use crate::{DType, Error, Result, Shape, Storage, Tensor, TensorId};

/// A node of the autograd graph: either a leaf (a tensor that receives gradients) or an op.
pub(crate) struct Node {
    id: TensorId,
    op: Option<Mutex<Option<BackwardOp>>>,
    inputs: Vec<Option<Arc<Node>>>,
}

impl Node {
    pub(crate) fn leaf(id: TensorId) -> Self {
        Node { id, op: None, inputs: vec![] }
    }
    pub(crate) fn op(id: TensorId, op: BackwardOp, inputs: Vec<Option<Arc<Node>>>) -> Self {
        Node { id, op: Some(Mutex::new(Some(op))), inputs }
    }
    pub(crate) fn is_leaf(&self) -> bool {
        self.op.is_none()
    }
}

/// What an op recorded for its backward pass.
pub(crate) enum BackwardOp {
    Unary { op: UnaryOp, x: Option<Tensor>, y: Option<Tensor> },
    Binary { op: BinaryOp, lhs: Option<Tensor>, rhs: Option<Tensor>, lhs_shape: Shape, rhs_shape: Shape },
    Affine { mul: f64 },
    Powf { x: Tensor, e: f64 },
    Where { cond: Tensor, t_shape: Shape, f_shape: Shape },
    MaxMin { x: Tensor, y: Tensor },
    Matmul { lhs: Option<Tensor>, rhs: Option<Tensor>, lhs_shape: Shape, rhs_shape: Shape },
    Reshape { from: Shape },
    Permute { perm: Vec<usize> },
    Narrow { dim: usize, start: usize, size: usize },
    Broadcast { from: Shape },
    Sum { in_shape: Shape },
    Identity,
    Cast { from: DType },
    Concat { dim: usize, sizes: Vec<usize> },
    Softmax { y: Tensor, log: bool },
    CausalSoftmax { y: Tensor, args: cpu::CausalArgs },
    SwiGlu { gate: Tensor, up: Tensor },
    Norm { x: Tensor, w: Option<Tensor>, mean: Tensor, rstd: Tensor, eps: f64, rms: bool },
    IndexSelect { ids: Arc<Vec<i64>>, dim: usize, size: usize },
    Gather { ids: Arc<Vec<i64>>, dim: usize, dims: Vec<usize> },
    CrossEntropy { logits: Tensor, lse: Tensor, targets: Arc<Vec<i64>>, args: cpu::CeArgs, count: usize },
    Rope { cos: Tensor, sin: Tensor, interleaved: bool },
    Nf4Linear { w: Arc<crate::nf4::Nf4Tensor>, x_shape: Shape },
}

thread_local! {
    static NO_GRAD: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops on this thread record gradients now.
pub fn grad_enabled() -> bool {
    NO_GRAD.with(|c| c.get() == 0)
}

/// Runs `f` without recording any op for autograd (e.g. evaluation, optimizer updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}

/// Disables gradient recording on this thread until dropped.
#[derive(Debug)]
pub struct NoGradGuard(());

impl NoGradGuard {
    pub fn new() -> Self {
        NO_GRAD.with(|c| c.set(c.get() + 1));
        NoGradGuard(())
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD.with(|c| c.set(c.get() - 1));
    }
}

/// The graph edges for an op with these inputs, or None when nothing needs a gradient.
pub(crate) fn edges(inputs: &[&Tensor]) -> Option<Vec<Option<Arc<Node>>>> {
    if !grad_enabled() {
        return None;
    }
    let e: Vec<_> = inputs.iter().map(|t| t.node().cloned()).collect();
    e.iter().any(Option::is_some).then_some(e)
}

/// Gradients of leaf tensors, keyed by the tensor handle that was marked with `with_requires_grad`.
#[derive(Debug, Default)]
pub struct GradStore(HashMap<TensorId, Tensor>);

impl GradStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// The gradient of `t`, if it received one.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.0.get(&id)
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.0.remove(&t.id())
    }
    /// Sets (replaces) the gradient of `t`.
    pub fn insert(&mut self, t: &Tensor, g: Tensor) {
        self.0.insert(t.id(), g);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn ids(&self) -> impl Iterator<Item = TensorId> + '_ {
        self.0.keys().copied()
    }
    fn accumulate(map: &mut HashMap<TensorId, Tensor>, id: TensorId, g: Tensor) -> Result<()> {
        match map.remove(&id) {
            None => map.insert(id, g),
            Some(prev) => map.insert(id, prev.add(&g)?),
        };
        Ok(())
    }
}

impl Tensor {
    /// Gradients of this scalar with respect to every tracked leaf it depends on. The graph's saved tensors
    /// are released as the pass goes; calling `backward` twice on one graph is an error.
    pub fn backward(&self) -> Result<GradStore> {
        let mut store = GradStore::new();
        self.backward_into(&mut store)?;
        Ok(store)
    }

    /// Like [`Tensor::backward`] but adds the gradients into `store` (gradient accumulation across steps).
    pub fn backward_into(&self, store: &mut GradStore) -> Result<()> {
        if self.elem_count() != 1 {
            return Err(Error::Backward(format!("the loss must have one element, got shape {:?}", self.dims())));
        }
        let Some(root) = self.node().cloned() else {
            return Err(Error::Backward("the loss does not depend on any tensor that requires grad".into()));
        };
        let _ng = NoGradGuard::new();
        let order = topo_order(&root);
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(root.id, self.ones_like()?.reshape(self.shape().clone())?);
        for node in order.iter().rev() {
            let Some(g) = grads.remove(&node.id) else { continue };
            let Some(op) = &node.op else {
                // Leaf gradients are stored contiguous (a broadcast view would alias one value many times).
                GradStore::accumulate(&mut store.0, node.id, g.contiguous()?)?;
                continue;
            };
            let op = op
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| Error::Backward("this graph was already used by a backward pass".into()))?;
            let need: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
            let input_grads = op.backward(&g, &need)?;
            for (inp, ig) in node.inputs.iter().zip(input_grads) {
                if let (Some(inp), Some(ig)) = (inp, ig) {
                    GradStore::accumulate(&mut grads, inp.id, ig)?;
                }
            }
        }
        Ok(())
    }
}

/// Nodes in topological order (inputs before users), iteratively to survive deep graphs.
fn topo_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
    while let Some((n, done)) = stack.pop() {
        if done {
            order.push(n);
            continue;
        }
        if !seen.insert(n.id) {
            continue;
        }
        stack.push((n.clone(), true));
        for i in n.inputs.iter().flatten() {
            if !seen.contains(&i.id) {
                stack.push((i.clone(), false));
            }
        }
    }
    order
}

/// Sums `g` down to `shape` over the dims that broadcasting stretched.
pub(crate) fn sum_to_shape(g: &Tensor, shape: &Shape) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let (lead, stretched) = shape.broadcast_sum_dims(g.shape());
    let lead_n = lead.len();
    let mut dims: Vec<isize> = lead.iter().map(|&d| d as isize).collect();
    dims.extend(stretched.iter().map(|&d| (d + lead_n) as isize));
    g.sum(&dims, true)?.reshape(shape.clone())
}

impl BackwardOp {
    /// Gradients for each input (None where `need` is false).
    fn backward(self, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let one = |t: Result<Tensor>| -> Result<Vec<Option<Tensor>>> { Ok(vec![Some(t?)]) };
        match self {
            BackwardOp::Unary { op, x, y } => {
                let (x, y) = (|| x.clone().ok_or_else(missing), || y.clone().ok_or_else(missing));
                one(match op {
                    UnaryOp::Neg => g.neg(),
                    UnaryOp::Abs => g.mul(&x()?.sign()?),
                    UnaryOp::Sqr => g.mul(&x()?)?.mul_scalar(2.0),
                    UnaryOp::Sqrt => g.div(&y()?)?.mul_scalar(0.5),
                    UnaryOp::Rsqrt => g.mul(&y()?.powf(3.0)?)?.mul_scalar(-0.5),
                    UnaryOp::Recip => g.mul(&y()?.sqr()?)?.neg(),
                    UnaryOp::Exp => g.mul(&y()?),
                    UnaryOp::Log => g.div(&x()?),
                    UnaryOp::Tanh => g.mul(&y()?.sqr()?.affine(-1.0, 1.0)?),
                    UnaryOp::Sigmoid => {
                        let y = y()?;
                        g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)
                    }
                    UnaryOp::Relu => {
                        let y = y()?;
                        g.mul(&y.gt(&y.zeros_like()?)?.to_dtype(g.dtype())?)
                    }
                    UnaryOp::GeluTanh => g.mul(&x()?.unary_op(UnaryOp::GeluTanhDeriv)?),
                    UnaryOp::GeluErf => g.mul(&x()?.unary_op(UnaryOp::GeluErfDeriv)?),
                    UnaryOp::Silu => g.mul(&x()?.unary_op(UnaryOp::SiluDeriv)?),
                    UnaryOp::Sign => g.zeros_like(),
                    UnaryOp::GeluTanhDeriv | UnaryOp::GeluErfDeriv | UnaryOp::SiluDeriv => {
                        Err(Error::Backward(format!("{op:?} is not differentiable")))
                    }
                })
            }
            BackwardOp::Binary { op, lhs, rhs, lhs_shape, rhs_shape } => {
                let (l, r) = (|| lhs.clone().ok_or_else(missing), || rhs.clone().ok_or_else(missing));
                let (gl, gr) = match op {
                    BinaryOp::Add => (need[0].then(|| Ok(g.clone())), need[1].then(|| Ok(g.clone()))),
                    BinaryOp::Sub => (need[0].then(|| Ok(g.clone())), need[1].then(|| g.neg())),
                    BinaryOp::Mul => (need[0].then(|| g.mul(&r()?)), need[1].then(|| g.mul(&l()?))),
                    BinaryOp::Div => (
                        need[0].then(|| g.div(&r()?)),
                        need[1].then(|| g.mul(&l()?)?.div(&r()?.sqr()?)?.neg()),
                    ),
                    BinaryOp::Maximum | BinaryOp::Minimum => {
                        let (l, r) = (l()?, r()?);
                        let pick_l = if op == BinaryOp::Maximum { l.ge(&r)? } else { l.le(&r)? };
                        let ml = pick_l.to_dtype(g.dtype())?;
                        let mr = ml.affine(-1.0, 1.0)?;
                        (need[0].then(|| g.mul(&ml)), need[1].then(|| g.mul(&mr)))
                    }
                };
                let gl = gl.transpose()?.map(|t| sum_to_shape(&t, &lhs_shape)).transpose()?;
                let gr = gr.transpose()?.map(|t| sum_to_shape(&t, &rhs_shape)).transpose()?;
                Ok(vec![gl, gr])
            }
            BackwardOp::Affine { mul } => one(g.mul_scalar(mul)),
            BackwardOp::Powf { x, e } => one(g.mul(&x.powf(e - 1.0)?.mul_scalar(e)?)),
            BackwardOp::Where { cond, t_shape, f_shape } => {
                let z = g.zeros_like()?;
                let gt = need[0].then(|| sum_to_shape(&cond.where_cond(g, &z)?, &t_shape)).transpose()?;
                let gf = need[1].then(|| sum_to_shape(&cond.where_cond(&z, g)?, &f_shape)).transpose()?;
                Ok(vec![gt, gf])
            }
            BackwardOp::MaxMin { x, y } => {
                let mask = x.eq(&y)?.to_dtype(g.dtype())?;
                let reduced: Vec<isize> = (0..x.rank()).filter(|&d| y.dims()[d] != x.dims()[d]).map(|d| d as isize).collect();
                let count = mask.sum(&reduced, true)?;
                one(mask.mul(&g.div(&count)?))
            }
            BackwardOp::Matmul { lhs, rhs, lhs_shape, rhs_shape } => {
                let gl = match (need[0], rhs) {
                    (true, Some(r)) => Some(sum_to_shape(&g.matmul(&r.t()?)?, &lhs_shape)?),
                    _ => None,
                };
                let gr = match (need[1], lhs) {
                    (true, Some(l)) if rhs_shape.rank() == 2 && l.rank() > 2 => {
                        // [b.., m, k]ᵀ·[b.., m, n] summed over the batch is one GEMM over the flattened rows.
                        let k = l.dims()[l.rank() - 1];
                        let n = g.dims()[g.rank() - 1];
                        let l2 = l.reshape((l.elem_count() / k.max(1), k))?;
                        let g2 = g.reshape((g.elem_count() / n.max(1), n))?;
                        Some(l2.t()?.matmul(&g2)?)
                    }
                    (true, Some(l)) => Some(sum_to_shape(&l.t()?.matmul(g)?, &rhs_shape)?),
                    _ => None,
                };
                Ok(vec![gl, gr])
            }
            BackwardOp::Reshape { from } => one(g.reshape(from)),
            BackwardOp::Permute { perm } => {
                let mut inv = vec![0; perm.len()];
                perm.iter().enumerate().for_each(|(i, &p)| inv[p] = i);
                one(g.permute(&inv))
            }
            BackwardOp::Narrow { dim, start, size } => {
                let len = g.dims()[dim];
                let pad = |n: usize| {
                    let mut d = g.dims().to_vec();
                    d[dim] = n;
                    Tensor::zeros(d, g.dtype(), g.device())
                };
                let (before, after) = (pad(start)?, pad(size - start - len)?);
                one(Tensor::cat(&[&before, g, &after], dim as isize))
            }
            BackwardOp::Broadcast { from } => one(sum_to_shape(g, &from)),
            BackwardOp::Sum { in_shape } => one(g.broadcast_as(in_shape)),
            BackwardOp::Identity => one(Ok(g.clone())),
            BackwardOp::Cast { from } => one(g.to_dtype(from)),
            BackwardOp::Concat { dim, sizes } => {
                let mut start = 0;
                let mut out = Vec::with_capacity(sizes.len());
                for (i, &s) in sizes.iter().enumerate() {
                    out.push(need[i].then(|| g.narrow(dim as isize, start, s)).transpose()?);
                    start += s;
                }
                Ok(out)
            }
            BackwardOp::Softmax { y, log } => {
                let storage = y.storage().softmax_last_bwd(y.layout(), &g.storage(), g.layout(), log)?;
                one(Ok(Tensor::from_op(storage, g.shape().clone(), None)))
            }
            BackwardOp::CausalSoftmax { y, args } => {
                let storage = {
                    let (ys, gs) = (y.storage(), g.storage());
                    Storage::Cpu(cpu::causal_softmax_bwd((ys.cpu(), y.layout()), (gs.cpu(), g.layout()), args)?)
                };
                one(Ok(Tensor::from_op(storage, g.shape().clone(), None)))
            }
            BackwardOp::SwiGlu { gate, up } => {
                let [dg, du] = {
                    let (gs, us, ds) = (gate.storage(), up.storage(), g.storage());
                    let (gl, ul, dl) = (gate.layout(), up.layout(), g.layout());
                    cpu::swiglu_bwd((gs.cpu(), gl), (us.cpu(), ul), (ds.cpu(), dl), [need[0], need[1]])?
                };
                let wrap = |s: Option<cpu::CpuStorage>| s.map(|s| Tensor::from_op(Storage::Cpu(s), g.shape().clone(), None));
                Ok(vec![wrap(dg), wrap(du)])
            }
            BackwardOp::Norm { x, w, mean, rstd, eps, rms } => crate::nn_ops::norm_backward(
                crate::nn_ops::NormSaved { x, w, mean, rstd, eps, rms },
                g,
                need,
            ),
            BackwardOp::IndexSelect { ids, dim, size } => {
                let storage = g.storage().index_add(g.layout(), dim, &ids, size)?;
                let mut d = g.dims().to_vec();
                d[dim] = size;
                one(Ok(Tensor::from_op(storage, Shape::new(d), None)))
            }
            BackwardOp::Gather { ids, dim, dims } => {
                let storage = g.storage().scatter_add(g.layout(), dim, &ids, &dims)?;
                one(Ok(Tensor::from_op(storage, Shape::new(dims), None)))
            }
            BackwardOp::CrossEntropy { logits, lse, targets, args, count } => {
                let gs = g.to_scalar()?;
                let storage = {
                    let (ls, lse_s) = (logits.storage(), lse.storage());
                    let Storage::Cpu(lc) = &*ls;
                    let Storage::Cpu(lsec) = &*lse_s;
                    Storage::Cpu(cpu::cross_entropy_bwd((lc, logits.layout()), lsec, &targets, args, count, gs)?)
                };
                one(Ok(Tensor::from_op(storage, logits.shape().clone(), None)))
            }
            BackwardOp::Nf4Linear { w, x_shape } => one(crate::nf4::nf4_linear_backward(g, &w, &x_shape)),
            BackwardOp::Rope { cos, sin, interleaved } => one(crate::nn_ops::rope_raw(g, &cos, &sin, interleaved, true)),
        }
    }
}

fn missing() -> Error {
    Error::Backward("an op did not save a tensor its gradient needs (internal invariant)".into())
}
