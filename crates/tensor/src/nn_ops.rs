//! Fused neural-network ops: softmax and log-softmax, the causal attention softmax, the SwiGLU gate, layer norm and RMS norm,
//! embedding / index_select, gather, cross-entropy, rotary position embedding, masks and dropout.

use std::sync::Arc;

use crate::backprop::{edges, BackwardOp};
use crate::cpu::{self, CeArgs, NormArgs};
use crate::{DType, Device, Error, Result, Rng, Shape, Storage, Tensor};

/// Options of [`Tensor::cross_entropy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropyOpts {
    /// Targets equal to this are skipped (PyTorch uses −100).
    pub ignore_index: Option<i64>,
    /// ε of label smoothing: the target distribution is (1−ε)·one-hot + ε/C.
    pub label_smoothing: f64,
}

/// The two common layouts of rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotates `(x[i], x[i + d/2])` — Llama in transformers, GPT-NeoX.
    RotateHalf,
    /// Rotates `(x[2i], x[2i+1])` — the original Meta Llama code and GPT-J.
    Interleaved,
}

pub(crate) struct NormSaved {
    pub(crate) x: Tensor,
    pub(crate) w: Option<Tensor>,
    pub(crate) mean: Tensor,
    pub(crate) rstd: Tensor,
    pub(crate) eps: f64,
    pub(crate) rms: bool,
}

pub(crate) fn norm_backward(s: NormSaved, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let (xs, ms, rs, gs) = (s.x.storage(), s.mean.storage(), s.rstd.storage(), g.storage());
    let ws = s.w.as_ref().map(|w| w.storage());
    let args = NormArgs {
        x: (xs.cpu(), s.x.layout()),
        w: ws.as_ref().zip(s.w.as_ref()).map(|(st, w)| (st.cpu(), w.layout())),
        // The bias gradient needs only the upstream gradient, never the bias itself.
        b: None,
        eps: s.eps,
        rms: s.rms,
    };
    let out = cpu::norm_bwd(args, ms.cpu(), rs.cpu(), (gs.cpu(), g.layout()), [need[0], need[1], need[2]])?;
    let d = s.x.dims()[s.x.rank() - 1];
    let gx = need[0].then(|| Tensor::from_op(Storage::Cpu(out.gx), s.x.shape().clone(), None));
    let gw = out.gw.map(|w| Tensor::from_op(Storage::Cpu(w), Shape::from(d), None));
    let gb = out.gb.map(|b| Tensor::from_op(Storage::Cpu(b), Shape::from(d), None));
    Ok(vec![gx, gw, gb])
}

pub(crate) fn rope_raw(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool, inverse: bool) -> Result<Tensor> {
    let storage = {
        let (xs, cs, ss) = (x.storage(), cos.storage(), sin.storage());
        Storage::Cpu(cpu::rope((xs.cpu(), x.layout()), (cs.cpu(), cos.layout()), (ss.cpu(), sin.layout()), interleaved, inverse)?)
    };
    Ok(Tensor::from_op(storage, x.shape().clone(), None))
}

impl Tensor {
    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let d = self.shape().resolve_dim(dim, "softmax")?;
        let last = self.rank() - 1;
        if d != last {
            return self.transpose(d as isize, -1)?.softmax_impl(-1, log)?.transpose(d as isize, -1);
        }
        let storage = self.storage().softmax_last(self.layout(), log)?;
        let y = Tensor::from_op(storage, self.shape().clone(), None);
        match edges(&[self]) {
            None => Ok(y),
            Some(e) => Ok(y.view(y.layout().clone(), Some((BackwardOp::Softmax { y: y.detach(), log }, e)))),
        }
    }
    /// Numerically stable softmax along `dim`.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }
    /// Numerically stable log-softmax along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    /// Softmax over the last dim of `scale · self` for attention scores [.., t, tk] under a causal mask: query row
    /// i sits at position `offset + i` and sees the keys j ≤ offset + i; the others get probability exactly 0.
    /// Equal to `(self · scale).masked_fill(mask, f32::MIN).softmax(-1)` with the causal mask, in one pass
    /// that materializes neither the mask nor the scaled scores, and whose backward is one pass too.
    pub fn causal_softmax(&self, scale: f64, offset: usize) -> Result<Tensor> {
        if self.rank() < 2 {
            let msg = "expected scores [.., t, tk]".into();
            return Err(Error::InvalidShape { op: "causal_softmax", shape: self.shape().clone(), msg });
        }
        let (t, tk) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        if offset + t > tk {
            let msg = format!("{t} queries after {offset} cached positions need {} keys, found {tk}", offset + t);
            return Err(Error::invalid("causal_softmax", msg));
        }
        let args = cpu::CausalArgs { t, tk, offset, scale };
        let storage = {
            let xs = self.storage();
            Storage::Cpu(cpu::causal_softmax((xs.cpu(), self.layout()), args)?)
        };
        let y = Tensor::from_op(storage, self.shape().clone(), None);
        match edges(&[self]) {
            None => Ok(y),
            Some(e) => Ok(y.view(y.layout().clone(), Some((BackwardOp::CausalSoftmax { y: y.detach(), args }, e)))),
        }
    }

    /// SwiGLU's gate `silu(self) · up` for two tensors of one shape, fused: one pass forward, one pass backward,
    /// and only the two inputs kept for the backward (the unfused pair also keeps `silu(self)`). Bit for bit equal
    /// to `self.silu()?.mul(up)` and its gradients.
    pub fn swiglu(&self, up: &Tensor) -> Result<Tensor> {
        if self.dims() != up.dims() {
            return Err(Error::ShapeMismatch { op: "swiglu", lhs: self.shape().clone(), rhs: up.shape().clone() });
        }
        let storage = {
            let (gs, us) = (self.storage(), up.storage());
            Storage::Cpu(cpu::swiglu((gs.cpu(), self.layout()), (us.cpu(), up.layout()))?)
        };
        let grad = edges(&[self, up]).map(|e| (BackwardOp::SwiGlu { gate: self.detach(), up: up.detach() }, e));
        Ok(Tensor::from_op(storage, self.shape().clone(), grad))
    }

    fn norm_impl(&self, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64, rms: bool) -> Result<Tensor> {
        let op = if rms { "rms_norm" } else { "layer_norm" };
        let d = *self.dims().last().ok_or_else(|| Error::invalid(op, "input is a scalar"))?;
        for p in [w, b].into_iter().flatten() {
            if p.dims() != [d] {
                return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: p.shape().clone() });
            }
            if p.dtype() != self.dtype() {
                return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: p.dtype() });
            }
        }
        let (xs, ws, bs) = (self.storage(), w.map(|w| w.storage()), b.map(|b| b.storage()));
        let args = NormArgs {
            x: (xs.cpu(), self.layout()),
            w: ws.as_ref().zip(w).map(|(s, t)| (s.cpu(), t.layout())),
            b: bs.as_ref().zip(b).map(|(s, t)| (s.cpu(), t.layout())),
            eps,
            rms,
        };
        let out = cpu::norm_fwd(args)?;
        drop((xs, ws, bs));
        let y = Tensor::from_op(Storage::Cpu(out.y), self.shape().clone(), None);
        let mut e = match edges(&[self]) {
            Some(e) => e,
            None => vec![None],
        };
        e.push(w.and_then(|t| if crate::backprop::grad_enabled() { t.node().cloned() } else { None }));
        e.push(b.and_then(|t| if crate::backprop::grad_enabled() { t.node().cloned() } else { None }));
        if e.iter().all(Option::is_none) {
            return Ok(y);
        }
        let rows = self.elem_count() / d.max(1);
        let mean = Tensor::from_op(Storage::Cpu(out.mean), Shape::from(rows), None);
        let rstd = Tensor::from_op(Storage::Cpu(out.rstd), Shape::from(rows), None);
        let bw = BackwardOp::Norm { x: self.detach(), w: w.map(Tensor::detach), mean, rstd, eps, rms };
        Ok(y.view(y.layout().clone(), Some((bw, e))))
    }
    /// Layer norm over the last dimension with optional weight and bias (`[d]` each).
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        self.norm_impl(weight, bias, eps, false)
    }
    /// RMS norm over the last dimension: `x / sqrt(mean(x²) + eps) · weight`.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        self.norm_impl(weight, None, eps, true)
    }

    /// Selects entries `ids` (a 1-D integer tensor) along `dim`.
    pub fn index_select(&self, ids: &Tensor, dim: isize) -> Result<Tensor> {
        let d = self.shape().resolve_dim(dim, "index_select")?;
        if ids.rank() != 1 {
            return Err(Error::InvalidShape { op: "index_select", shape: ids.shape().clone(), msg: "indices must be 1-D".into() });
        }
        let idv = Arc::new(ids.storage().index_vec(ids.layout(), "index_select")?);
        let storage = self.storage().index_select(self.layout(), d, &idv)?;
        let mut out = self.dims().to_vec();
        out[d] = idv.len();
        let size = self.dims()[d];
        let grad = edges(&[self]).map(|e| (BackwardOp::IndexSelect { ids: idv.clone(), dim: d, size }, e));
        Ok(Tensor::from_op(storage, Shape::new(out), grad))
    }

    /// Looks up rows of this [vocab, d] table for integer `ids` of any shape → [ids.., d].
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, d) = self.dims2("embedding")?;
        let flat = ids.flatten_all()?;
        let rows = self.index_select(&flat, 0)?;
        let mut out = ids.dims().to_vec();
        out.push(d);
        rows.reshape(out)
    }

    /// `out[.., j, ..] = self[.., ids[.., j, ..], ..]` along `dim`; `ids` matches this shape except at `dim`.
    pub fn gather(&self, ids: &Tensor, dim: isize) -> Result<Tensor> {
        let d = self.shape().resolve_dim(dim, "gather")?;
        let ok = ids.rank() == self.rank() && (0..self.rank()).all(|i| i == d || ids.dims()[i] == self.dims()[i]);
        if !ok {
            return Err(Error::ShapeMismatch { op: "gather", lhs: self.shape().clone(), rhs: ids.shape().clone() });
        }
        let idv = Arc::new(ids.storage().index_vec(ids.layout(), "gather")?);
        let storage = self.storage().gather(self.layout(), d, &idv, ids.dims())?;
        let grad = edges(&[self]).map(|e| (BackwardOp::Gather { ids: idv.clone(), dim: d, dims: self.dims().to_vec() }, e));
        Ok(Tensor::from_op(storage, ids.shape().clone(), grad))
    }

    /// Mean cross-entropy of logits [.., C] against integer targets [..]; a rank-0 result.
    pub fn cross_entropy(&self, targets: &Tensor, opts: CrossEntropyOpts) -> Result<Tensor> {
        let c = *self.dims().last().ok_or_else(|| Error::invalid("cross_entropy", "logits are a scalar"))?;
        if targets.elem_count() * c != self.elem_count() || targets.dims() != &self.dims()[..self.rank() - 1] {
            return Err(Error::ShapeMismatch { op: "cross_entropy", lhs: self.shape().clone(), rhs: targets.shape().clone() });
        }
        if !(0.0..1.0).contains(&opts.label_smoothing) {
            return Err(Error::invalid("cross_entropy", format!("label_smoothing {} is outside [0, 1)", opts.label_smoothing)));
        }
        let logits = self.reshape((targets.elem_count(), c))?;
        let t = Arc::new(targets.storage().index_vec(targets.layout(), "cross_entropy")?);
        let args = CeArgs { ignore_index: opts.ignore_index, label_smoothing: opts.label_smoothing };
        let (loss, lse, count) = {
            let ls = logits.storage();
            cpu::cross_entropy_fwd((ls.cpu(), logits.layout()), &t, args)?
        };
        let out = Tensor::full(loss, (), self.dtype().compute(), self.device())?.to_dtype(self.dtype())?;
        match edges(&[&logits]) {
            None => Ok(out),
            Some(e) => {
                let lse = Tensor::from_op(Storage::Cpu(lse), Shape::from(t.len()), None);
                let bw = BackwardOp::CrossEntropy { logits: logits.detach(), lse, targets: t, args, count };
                Ok(out.view(out.layout().clone(), Some((bw, e))))
            }
        }
    }

    /// Rotary position embedding of `self` [.., t, d] with `cos`/`sin` tables [t, d/2] (see [`rope_tables`]).
    pub fn rope(&self, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 || self.dims()[r - 1] % 2 != 0 {
            return Err(Error::InvalidShape { op: "rope", shape: self.shape().clone(), msg: "expected [.., t, d] with even d".into() });
        }
        let (t, d) = (self.dims()[r - 2], self.dims()[r - 1]);
        for tab in [cos, sin] {
            if tab.dims() != [t, d / 2] {
                return Err(Error::ShapeMismatch { op: "rope", lhs: self.shape().clone(), rhs: tab.shape().clone() });
            }
        }
        let inter = style == RopeStyle::Interleaved;
        let y = rope_raw(self, cos, sin, inter, false)?;
        match edges(&[self]) {
            None => Ok(y),
            Some(e) => Ok(y.view(y.layout().clone(), Some((BackwardOp::Rope { cos: cos.detach(), sin: sin.detach(), interleaved: inter }, e)))),
        }
    }

    /// Replaces the elements where `mask` (broadcastable, integer) is non-zero by `value`.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::full(value, (), self.dtype(), self.device())?;
        mask.where_cond(&fill, self)
    }

    /// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1−p).
    pub fn dropout(&self, p: f64, rng: &mut Rng) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("dropout", format!("probability {p} is outside [0, 1)")));
        }
        if p == 0.0 {
            return Ok(self.clone());
        }
        let scale = 1.0 / (1.0 - p);
        let keep: Vec<f32> = (0..self.elem_count()).map(|_| if rng.uniform() >= p { scale as f32 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(keep, self.shape().clone(), self.device())?.to_dtype(self.dtype())?;
        self.mul(&mask)
    }
}

/// cos/sin tables [t, d/2] for RoPE with base `theta`: angle(p, i) = p · theta^(−2i/d).
pub fn rope_tables(t: usize, d: usize, theta: f64, dtype: DType, device: Device) -> Result<(Tensor, Tensor)> {
    let h = d / 2;
    let mut cos = Vec::with_capacity(t * h);
    let mut sin = Vec::with_capacity(t * h);
    for p in 0..t {
        for i in 0..h {
            let a = p as f64 * theta.powf(-2.0 * i as f64 / d as f64);
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let mk = |v: Vec<f64>| Tensor::from_vec(v, (t, h), device)?.to_dtype(dtype);
    Ok((mk(cos)?, mk(sin)?))
}

/// A [t, t] U8 mask that is 1 where query i may attend key j (j ≤ i).
pub fn causal_mask(t: usize, device: Device) -> Result<Tensor> {
    let v: Vec<u8> = (0..t * t).map(|k| ((k % t) <= (k / t)) as u8).collect();
    Tensor::from_vec(v, (t, t), device)
}

/// A [b, t] U8 mask that is 1 for the first `lengths[i]` positions of row i (real tokens) and 0 for padding.
pub fn padding_mask(lengths: &[usize], t: usize, device: Device) -> Result<Tensor> {
    let v: Vec<u8> = lengths.iter().flat_map(|&l| (0..t).map(move |j| (j < l) as u8)).collect();
    Tensor::from_vec(v, (lengths.len(), t), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unfused reference: scale, fill the masked keys (j > offset + i) with the lowest f32, softmax.
    fn reference(x: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
        let (t, tk) = (x.dims()[x.rank() - 2], x.dims()[x.rank() - 1]);
        let m: Vec<u8> = (0..t * tk).map(|n| (n % tk > offset + n / tk) as u8).collect();
        let mask = Tensor::from_vec(m, (t, tk), x.device())?;
        x.mul_scalar(scale)?.masked_fill(&mask, f32::MIN as f64)?.softmax(-1)
    }

    #[test]
    fn causal_softmax_matches_mask_fill_softmax() -> Result<()> {
        let mut rng = Rng::new(0x6361_7573);
        // Awkward sizes (rows shorter and longer than the 16 lanes of the sums, a strided input, a cached prefix),
        // f32 forward compared bit for bit, backward against the composite's autograd with a random upstream.
        for (dims, offset, transposed) in [(vec![3, 5, 5], 0, false), (vec![2, 2, 7, 37], 30, false), (vec![2, 19, 19], 0, true)] {
            let x = rng.normal_tensor(0.0, 3.0, dims.clone(), DType::F32, Device::Cpu)?;
            let x = if transposed { x.transpose(1, 2)? } else { x };
            let x = x.with_requires_grad(true);
            let up = rng.normal_tensor(0.0, 1.0, dims.clone(), DType::F32, Device::Cpu)?;
            let scale = 0.37;
            let (got, want) = (x.causal_softmax(scale, offset)?, reference(&x, scale, offset)?);
            assert_eq!(got.to_vec_f32()?, want.to_vec_f32()?, "forward {dims:?} offset {offset}");
            let g_got = got.mul(&up)?.sum_all()?.backward()?.get(&x).expect("a gradient").to_vec_f32()?;
            let g_want = want.mul(&up)?.sum_all()?.backward()?.get(&x).expect("a gradient").to_vec_f32()?;
            for (a, b) in g_got.iter().zip(&g_want) {
                assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "backward {dims:?}: {a} vs {b}");
            }
        }
        let x = Tensor::zeros((2, 4, 3), DType::F32, Device::Cpu)?;
        let e = x.causal_softmax(1.0, 0).expect_err("4 queries over 3 keys");
        assert!(e.to_string().contains("causal_softmax"), "{e}");
        Ok(())
    }

    #[test]
    fn swiglu_is_silu_times_up_bit_for_bit() -> Result<()> {
        let mut rng = Rng::new(0x7377_6967);
        // Sizes below and above the parallel threshold, a strided gate, and each input frozen in turn.
        for (dims, strided, frozen) in [(vec![3, 7], false, None), (vec![97, 401], true, None), (vec![5, 11], false, Some(0)), (vec![181, 199], false, Some(1))] {
            let g = rng.normal_tensor(0.0, 3.0, dims.clone(), DType::F32, Device::Cpu)?;
            let g = if strided { g.t()?.contiguous()?.t()? } else { g };
            let u = rng.normal_tensor(0.0, 1.0, dims.clone(), DType::F32, Device::Cpu)?;
            let (g, u) = (g.with_requires_grad(frozen != Some(0)), u.with_requires_grad(frozen != Some(1)));
            let up = rng.normal_tensor(0.0, 1.0, dims.clone(), DType::F32, Device::Cpu)?;
            let (got, want) = (g.swiglu(&u)?, g.silu()?.mul(&u)?);
            assert_eq!(got.to_vec_f32()?, want.to_vec_f32()?, "forward {dims:?}");
            let gg = got.mul(&up)?.sum_all()?.backward()?;
            let gw = want.mul(&up)?.sum_all()?.backward()?;
            for t in [&g, &u] {
                let (a, b) = (gg.get(t).map(|x| x.to_vec_f32()).transpose()?, gw.get(t).map(|x| x.to_vec_f32()).transpose()?);
                assert_eq!(a, b, "backward {dims:?} frozen {frozen:?}");
            }
        }
        let e = Tensor::zeros((2, 3), DType::F32, Device::Cpu)?.swiglu(&Tensor::zeros((3, 2), DType::F32, Device::Cpu)?);
        assert!(e.expect_err("shapes differ").to_string().contains("swiglu"));
        Ok(())
    }
}
