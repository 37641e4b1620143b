//! The GLoRA layer: a base [`LinearLayer`] plus named adapters, each five paths A–E whose support shapes
//! (low-rank, vector, scalar, none) are chosen per layer; forward, merge and unmerge, PEFT tensors.
//!
//! Forward, for the active adapter, computes `y = x·W'ᵀ + b'` with `W' = W0 + W0⊙A + B` and
//! `b' = b0 + b0⊙D + E + W0·C` in one of two ways that are equal in exact arithmetic:
//! - **dense** (a dense base): W' is built as a tensor and multiplied once, as PEFT does;
//! - **factorized** (an NF4 base, where W0 has no dense copy to keep): every term goes through the base's own
//!   tile-by-tile product `x ↦ x·W0ᵀ`: a scalar or vector A scales that product's columns, a rank-r A is
//!   `Σ_k ((x⊙u_k)·W0ᵀ)⊙d_k` (u_k a row of `Xu`, d_k a column of `Xd`: r more passes over W0), B is
//!   `(x·Xuᵀ)·Xdᵀ` or a scaled row sum of x, and `W0·C` is the product of the row `Cᵀ` with W0ᵀ.
//!   So no full-precision copy of an NF4 weight lives across a step, and PEFT's restriction (no GLoRA on a
//!   quantized base) does not apply here.
//!
//! Each path can hold several parameter kinds at once (a low-rank pair of some maximum rank, a vector, a
//! scalar): the supernet allocates all the kinds its search space allows and switches the active shape per
//! step, a lower rank using the leading slice `Xd[:, :r]`, `Xu[:r, :]` of the same tensors. A plain adapter
//! (from a config or fixed by the search) holds exactly the kind it uses.

use std::collections::HashMap;

use rankfold_tensor::nn::{LinearLayer, Nf4Linear};
use rankfold_tensor::{DType, Device, Rng, Tensor};

use super::path::{Dims, Path};
use super::{LayerChoice, PathKind, Support};
use crate::layer::{base_with_delta, AdapterLayer, AdapterMap, MergedBase, Method};
use crate::{Error, Result};

/// The placeholder module name a layer puts in its errors; [`in_module`] replaces it with the module path
/// once the caller knows it.
const THIS_LAYER: &str = "<GLoRA layer>";

/// An error about this GLoRA layer's state or shapes.
pub(crate) fn glora_error(msg: impl Into<String>) -> Error {
    Error::module(THIS_LAYER, msg)
}

/// `e` with the module path filled in where the layer could only name itself.
pub(crate) fn in_module(e: Error, path: &str) -> Error {
    match e {
        Error::Module { module, msg } if module == THIS_LAYER => Error::module(path, msg),
        e => e,
    }
}

/// A crate error as the tensor crate's error, for [`LinearLayer::forward`].
fn to_tensor_error(e: Error) -> rankfold_tensor::Error {
    match e {
        Error::Tensor(t) => t,
        e => rankfold_tensor::Error::InvalidArgument {
            op: "glora",
            msg: e.to_string(),
        },
    }
}

/// One named GLoRA adapter on one layer: its five paths.
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    pub(crate) paths: [Path; 5],
}

impl Adapter {
    pub(crate) fn path(&self, k: PathKind) -> &Path {
        &self.paths[k as usize]
    }
    pub(crate) fn path_mut(&mut self, k: PathKind) -> &mut Path {
        &mut self.paths[k as usize]
    }
    pub(crate) fn choice(&self) -> LayerChoice {
        let mut c = LayerChoice::NONE;
        for k in PathKind::ALL {
            c.set(k, self.path(k).active);
        }
        c
    }
}

/// A linear layer with GLoRA adapters. See the module docs for the math and the two forward strategies.
#[derive(Debug)]
pub struct GloraLayer {
    /// The live base (W0 and b0, or the merged layer while adapters are merged) and the original kept aside, so
    /// unmerging restores W0 and b0 bit for bit (PEFT divides by `1 + ΣA` instead, which is inexact and fails
    /// where `1 + ΣA` is zero).
    base: MergedBase,
    adapters: AdapterMap<Adapter>,
    active: Option<String>,
    training: bool,
    /// Forces the factorized forward on a dense base (it is always used on an NF4 base); for tests and for
    /// bases whose dense weight is expensive to produce.
    pub factorized: bool,
}

impl GloraLayer {
    /// `base` with no adapter yet.
    pub(crate) fn empty(base: Box<dyn LinearLayer>) -> Self {
        GloraLayer {
            base: MergedBase::new(base),
            adapters: AdapterMap::default(),
            active: None,
            training: true,
            factorized: false,
        }
    }

    /// Wraps `base` with one adapter `name`, active, whose paths take the shapes of `choice` (C, D, E are off
    /// on a bias-free base, as in PEFT).
    pub fn new(
        base: Box<dyn LinearLayer>,
        name: &str,
        choice: LayerChoice,
        init_weights: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        let mut l = GloraLayer::empty(base);
        l.add_adapter(name, choice, init_weights, rng)?;
        Ok(l)
    }

    /// Adds adapter `name` with the shapes of `choice`. It becomes active when no adapter is; otherwise it is
    /// frozen until activated.
    pub fn add_adapter(
        &mut self,
        name: &str,
        choice: LayerChoice,
        init_weights: bool,
        rng: &mut Rng,
    ) -> Result<()> {
        let eff = choice.effective(self.has_bias());
        let options: [Vec<Support>; 5] = PathKind::ALL.map(|k| vec![eff.get(k)]);
        self.add_adapter_with_options(name, &options, eff, init_weights, rng)
    }

    /// Adds adapter `name` whose path k can take every shape of `options[k]` (the supernet's layers), on the
    /// shapes `active`; activation as in [`GloraLayer::add_adapter`].
    pub(crate) fn add_adapter_with_options(
        &mut self,
        name: &str,
        options: &[Vec<Support>; 5],
        active: LayerChoice,
        init_weights: bool,
        rng: &mut Rng,
    ) -> Result<()> {
        if self.adapters.contains(name) {
            return Err(Error::DuplicateAdapter(name.to_string()));
        }
        if let Some((k, s)) = active.invalid_path() {
            return Err(glora_error(format!(
                "adapter `{name}`: `{s}` is not allowed for path {k:?}"
            )));
        }
        let d = self.dims()?;
        let has_bias = self.has_bias();
        let mut paths = Vec::with_capacity(5);
        for k in PathKind::ALL {
            let off = k.is_bias_path() && !has_bias;
            let shapes: Vec<Support> = if off {
                vec![Support::None]
            } else {
                options[k as usize].clone()
            };
            let act = if off { Support::None } else { active.get(k) };
            paths.push(Path::new(k, &shapes, act, d, init_weights, rng)?);
        }
        let paths: [Path; 5] = paths.try_into().expect("five paths were pushed");
        self.adapters.insert(name, Adapter { paths })?;
        let active = self.active.clone().or_else(|| Some(name.to_string()));
        self.activate(active);
        Ok(())
    }

    /// Sets the active adapter and makes exactly its tensors trainable.
    fn activate(&mut self, name: Option<String>) {
        for (n, a) in self.adapters.iter_mut() {
            let on = name.as_deref() == Some(n.as_str());
            a.paths.iter_mut().for_each(|p| p.set_trainable(on));
        }
        self.active = name;
    }

    pub(crate) fn dims(&self) -> Result<Dims> {
        let base = self.base_unmerged();
        let (dtype, device) = match base.as_any().downcast_ref::<Nf4Linear>() {
            // NF4 weights live on the CPU; adapter tensors take the dtype the codes stand for.
            Some(n) => (n.dtype(), Device::Cpu),
            None => {
                let w = base.dense_weight()?;
                (w.dtype(), w.device())
            }
        };
        let dtype = if dtype.is_float() { dtype } else { DType::F32 };
        Ok(Dims {
            in_f: base.in_features(),
            out_f: base.out_features(),
            dtype,
            device,
        })
    }

    /// The original base (W0, b0), also while adapters are merged.
    pub fn base_unmerged(&self) -> &dyn LinearLayer {
        self.base.unmerged()
    }

    pub fn has_bias(&self) -> bool {
        self.base_unmerged().bias().is_some()
    }

    /// The active adapter's name, if adapters are enabled.
    pub fn active_name(&self) -> Option<&str> {
        self.active.as_deref()
    }

    pub(crate) fn adapter(&self, name: &str) -> Result<&Adapter> {
        self.adapters.find(name)
    }
    pub(crate) fn adapter_mut(&mut self, name: &str) -> Result<&mut Adapter> {
        self.adapters.find_mut(name)
    }

    /// The shapes adapter `name` uses now.
    pub fn choice(&self, name: &str) -> Result<LayerChoice> {
        Ok(self.adapter(name)?.choice())
    }

    /// Switches adapter `name` to the shapes of `choice` (the supernet's per-step sample); every shape must be
    /// one its paths hold. Bias paths stay off on a bias-free layer.
    pub fn set_choice(&mut self, name: &str, choice: LayerChoice) -> Result<()> {
        if !self.base.merged().is_empty() {
            return Err(glora_error(
                "cannot switch shapes while an adapter is merged",
            ));
        }
        let eff = choice.effective(self.has_bias());
        let a = self.adapter_mut(name)?;
        for k in PathKind::ALL {
            a.path(k).check_can_take(eff.get(k))?;
        }
        for k in PathKind::ALL {
            a.path_mut(k).active = eff.get(k);
        }
        Ok(())
    }

    /// Whether adapter `name` holds what `choice` needs (on this layer's bias).
    pub fn can_take(&self, name: &str, choice: LayerChoice) -> Result<bool> {
        let eff = choice.effective(self.has_bias());
        let a = self.adapter(name)?;
        Ok(PathKind::ALL
            .into_iter()
            .all(|k| k.allows(eff.get(k)) && a.path(k).can_take(eff.get(k))))
    }

    /// Fixes adapter `name` to `choice`: every path keeps only what that shape needs (low-rank cut to its rank).
    pub fn fix_choice(&mut self, name: &str, choice: LayerChoice) -> Result<()> {
        self.set_choice(name, choice)?;
        let eff = choice.effective(self.has_bias());
        let a = self.adapter_mut(name)?;
        for k in PathKind::ALL {
            a.path_mut(k).fix(eff.get(k))?;
        }
        let active = self.active.clone();
        self.activate(active);
        Ok(())
    }

    /// The trainable values adapter `name` uses with its current shapes.
    pub fn active_param_count(&self, name: &str) -> Result<usize> {
        let base = self.base_unmerged();
        Ok(self
            .choice(name)?
            .param_count(base.in_features(), base.out_features(), self.has_bias()))
    }

    /// `x·W0ᵀ` without the bias, through the base's own product (tile by tile for NF4).
    fn base_mm(&self, x: &Tensor) -> Result<Tensor> {
        let base = self.base_unmerged();
        match base.as_any().downcast_ref::<Nf4Linear>() {
            Some(n) => Ok(x.nf4_linear(n.weight())?),
            None => Ok(x.matmul(&base.dense_weight()?.t()?)?),
        }
    }

    /// The forward of adapter `a` over rows `x [m, in]` → `[m, out]`.
    fn adapted_rows(&self, a: &Adapter, x: &Tensor) -> Result<Tensor> {
        let base = self.base_unmerged();
        let is_nf4 = base.as_any().is::<Nf4Linear>();
        let b0 = base.bias();
        let (av, bv) = (a.path(PathKind::A).value()?, a.path(PathKind::B).value()?);
        let y = if !is_nf4 && !self.factorized {
            let w0 = base.dense_weight()?;
            let mut w = w0.clone();
            if let Some(av) = &av {
                w = w.add(&w0.mul(av)?)?;
            }
            if let Some(bv) = &bv {
                w = w.add(bv)?;
            }
            x.matmul(&w.t()?)?
        } else {
            self.factorized_weight_terms(a, x)?
        };
        match b0 {
            Some(b0) => Ok(y.add(&self.adapted_bias(a, &b0)?)?),
            None => Ok(y),
        }
    }

    /// `x·(W0 + W0⊙A + B)ᵀ` with every W0 product through [`GloraLayer::base_mm`] (see the module docs).
    fn factorized_weight_terms(&self, a: &Adapter, x: &Tensor) -> Result<Tensor> {
        let y0 = self.base_mm(x)?;
        let (m, in_f) = x.dims2("glora")?;
        let out_f = y0.dims()[1];
        let mut y = y0.clone();
        let pa = a.path(PathKind::A);
        match pa.active {
            Support::None => {}
            Support::Scalar | Support::Vector => {
                // W0⊙A with A a scalar or a column [out, 1] scales output column o of x·W0ᵀ by A[o].
                let av = pa.value()?.expect("an active path has a value");
                let av = if av.elem_count() == 1 {
                    av
                } else {
                    av.reshape(out_f)?
                };
                y = y.add(&y0.mul(&av)?)?;
            }
            Support::LowRank(r) => {
                // x·(W0⊙(Xd·Xu))ᵀ = Σ_k ((x⊙u_k)·W0ᵀ)⊙d_k, all k in one product of [r·m, in] rows.
                let (xd, xu) = pa.lowrank_at(r)?;
                let xs = x
                    .unsqueeze(0)?
                    .mul(&xu.unsqueeze(1)?)?
                    .reshape((r * m, in_f))?;
                let ys = self.base_mm(&xs)?.reshape((r, m, out_f))?;
                let d = xd.t()?.unsqueeze(1)?; // [r, 1, out]
                y = y.add(&ys.mul(&d)?.sum(&[0], false)?)?;
            }
        }
        let pb = a.path(PathKind::B);
        match pb.active {
            Support::None => {}
            Support::LowRank(r) => {
                let (xd, xu) = pb.lowrank_at(r)?;
                y = y.add(&x.matmul(&xu.t()?)?.matmul(&xd.t()?)?)?;
            }
            Support::Scalar | Support::Vector => {
                // B constant along each row: x·Bᵀ[:, o] = B[o]·Σ_i x_i.
                let bv = pb.value()?.expect("an active path has a value");
                let bv = if bv.elem_count() == 1 {
                    bv
                } else {
                    bv.reshape((1, out_f))?
                };
                y = y.add(&x.sum(&[-1], true)?.mul(&bv)?)?;
            }
        }
        Ok(y)
    }

    /// `b0 + b0⊙D + E + W0·C` `[out]`.
    fn adapted_bias(&self, a: &Adapter, b0: &Tensor) -> Result<Tensor> {
        let mut b = b0.clone();
        if let Some(d) = a.path(PathKind::D).value()? {
            b = b.add(&b0.mul(&d)?)?;
        }
        if let Some(e) = a.path(PathKind::E).value()? {
            b = b.add(&e)?;
        }
        if let Some(c) = a.path(PathKind::C).value()? {
            // W0·C [out, 1] as the row Cᵀ [1, in] times W0ᵀ.
            let wc = self.base_mm(&c.t()?)?;
            b = b.add(&wc.reshape(b0.dims().to_vec())?)?;
        }
        Ok(b)
    }

    /// ΔW `[out, in]` and Δb (`[out]`, when the base has a bias) of adapter `name`: `W0⊙A + B` and
    /// `b0⊙D + E + W0·C`, detached.
    pub fn delta(&self, name: &str) -> Result<(Tensor, Option<Tensor>)> {
        let a = self.adapter(name)?;
        let base = self.base_unmerged();
        let _ng = rankfold_tensor::NoGradGuard::new();
        let w0 = base.dense_weight()?.detach();
        let mut dw = w0.zeros_like()?;
        if let Some(av) = a.path(PathKind::A).value()? {
            dw = dw.add(&w0.mul(&av)?)?;
        }
        if let Some(bv) = a.path(PathKind::B).value()? {
            dw = dw.add(&bv)?;
        }
        let db = match base.bias() {
            Some(b0) => Some(self.adapted_bias(a, &b0.detach())?.sub(&b0)?),
            None => None,
        };
        Ok((dw.contiguous()?, db))
    }

    /// W0 + Σ ΔW and b0 + Σ Δb over the adapters `names`, each delta taken against the original W0 as PEFT
    /// does ([`base_with_delta`]: dense bases exactly up to f32 rounding, NF4 bases requantized, which rounds
    /// the merged weight to the NF4 grid).
    fn merged_base(&self, names: &[String]) -> Result<Box<dyn LinearLayer>> {
        let mut dw: Option<Tensor> = None;
        let mut db: Option<Tensor> = None;
        for n in names {
            let (w, b) = self.delta(n)?;
            dw = Some(match dw {
                Some(acc) => acc.add(&w)?,
                None => w,
            });
            db = match (db, b) {
                (Some(acc), Some(b)) => Some(acc.add(&b)?),
                (acc, b) => acc.or(b),
            };
        }
        let dw = dw.ok_or_else(|| glora_error("no adapter is merged"))?;
        base_with_delta(self.base_unmerged(), &dw, db.as_ref(), 1.0)
    }

    /// The live base (the merged layer while adapters are merged).
    pub fn live_base(&self) -> &dyn LinearLayer {
        self.base.live()
    }

    /// The trainable tensors of adapter `name`, named `glora_A.<name>.Xd`, …
    pub fn adapter_parameters(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let a = self.adapter(name)?;
        Ok(PathKind::ALL
            .into_iter()
            .flat_map(|k| {
                a.path(k)
                    .tensors()
                    .into_iter()
                    .map(move |(p, t)| (format!("{}.{name}.{p}", k.peft_name()), t))
            })
            .collect())
    }

    /// The original base with every adapter dropped (W0 even while adapters are merged).
    pub(crate) fn into_base_layer(self) -> Box<dyn LinearLayer> {
        self.base.into_unmerged()
    }

    /// Whether the layer is in training mode (the supernet samples only then).
    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl AdapterLayer for GloraLayer {
    fn method(&self) -> Method {
        Method::Glora
    }
    fn base(&self) -> &dyn LinearLayer {
        self.base.live()
    }
    /// The live base: W0 when nothing is merged, the merged layer otherwise (merge-and-unload).
    fn into_base(self: Box<Self>) -> Box<dyn LinearLayer> {
        self.base.into_live()
    }
    fn adapter_names(&self) -> Vec<String> {
        self.adapters.names().to_vec()
    }
    fn active(&self) -> Option<String> {
        self.active.clone()
    }
    /// Activates adapter `name`, or disables adapters with None (the live base alone: merged adapters stay
    /// merged, as [`crate::PeftModel::disable`] documents).
    fn set_active(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            self.adapter(n)?;
        }
        self.activate(name.map(str::to_string));
        Ok(())
    }
    fn set_training(&mut self, on: bool) {
        self.training = on;
    }
    /// Adds adapter `name` to the merged set; the live base becomes W0 + Σ ΔW of the merged adapters (the
    /// original base is kept, so [`AdapterLayer::unmerge`] is exact even on NF4).
    fn merge(&mut self, name: &str) -> Result<()> {
        self.adapter(name)?;
        if self.base.is_merged(name) {
            return Ok(());
        }
        let mut names = self.base.merged().to_vec();
        names.push(name.to_string());
        let m = self.merged_base(&names)?;
        self.base.install(name, m);
        Ok(())
    }
    /// Restores the original base, bit for bit.
    fn unmerge(&mut self) -> Result<()> {
        self.base.restore();
        Ok(())
    }
    fn merged(&self) -> Vec<String> {
        self.base.merged().to_vec()
    }
    fn merged_weight_delta(&self, name: &str) -> Result<(Tensor, Option<Tensor>)> {
        self.delta(name)
    }
    /// Keys `glora_A.Xd`, `glora_C.zeros`, … (adapter name stripped), as PEFT saves them.
    fn peft_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let a = self.adapter(name)?;
        let d = self.dims()?;
        let mut v = Vec::new();
        for k in PathKind::ALL {
            for (p, t) in a.path(k).peft_tensors(d)? {
                v.push((format!("{}.{p}", k.peft_name()), t));
            }
        }
        Ok(v)
    }
    /// Loads the active shapes' tensors in place (ids kept); errors name the key relative to the layer.
    fn load_peft_tensors(&mut self, name: &str, t: &HashMap<String, Tensor>) -> Result<()> {
        if !self.base.merged().is_empty() {
            return Err(glora_error(format!(
                "cannot load adapter `{name}` while adapters are merged"
            )));
        }
        let d = self.dims()?;
        let a = self.adapter(name)?;
        let mut known = Vec::new();
        for k in PathKind::ALL {
            a.path(k).load(t, d)?;
            known.extend(
                a.path(k)
                    .peft_tensors(d)?
                    .into_iter()
                    .map(|(p, _)| format!("{}.{p}", k.peft_name())),
            );
        }
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        crate::layer::check_no_extra(t, &known)
    }
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        match &self.active {
            Some(n) => self.adapter_parameters(n).unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl LinearLayer for GloraLayer {
    fn forward(&self, x: &Tensor) -> rankfold_tensor::Result<Tensor> {
        let active = match &self.active {
            Some(n) if self.base.merged().is_empty() => n,
            _ => return self.base.live().forward(x),
        };
        let a =
            self.adapters
                .get(active)
                .ok_or_else(|| rankfold_tensor::Error::InvalidArgument {
                    op: "glora",
                    msg: format!("no adapter named `{active}`"),
                })?;
        let base = self.base.live();
        let (rows, out_dims) =
            crate::layer::rows_of(x, base.in_features(), base.out_features(), "glora")
                .map_err(to_tensor_error)?;
        self.adapted_rows(a, &rows)
            .map_err(to_tensor_error)?
            .reshape(out_dims)
    }
    fn in_features(&self) -> usize {
        self.base.live().in_features()
    }
    fn out_features(&self) -> usize {
        self.base.live().out_features()
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .base
            .live()
            .parameters()
            .into_iter()
            .map(|(n, t)| (format!("base_layer.{n}"), t))
            .collect();
        for name in self.adapters.names() {
            v.extend(self.adapter_parameters(name).unwrap_or_default());
        }
        v
    }
    fn dense_weight(&self) -> rankfold_tensor::Result<Tensor> {
        self.base.live().dense_weight()
    }
    fn bias(&self) -> Option<Tensor> {
        self.base.live().bias()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
