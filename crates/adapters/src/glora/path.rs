//! One GLoRA path (A, B, C, D or E) of one adapter: the parameter kinds it holds (a low-rank pair up to some
//! rank, a vector, a scalar), the shape it is active on, its value, its PEFT tensors and their loading.

use std::collections::HashMap;

use rankfold_tensor::nn::init;
use rankfold_tensor::{DType, Device, Rng, Shape, Tensor};

use super::layer::glora_error;
use super::{PathKind, Support};
use crate::Result;

/// The parameter kinds one path holds; which one is in use is the path's `active` shape.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub(crate) kind: PathKind,
    pub(crate) active: Support,
    /// `(Xd, Xu)` at the largest rank allocated.
    lowrank: Option<(Tensor, Tensor)>,
    vector: Option<Tensor>,
    scalar: Option<Tensor>,
}

/// Sizes of the layer a path belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) in_f: usize,
    pub(crate) out_f: usize,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

impl Path {
    /// PEFT's shapes for the low-rank pair `(Xd, Xu)` of rank r.
    fn lowrank_shapes(kind: PathKind, d: Dims, r: usize) -> ([usize; 2], [usize; 2]) {
        match kind {
            PathKind::C => ([d.in_f, r], [r, 1]),
            _ => ([d.out_f, r], [r, d.in_f]),
        }
    }
    /// PEFT's shape of a vector path: `[out, 1]` for A and B, `[in, 1]` for C, `[out]` for D and E.
    fn vector_shape(kind: PathKind, d: Dims) -> Vec<usize> {
        match kind {
            PathKind::A | PathKind::B => vec![d.out_f, 1],
            PathKind::C => vec![d.in_f, 1],
            PathKind::D | PathKind::E => vec![d.out_f],
        }
    }
    /// PEFT's shape of the `zeros` buffer a path that is off saves.
    fn zeros_shape(kind: PathKind, d: Dims) -> Vec<usize> {
        match kind {
            PathKind::A | PathKind::B => vec![d.out_f, d.in_f],
            PathKind::C => vec![d.in_f, 1],
            PathKind::D | PathKind::E => vec![d.out_f],
        }
    }

    /// A path that can take every shape in `shapes` (all the kinds they need, low-rank at their largest rank),
    /// active on `active`, initialized as PEFT's `reset_parameters(init_weights)`: with `init_weights` the path
    /// starts as a no-op (`Xd`, vectors and scalars zero, `Xu` Kaiming-uniform with a = √5); without it every
    /// tensor is random (Kaiming-uniform, scalars N(0, 0.02²)).
    pub(crate) fn new(
        kind: PathKind,
        shapes: &[Support],
        active: Support,
        d: Dims,
        init_weights: bool,
        rng: &mut Rng,
    ) -> Result<Path> {
        let mut p = Path {
            kind,
            active,
            lowrank: None,
            vector: None,
            scalar: None,
        };
        let max_r = shapes
            .iter()
            .filter_map(|s| {
                if let Support::LowRank(r) = s {
                    Some(*r)
                } else {
                    None
                }
            })
            .max();
        let leaf = |t: Tensor| t.with_requires_grad(true);
        if let Some(r) = max_r {
            let (sd, su) = Self::lowrank_shapes(kind, d, r);
            let xu = init::kaiming_uniform(su.to_vec(), init::SQRT_5, rng, d.dtype, d.device)?;
            let xd = if init_weights {
                init::zeros(sd.to_vec(), d.dtype, d.device)?
            } else {
                init::kaiming_uniform(sd.to_vec(), init::SQRT_5, rng, d.dtype, d.device)?
            };
            p.lowrank = Some((leaf(xd), leaf(xu)));
        }
        if shapes.contains(&Support::Vector) {
            let shape = Self::vector_shape(kind, d);
            let v = if init_weights {
                init::zeros(shape, d.dtype, d.device)?
            } else if shape.len() == 1 {
                // PyTorch draws a 1-D vector as the row X.unsqueeze(0): fan_in = its length.
                init::kaiming_uniform(vec![1, shape[0]], init::SQRT_5, rng, d.dtype, d.device)?
                    .reshape(shape)?
            } else {
                init::kaiming_uniform(shape, init::SQRT_5, rng, d.dtype, d.device)?
            };
            p.vector = Some(leaf(v));
        }
        if shapes.contains(&Support::Scalar) {
            let s = if init_weights {
                init::zeros(1, d.dtype, d.device)?
            } else {
                init::normal(1, 0.0, 0.02, rng, d.dtype, d.device)?
            };
            p.scalar = Some(leaf(s));
        }
        p.check_can_take(active)?;
        Ok(p)
    }

    /// Makes every tensor of the path a trainable leaf (`on`) or frozen (`!on`); handles change only when the
    /// state does.
    pub(crate) fn set_trainable(&mut self, on: bool) {
        let flip = |t: &mut Tensor| {
            if t.requires_grad() != on {
                *t = t.with_requires_grad(on);
            }
        };
        if let Some((xd, xu)) = &mut self.lowrank {
            flip(xd);
            flip(xu);
        }
        self.vector.iter_mut().for_each(flip);
        self.scalar.iter_mut().for_each(flip);
    }

    /// Whether the path holds what shape `s` needs.
    pub(crate) fn can_take(&self, s: Support) -> bool {
        match s {
            Support::None => true,
            Support::Scalar => self.scalar.is_some(),
            Support::Vector => self.vector.is_some(),
            Support::LowRank(r) => self
                .lowrank
                .as_ref()
                .is_some_and(|(xd, _)| r <= xd.dims()[1]),
        }
    }

    pub(crate) fn check_can_take(&self, s: Support) -> Result<()> {
        if !self.kind.allows(s) || !self.can_take(s) {
            return Err(glora_error(format!(
                "GLoRA path {}: cannot take the shape `{s}` (it holds {})",
                self.kind.peft_name(),
                self.holdings()
            )));
        }
        Ok(())
    }

    fn holdings(&self) -> String {
        let mut v = Vec::new();
        if let Some((xd, _)) = &self.lowrank {
            v.push(format!("lora up to rank {}", xd.dims()[1]));
        }
        if self.vector.is_some() {
            v.push("vector".into());
        }
        if self.scalar.is_some() {
            v.push("constant".into());
        }
        if v.is_empty() {
            "nothing".into()
        } else {
            v.join(", ")
        }
    }

    /// The low-rank pair sliced to rank r (views, so gradients reach the shared tensors).
    pub(crate) fn lowrank_at(&self, r: usize) -> Result<(Tensor, Tensor)> {
        let (xd, xu) = self.lowrank.as_ref().ok_or_else(|| {
            glora_error(format!(
                "GLoRA path {}: no low-rank weights",
                self.kind.peft_name()
            ))
        })?;
        if r == xd.dims()[1] {
            return Ok((xd.clone(), xu.clone()));
        }
        Ok((xd.narrow(1, 0, r)?, xu.narrow(0, 0, r)?))
    }

    /// The path's value as PEFT's `forward()` returns it (`Xd·Xu`, `X`, or the scalar as `[1]`), or None when off.
    pub(crate) fn value(&self) -> Result<Option<Tensor>> {
        self.check_can_take(self.active)?;
        Ok(match self.active {
            Support::None => None,
            Support::LowRank(r) => {
                let (xd, xu) = self.lowrank_at(r)?;
                Some(xd.matmul(&xu)?)
            }
            Support::Vector => self.vector.clone(),
            Support::Scalar => self.scalar.clone(),
        })
    }

    /// Every tensor the path holds (trainable leaves), named as PEFT names the active kind (`Xd`, `Xu`, `X`);
    /// a supernet path that also holds a vector and a scalar names them `X` and `X_scalar`.
    pub(crate) fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = Vec::new();
        if let Some((xd, xu)) = &self.lowrank {
            v.push(("Xd", xd.clone()));
            v.push(("Xu", xu.clone()));
        }
        let both = self.vector.is_some() && self.scalar.is_some();
        if let Some(x) = &self.vector {
            v.push(("X", x.clone()));
        }
        if let Some(x) = &self.scalar {
            v.push((if both { "X_scalar" } else { "X" }, x.clone()));
        }
        v
    }

    /// The tensors of the active shape only, as PEFT saves them (low-rank cut to the active rank as a fresh
    /// contiguous copy; a path that is off saves its `zeros` buffer).
    pub(crate) fn peft_tensors(&self, d: Dims) -> Result<Vec<(&'static str, Tensor)>> {
        self.check_can_take(self.active)?;
        Ok(match self.active {
            Support::None => vec![(
                "zeros",
                Tensor::zeros(Self::zeros_shape(self.kind, d), d.dtype, d.device)?,
            )],
            Support::LowRank(r) => {
                let (xd, xu) = self.lowrank_at(r)?;
                vec![
                    ("Xd", xd.detach().contiguous()?),
                    ("Xu", xu.detach().contiguous()?),
                ]
            }
            Support::Vector => vec![(
                "X",
                self.vector
                    .as_ref()
                    .expect("checked by check_can_take")
                    .detach(),
            )],
            Support::Scalar => vec![(
                "X",
                self.scalar
                    .as_ref()
                    .expect("checked by check_can_take")
                    .detach(),
            )],
        })
    }

    /// Keeps only what the shape `s` needs, low-rank cut to rank r (fresh leaves); `s` becomes the active shape.
    pub(crate) fn fix(&mut self, s: Support) -> Result<()> {
        self.check_can_take(s)?;
        let lowrank = match s {
            Support::LowRank(r) => {
                let (xd, xu) = self.lowrank_at(r)?;
                if r == xd.dims()[1]
                    && self
                        .lowrank
                        .as_ref()
                        .is_some_and(|(d0, _)| d0.id() == xd.id())
                {
                    Some((xd, xu))
                } else {
                    Some((
                        xd.detach().contiguous()?.with_requires_grad(true),
                        xu.detach().contiguous()?.with_requires_grad(true),
                    ))
                }
            }
            _ => None,
        };
        self.lowrank = lowrank;
        if s != Support::Vector {
            self.vector = None;
        }
        if s != Support::Scalar {
            self.scalar = None;
        }
        self.active = s;
        Ok(())
    }

    /// Copies PEFT tensors (keys `<glora_X>.<p>` in `t`, already stripped of the module path) into this path,
    /// in place (tensor ids are kept). Every key the active shape needs must be there with PEFT's shape; the
    /// error names the key (relative to the layer: the caller fills in the file and module path).
    pub(crate) fn load(&self, t: &HashMap<String, Tensor>, d: Dims) -> Result<()> {
        let pre = self.kind.peft_name();
        let get = |p: &str, want: &[usize]| -> Result<Tensor> {
            let shape = Shape::new(want.to_vec());
            crate::layer::take_tensor(t, &format!("{pre}.{p}"), &shape, d.dtype)
        };
        match self.active {
            Support::None => {
                // PEFT saves the buffer of a path that is off; it carries no information, so only its shape
                // is checked when present.
                if t.contains_key(&format!("{pre}.zeros")) {
                    get("zeros", &Self::zeros_shape(self.kind, d))?;
                }
            }
            Support::LowRank(r) => {
                let (xd, xu) = self
                    .lowrank
                    .as_ref()
                    .ok_or_else(|| glora_error(format!("{pre}: no low-rank weights")))?;
                let (sd, su) = Self::lowrank_shapes(self.kind, d, r);
                if xd.dims()[1] != r {
                    return Err(glora_error(format!(
                        "{pre}: holds rank {} but is active at rank {r}; fix it first",
                        xd.dims()[1]
                    )));
                }
                xd.assign(&get("Xd", &sd)?)?;
                xu.assign(&get("Xu", &su)?)?;
            }
            Support::Vector => {
                let x = self
                    .vector
                    .as_ref()
                    .expect("an active vector path holds a vector");
                x.assign(&get("X", &Self::vector_shape(self.kind, d))?)?;
            }
            Support::Scalar => {
                let x = self
                    .scalar
                    .as_ref()
                    .expect("an active scalar path holds a scalar");
                x.assign(&get("X", &[1])?)?;
            }
        }
        Ok(())
    }
}
