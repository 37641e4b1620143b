//! AdamW with bitsandbytes' 8-bit blockwise state (`bnb.optim.AdamW8bit`), bit for bit with its CPU backend
//! (the update, the state codes and scales; see `rankfold_kernels::optim` for the arithmetic, the square root
//! and the non-finite-gradient policy). Tensors of at least `min_8bit_size` elements keep both moments as 8-bit
//! codes with one f32 absmax per 256 elements (about 2.03 bytes per parameter); smaller ones keep f32 moments and
//! bitsandbytes' 32-bit update.
//!
//! Layout: p `[n]` contiguous (updated in place; bf16/f16/f64 through an f32 copy rounded back), state1/state2
//! `[n]` u8, absmax1/absmax2 `[n.div_ceil(256)]` f32, or m/v `[n]` f32.
//! Traffic: read p, g, two codes, write p and two codes: 10 B per f32 parameter, plus a table lookup per code.
//! Kernel: `rankfold_kernels::optim::fast` (the twins of `optim::cpu` built for AVX-512 or AVX2 + FMA, bit for bit),
//! over chunks of 64 blocks on rayon's pool.
//! Reference: `tests/it/optim8.rs` against `tests/fixtures/optim_fixtures.py` (bitsandbytes 0.50.2).

use std::collections::HashMap;

use rankfold_kernels::optim::{cpu, fast, AdamConsts, AdamParams, BLOCKSIZE, MIN_8BIT_SIZE};
use rayon::prelude::*;

use super::{check_state_keys, make_slots, state_key, update_each, Optimizer, Slot, StateBuf, CHUNK};
use crate::memory::MemoryCharge;
use crate::{DType, Device, Error, GradStore, Result, Tensor};

/// Hyperparameters of [`AdamW8bit`]; the defaults are bitsandbytes'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW8bitConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rate of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay rate of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 0.01).
    pub weight_decay: f64,
    /// Tensors with fewer elements keep f32 moments (default 4096).
    pub min_8bit_size: usize,
}

impl Default for AdamW8bitConfig {
    fn default() -> Self {
        AdamW8bitConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, min_8bit_size: MIN_8BIT_SIZE }
    }
}

impl AdamW8bitConfig {
    /// Checks lr, eps and weight decay non-negative and the betas in [0, 1).
    pub fn validate(&self) -> Result<()> {
        super::adamw::check_adam("AdamW8bit", self.lr, self.eps, self.weight_decay, [self.beta1, self.beta2])
    }

    fn params(&self) -> AdamParams {
        AdamParams { lr: self.lr, beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay }
    }
}

/// u8 codes charged to the CPU memory counters while alive.
struct Codes {
    data: Vec<u8>,
    _charge: MemoryCharge,
}

impl std::fmt::Debug for Codes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Codes[{}]", self.data.len())
    }
}

impl Codes {
    fn from_vec(data: Vec<u8>) -> Codes {
        let charge = MemoryCharge::new(Device::Cpu, data.len());
        Codes { data, _charge: charge }
    }
}

/// The state of one parameter.
#[derive(Debug)]
enum State {
    /// No gradient seen yet.
    Fresh,
    /// f32 moments (below `min_8bit_size`).
    Full { step: u64, m: StateBuf, v: StateBuf },
    /// 8-bit moments.
    Quant { step: u64, state1: Codes, state2: Codes, absmax1: StateBuf, absmax2: StateBuf },
}

impl State {
    fn step(&self) -> u64 {
        match self {
            State::Fresh => 0,
            State::Full { step, .. } | State::Quant { step, .. } => *step,
        }
    }
}

const FIELDS: [&str; 5] = ["state1", "state2", "absmax1", "absmax2", "step"];

/// AdamW with 8-bit blockwise state over named parameters; see the module docs.
#[derive(Debug)]
pub struct AdamW8bit {
    config: AdamW8bitConfig,
    slots: Vec<Slot<State>>,
}

impl AdamW8bit {
    /// An optimizer over `params` (unique names and handles; contiguous float CPU tensors).
    pub fn new(params: Vec<(String, Tensor)>, config: AdamW8bitConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW8bit { config, slots: make_slots("AdamW8bit::new", params, || State::Fresh)? })
    }

    pub fn config(&self) -> &AdamW8bitConfig {
        &self.config
    }

    /// How many steps parameter `name` has taken.
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.state.step())
    }

    /// Bytes of optimizer state held now (codes, scales and f32 moments).
    pub fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.state {
                State::Fresh => 0,
                State::Full { m, v, .. } => 4 * (m.len() + v.len()),
                State::Quant { state1, state2, absmax1, absmax2, .. } => {
                    state1.data.len() + state2.data.len() + 4 * (absmax1.len() + absmax2.len())
                }
            })
            .sum()
    }
}

/// Runs the 8-bit update over chunks of [`CHUNK`] elements (whole blocks) in parallel.
fn quant_update(p: &mut [f32], g: &[f32], s1: &mut [u8], s2: &mut [u8], a1: &mut [f32], a2: &mut [f32], k: &AdamConsts) {
    const BLOCKS: usize = CHUNK / BLOCKSIZE;
    let run = |p: &mut [f32], g: &[f32], s1: &mut [u8], s2: &mut [u8], a1: &mut [f32], a2: &mut [f32]| {
        let st = cpu::Adam8State { state1: s1, state2: s2, absmax1: a1, absmax2: a2 };
        fast::adamw8bit(p, g, st, k).expect("the chunks of one parameter have matching lengths");
    };
    if p.len() <= CHUNK {
        return run(p, g, s1, s2, a1, a2);
    }
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(s1.par_chunks_mut(CHUNK).zip(s2.par_chunks_mut(CHUNK)))
        .zip(a1.par_chunks_mut(BLOCKS).zip(a2.par_chunks_mut(BLOCKS)))
        .for_each(|(((p, g), (s1, s2)), (a1, a2))| run(p, g, s1, s2, a1, a2));
}

impl Optimizer for AdamW8bit {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let h = c.params();
        let prepare = |st: &mut State, n: usize| {
            if matches!(st, State::Fresh) {
                *st = if n >= c.min_8bit_size {
                    let blocks = n.div_ceil(BLOCKSIZE);
                    State::Quant {
                        step: 0,
                        state1: Codes::from_vec(vec![0; n]),
                        state2: Codes::from_vec(vec![0; n]),
                        absmax1: StateBuf::zeros(blocks),
                        absmax2: StateBuf::zeros(blocks),
                    }
                } else {
                    State::Full { step: 0, m: StateBuf::zeros(n), v: StateBuf::zeros(n) }
                };
            }
        };
        update_each("AdamW8bit::step", &mut self.slots, grads, prepare, |st, p, g| match st {
            State::Fresh => unreachable!("prepare allocates the state of every parameter with a gradient"),
            State::Full { step, m, v } => {
                *step += 1;
                let k = AdamConsts::new(&h, *step);
                super::par_chunks4(p, g, m.as_mut_slice(), v.as_mut_slice(), |p, g, m, v| {
                    fast::adamw32(p, g, m, v, &k).expect("the chunks of one parameter have matching lengths")
                });
            }
            State::Quant { step, state1, state2, absmax1, absmax2 } => {
                *step += 1;
                let k = AdamConsts::new(&h, *step);
                let (a1, a2) = (absmax1.as_mut_slice(), absmax2.as_mut_slice());
                quant_update(p, g, &mut state1.data, &mut state2.data, a1, a2, &k);
            }
        })
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let ok = "state sizes match the parameter";
        for s in &self.slots {
            let key = |f: &str| state_key(&s.name, f);
            let shape = s.tensor.shape().clone();
            match &s.state {
                State::Fresh => continue,
                State::Full { m, v, .. } => {
                    out.push((key("state1"), m.to_tensor(&s.tensor).expect(ok)));
                    out.push((key("state2"), v.to_tensor(&s.tensor).expect(ok)));
                }
                State::Quant { state1, state2, absmax1, absmax2, .. } => {
                    let blocks = absmax1.len();
                    out.push((key("state1"), Tensor::from_vec(state1.data.clone(), shape.clone(), Device::Cpu).expect(ok)));
                    out.push((key("state2"), Tensor::from_vec(state2.data.clone(), shape, Device::Cpu).expect(ok)));
                    out.push((key("absmax1"), Tensor::from_vec(absmax1.as_slice().to_vec(), blocks, Device::Cpu).expect(ok)));
                    out.push((key("absmax2"), Tensor::from_vec(absmax2.as_slice().to_vec(), blocks, Device::Cpu).expect(ok)));
                }
            }
            out.push((key("step"), Tensor::from_vec(vec![s.state.step() as i64], (), Device::Cpu).expect(ok)));
        }
        out
    }

    fn load_state_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        const OP: &str = "AdamW8bit::load_state";
        check_state_keys(OP, &self.slots, &FIELDS, map)?;
        let mut states = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            states.push(read_state(OP, s, map)?);
        }
        for (s, st) in self.slots.iter_mut().zip(states) {
            s.state = st;
        }
        Ok(())
    }
}

/// The state of slot `s` from `map`: absent, f32 moments, or 8-bit codes with their scales; every tensor checked.
fn read_state(op: &'static str, s: &Slot<State>, map: &HashMap<String, Tensor>) -> Result<State> {
    let key = |f: &str| state_key(&s.name, f);
    let get = |f: &str| map.get(&key(f));
    let bad = |f: &str, msg: String| Error::Parameter { op, name: key(f), msg };
    let (Some(s1), Some(s2), Some(t)) = (get("state1"), get("state2"), get("step")) else {
        if FIELDS.iter().any(|f| get(f).is_some()) {
            return Err(Error::Parameter { op, name: s.name.clone(), msg: "the state is incomplete: it needs state1, state2 and step".into() });
        }
        return Ok(State::Fresh);
    };
    let step = super::adamw::read_step(op, &key("step"), t)?;
    if step == 0 {
        return Ok(State::Fresh);
    }
    let n = s.tensor.elem_count();
    if s1.dtype() != DType::U8 {
        if get("absmax1").is_some() || get("absmax2").is_some() {
            return Err(bad("absmax1", "f32 moments take no absmax".into()));
        }
        let m = StateBuf::from_tensor(op, &key("state1"), s1, &s.tensor)?;
        let v = StateBuf::from_tensor(op, &key("state2"), s2, &s.tensor)?;
        return Ok(State::Full { step, m, v });
    }
    let codes = |f: &str, t: &Tensor| -> Result<Codes> {
        if t.dtype() != DType::U8 || t.shape() != s.tensor.shape() {
            return Err(bad(f, format!("want u8 codes of shape {}, got {} {}", s.tensor.shape(), t.dtype(), t.shape())));
        }
        Ok(Codes::from_vec(t.to_vec::<u8>()?))
    };
    let scales = |f: &str| -> Result<StateBuf> {
        let t = get(f).ok_or_else(|| bad(f, "8-bit codes need their absmax".into()))?;
        let blocks = n.div_ceil(BLOCKSIZE);
        if t.dtype() != DType::F32 || t.dims() != [blocks] {
            return Err(bad(f, format!("want f32 [{blocks}], got {} {}", t.dtype(), t.shape())));
        }
        let v = t.to_vec::<f32>()?;
        if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
            return Err(bad(f, format!("absmax {x} is not a finite non-negative scale")));
        }
        Ok(StateBuf::from_vec(v))
    };
    Ok(State::Quant { step, state1: codes("state1", s1)?, state2: codes("state2", s2)?, absmax1: scales("absmax1")?, absmax2: scales("absmax2")? })
}
