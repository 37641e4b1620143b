//! Optimizers ([`Sgd`], [`AdamW`], [`AdamW8bit`]) behind the [`Optimizer`] trait, learning-rate schedules ([`LrSchedule`]) and
//! gradient clipping ([`clip_grad_norm`]).
//!
//! An optimizer owns named parameter handles (`Vec<(String, Tensor)>`, e.g. from `Linear::parameters`) and
//! looks each one's gradient up in the [`GradStore`] by tensor id; a parameter with no gradient in a step is
//! skipped and its state (including its step count) does not advance, as in PyTorch. Updates are written in
//! place into the parameter's storage, so every handle and view sharing it sees the new values. State is
//! host-side f32 (`Vec<f32>`, charged to the CPU memory counters), allocated on a parameter's first
//! gradient, so a frozen parameter costs nothing. F16/BF16/F64 parameters are updated in f32 and rounded
//! back; F32 parameters are updated by one fused pass.
//!
//! State files are safetensors keyed `<param>.<field>` (PyTorch's field names: `exp_avg`, `exp_avg_sq`,
//! `step`, `momentum_buffer`), with the learning rate in the header metadata.

mod adamw;
mod adamw8bit;
mod clip;
mod schedule;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use adamw8bit::{AdamW8bit, AdamW8bitConfig};
pub use clip::{clip_grad_norm, grad_norm};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdConfig};

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLockReadGuard};

use half::{bf16, f16};
use rayon::prelude::*;

use crate::memory::MemoryCharge;
use crate::{CpuData, Device, Error, GradStore, Layout, Result, Storage, Tensor};

/// Elements per parallel task of an update: 16K f32 = 64 KiB per array, so the four arrays AdamW streams
/// (p, g, m, v) stay within L2 while a task runs. Smaller tensors are updated by one task each.
pub(crate) const CHUNK: usize = 1 << 14;

/// The metadata key of the learning rate in a state file.
const LR_KEY: &str = "learning_rate";

/// A gradient-based optimizer over a fixed set of named parameters.
pub trait Optimizer {
    /// Updates every parameter that has a gradient in `grads`. Shapes are checked before anything is
    /// written, so a failed step leaves the parameters and the state unchanged.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate of the following steps (a schedule calls this before each step).
    fn set_learning_rate(&mut self, lr: f64);
    /// The state as named tensors (`<param>.<field>`), for checkpoints.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Replaces the state with `map` (as returned by [`Optimizer::state_tensors`]). A parameter missing from
    /// the map starts fresh; a key that names no parameter or field of this optimizer is an error. Nothing is
    /// changed when an error is returned.
    fn load_state_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()>;

    /// Writes the state and the learning rate to a safetensors file (atomically).
    fn save_state(&self, path: &Path) -> Result<()> {
        let state = self.state_tensors();
        let refs: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let meta = HashMap::from([(LR_KEY.to_string(), self.learning_rate().to_string())]);
        crate::safetensors::save(path, &refs, Some(&meta))
    }

    /// Restores the state and the learning rate written by [`Optimizer::save_state`].
    fn load_state(&mut self, path: &Path) -> Result<()> {
        let file = crate::safetensors::MmapedSafetensors::open(path)?;
        let lr = match file.metadata()?.get(LR_KEY) {
            Some(s) => Some(s.parse::<f64>().map_err(|e| Error::SafeTensors {
                path: path.display().to_string(),
                msg: format!("metadata `{LR_KEY}` = `{s}` is not a number: {e}"),
            })?),
            None => None,
        };
        self.load_state_tensors(&file.load_all(Device::Cpu)?)?;
        if let Some(lr) = lr {
            self.set_learning_rate(lr);
        }
        Ok(())
    }
}

/// An f32 host buffer of optimizer state, charged to the CPU memory counters while alive.
pub(crate) struct StateBuf {
    data: Vec<f32>,
    _charge: MemoryCharge,
}

impl std::fmt::Debug for StateBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateBuf[{}]", self.data.len())
    }
}

impl Clone for StateBuf {
    fn clone(&self) -> Self {
        StateBuf::from_vec(self.data.clone())
    }
}

impl StateBuf {
    pub(crate) fn from_vec(data: Vec<f32>) -> Self {
        let charge = MemoryCharge::new(Device::Cpu, data.len() * std::mem::size_of::<f32>());
        StateBuf { data, _charge: charge }
    }
    pub(crate) fn zeros(n: usize) -> Self {
        StateBuf::from_vec(vec![0.0; n])
    }
    pub(crate) fn empty() -> Self {
        StateBuf::from_vec(Vec::new())
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.data
    }
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }
    /// A copy as an F32 tensor of `like`'s shape.
    pub(crate) fn to_tensor(&self, like: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(self.data.clone(), like.shape().clone(), Device::Cpu)
    }
    /// Reads a state tensor of `param`'s shape (any float dtype) for `key`.
    pub(crate) fn from_tensor(op: &'static str, key: &str, t: &Tensor, param: &Tensor) -> Result<Self> {
        if t.shape() != param.shape() {
            return Err(Error::Parameter { op, name: key.into(), msg: format!("state shape {} differs from parameter shape {}", t.shape(), param.shape()) });
        }
        if !t.dtype().is_float() {
            return Err(Error::Parameter { op, name: key.into(), msg: format!("state dtype {} is not a float type", t.dtype()) });
        }
        Ok(StateBuf::from_vec(t.to_vec_f32()?))
    }
}

/// A named parameter with its optimizer state.
#[derive(Debug, Clone)]
pub(crate) struct Slot<S> {
    pub(crate) name: String,
    pub(crate) tensor: Tensor,
    pub(crate) state: S,
}

/// Checks the parameters given to an optimizer: unique names and handles, CPU, float, contiguous.
pub(crate) fn make_slots<S>(op: &'static str, params: Vec<(String, Tensor)>, init: impl Fn() -> S) -> Result<Vec<Slot<S>>> {
    let (mut names, mut ids) = (HashSet::new(), HashSet::new());
    let perr = |name: &str, msg: String| Error::Parameter { op, name: name.into(), msg };
    params
        .into_iter()
        .map(|(name, tensor)| {
            if !names.insert(name.clone()) {
                return Err(perr(&name, "the name is given twice".into()));
            }
            if !ids.insert(tensor.id()) {
                return Err(perr(&name, "the same tensor handle is given twice".into()));
            }
            if !tensor.dtype().is_float() {
                return Err(perr(&name, format!("dtype {} is not a float type", tensor.dtype())));
            }
            if !tensor.is_contiguous() {
                return Err(perr(&name, format!("the parameter (shape {}) is not contiguous", tensor.shape())));
            }
            if tensor.device() != Device::Cpu {
                return Err(perr(&name, format!("device {:?} is not supported by the CPU optimizers", tensor.device())));
            }
            Ok(Slot { name, tensor, state: init() })
        })
        .collect()
}

/// The state-file key of `field` for parameter `name`.
pub(crate) fn state_key(name: &str, field: &str) -> String {
    format!("{name}.{field}")
}

/// Fails on a key of `map` that is not one of `fields` of one of `slots`.
pub(crate) fn check_state_keys<S>(op: &'static str, slots: &[Slot<S>], fields: &[&str], map: &HashMap<String, Tensor>) -> Result<()> {
    let known: HashSet<String> = slots.iter().flat_map(|s| fields.iter().map(|f| state_key(&s.name, f))).collect();
    match map.keys().find(|k| !known.contains(*k)) {
        Some(k) => Err(Error::Parameter { op, name: k.clone(), msg: "this key names no parameter or state field of the optimizer".into() }),
        None => Ok(()),
    }
}

/// The key of a tensor's storage: equal for every handle and view that shares the buffer.
fn storage_key(t: &Tensor) -> usize {
    Arc::as_ptr(&t.0.storage) as usize
}

/// Where a task reads a gradient from: a copy made up front, or a storage read-locked up front.
enum GradSrc<'a> {
    Owned(Vec<f32>),
    Locked(&'a RwLockReadGuard<'a, Storage>, &'a Layout),
}

/// Runs `update(state, p, g)` for every slot with a gradient, with p the parameter's elements (in place for
/// F32) and g its gradient, both f32. `prepare(state, n)` runs first for each of them on the calling thread
/// (so state allocated there is counted by that thread's memory scopes). Gradient shapes are checked before
/// anything changes, so an error leaves everything as it was.
///
/// Parallelism and locking: parameters are grouped by storage, and the groups run as rayon tasks; a group
/// write-locks its storage once and updates its parameters in turn, each split further into [`CHUNK`]s by
/// `update` (see [`par_chunks4`]). Each storage is locked by exactly one task, and every gradient is
/// read-locked (or, when it aliases a parameter, copied) on the calling thread before any task starts, so a
/// worker that steals another group while waiting inside a parallel loop never waits on a lock.
pub(crate) fn update_each<S: Send>(
    op: &'static str,
    slots: &mut [Slot<S>],
    grads: &GradStore,
    mut prepare: impl FnMut(&mut S, usize),
    update: impl Fn(&mut S, &mut [f32], &[f32]) + Sync,
) -> Result<()> {
    for s in slots.iter() {
        if let Some(g) = grads.get(&s.tensor) {
            if g.shape() != s.tensor.shape() {
                let msg = format!("gradient shape {} differs from parameter shape {}", g.shape(), s.tensor.shape());
                return Err(Error::Parameter { op, name: s.name.clone(), msg });
            }
        }
    }
    let param_keys: HashSet<usize> = slots.iter().map(|s| storage_key(&s.tensor)).collect();
    let mut guards: HashMap<usize, RwLockReadGuard<'_, Storage>> = HashMap::new();
    let mut copies: Vec<Option<Vec<f32>>> = Vec::with_capacity(slots.len());
    for s in slots.iter() {
        let copy = match grads.get(&s.tensor) {
            Some(g) if param_keys.contains(&storage_key(g)) => Some(g.to_vec_f32()?),
            Some(g) => {
                guards.entry(storage_key(g)).or_insert_with(|| g.storage());
                None
            }
            None => None,
        };
        copies.push(copy);
    }
    let mut groups: Vec<Vec<(&mut Slot<S>, GradSrc<'_>)>> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for (s, copy) in slots.iter_mut().zip(copies) {
        let Some(g) = grads.get(&s.tensor) else { continue };
        prepare(&mut s.state, s.tensor.elem_count());
        let src = match copy {
            Some(v) => GradSrc::Owned(v),
            None => GradSrc::Locked(&guards[&storage_key(g)], g.layout()),
        };
        let i = *group_of.entry(storage_key(&s.tensor)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push((s, src));
    }
    groups.into_par_iter().for_each(|group| update_group(group, &update));
    Ok(())
}

/// Updates parameters that share one storage under a single write lock: F32 in place; other float dtypes
/// through an f32 copy written back with rounding.
fn update_group<S>(group: Vec<(&mut Slot<S>, GradSrc<'_>)>, update: &(impl Fn(&mut S, &mut [f32], &[f32]) + Sync)) {
    let Some(first) = group.first().map(|(s, _)| s.tensor.clone()) else { return };
    let mut st = first.storage_mut();
    let data = match &mut *st {
        Storage::Cpu(s) => s.data_mut(),
    };
    for (slot, src) in group {
        let g: Cow<'_, [f32]> = match &src {
            GradSrc::Owned(v) => Cow::Borrowed(v),
            GradSrc::Locked(guard, layout) => guard.cpu().float_slice::<f32>(layout),
        };
        let range = slot.tensor.layout().contiguous_range().expect("optimizer parameters are checked to be contiguous");
        let mut f = |p: &mut [f32], g: &[f32]| update(&mut slot.state, p, g);
        match &mut *data {
            CpuData::F32(v) => f(&mut v[range], &g),
            CpuData::F64(v) => with_f32_copy(&mut v[range], &g, f, |x| x as f32, |x| x as f64),
            CpuData::F16(v) => with_f32_copy(&mut v[range], &g, f, f16::to_f32, f16::from_f32),
            CpuData::BF16(v) => with_f32_copy(&mut v[range], &g, f, bf16::to_f32, bf16::from_f32),
            d => unreachable!("optimizer parameters are checked to be float, got {}", d.dtype()),
        }
    }
}

fn with_f32_copy<T: Copy>(p: &mut [T], g: &[f32], f: impl FnOnce(&mut [f32], &[f32]), to: fn(T) -> f32, from: fn(f32) -> T) {
    let mut w: Vec<f32> = p.iter().map(|&x| to(x)).collect();
    f(&mut w, g);
    p.iter_mut().zip(&w).for_each(|(d, &x)| *d = from(x));
}

/// Runs `k` over matching [`CHUNK`]-sized pieces of four equally long arrays: serially for one chunk, else on
/// rayon's pool (one task per chunk, zipped so no index arithmetic or bounds check is needed per element).
pub(crate) fn par_chunks4(
    a: &mut [f32],
    b: &[f32],
    c: &mut [f32],
    d: &mut [f32],
    k: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) {
    if a.len() <= CHUNK {
        return k(a, b, c, d);
    }
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .zip(c.par_chunks_mut(CHUNK))
        .zip(d.par_chunks_mut(CHUNK))
        .for_each(|(((a, b), c), d)| k(a, b, c, d));
}

/// [`par_chunks4`] for three arrays.
pub(crate) fn par_chunks3(a: &mut [f32], b: &[f32], c: &mut [f32], k: impl Fn(&mut [f32], &[f32], &mut [f32]) + Sync) {
    if a.len() <= CHUNK {
        return k(a, b, c);
    }
    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).zip(c.par_chunks_mut(CHUNK)).for_each(|((a, b), c)| k(a, b, c));
}

/// [`par_chunks4`] for two arrays.
pub(crate) fn par_chunks2(a: &mut [f32], b: &[f32], k: impl Fn(&mut [f32], &[f32]) + Sync) {
    if a.len() <= CHUNK {
        return k(a, b);
    }
    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(a, b)| k(a, b));
}

/// Validates a learning rate or another non-negative hyperparameter.
pub(crate) fn check_nonneg(op: &'static str, what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::invalid(op, format!("{what} = {v} must be finite and non-negative")));
    }
    Ok(())
}
