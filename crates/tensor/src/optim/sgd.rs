//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and (coupled, L2) weight decay,
//! with the semantics of PyTorch's `torch.optim.SGD`.
//!
//! Math (per parameter, g its gradient, b its momentum buffer):
//!   d ← g + wd·p
//!   b ← d on the parameter's first step, else b ← μ·b + (1−τ)·d        (only when μ ≠ 0)
//!   d ← d + μ·b with Nesterov, else d ← b                              (only when μ ≠ 0)
//!   p ← p − lr·d
//! Traffic: read p, g, b and write p, b → 20 B per f32 parameter (12 B without momentum); memory-bound.

use std::collections::HashMap;

use super::{check_nonneg, check_state_keys, make_slots, par_chunks2, par_chunks3, state_key, update_each, Optimizer, Slot, StateBuf};
use crate::{Error, GradStore, Result, Tensor};

/// Hyperparameters of [`Sgd`]; the defaults are PyTorch's except lr, which PyTorch requires (here 1e-3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor μ (0 disables momentum and its state).
    pub momentum: f64,
    /// Dampening τ of the momentum update (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient: d = g + wd·p.
    pub weight_decay: f64,
    /// Nesterov momentum (needs μ > 0 and τ = 0).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

impl SgdConfig {
    /// Checks the ranges PyTorch checks, and that Nesterov has momentum and no dampening.
    pub fn validate(&self) -> Result<()> {
        check_nonneg("Sgd", "lr", self.lr)?;
        check_nonneg("Sgd", "momentum", self.momentum)?;
        check_nonneg("Sgd", "weight_decay", self.weight_decay)?;
        if !(0.0..=1.0).contains(&self.dampening) {
            return Err(Error::invalid("Sgd", format!("dampening = {} is outside [0, 1]", self.dampening)));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid("Sgd", "Nesterov momentum needs momentum > 0 and zero dampening"));
        }
        Ok(())
    }
}

/// The momentum buffer of one parameter (none without momentum; allocated on its first gradient) and
/// whether it holds a value yet.
#[derive(Debug, Clone)]
struct SgdState {
    buf: Option<StateBuf>,
    started: bool,
}

/// SGD over named parameters; see the module docs for the update.
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    slots: Vec<Slot<SgdState>>,
}

const FIELD: &str = "momentum_buffer";

impl Sgd {
    /// An optimizer over `params` (unique names and handles; contiguous float CPU tensors).
    pub fn new(params: Vec<(String, Tensor)>, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sgd { config, slots: make_slots("Sgd::new", params, || SgdState { buf: None, started: false })? })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The parameters by name, in the order given.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.slots.iter().map(|s| (s.name.clone(), s.tensor.clone())).collect()
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let (lr, wd, mu) = (c.lr as f32, c.weight_decay as f32, c.momentum as f32);
        let prepare = |st: &mut SgdState, n: usize| {
            if c.momentum != 0.0 && st.buf.is_none() {
                *st = SgdState { buf: Some(StateBuf::zeros(n)), started: false };
            }
        };
        update_each("Sgd::step", &mut self.slots, grads, prepare, |st, p, g| {
            let Some(buf) = st.buf.as_mut() else {
                return par_chunks2(p, g, |p, g| {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= lr * (g + wd * *p);
                    }
                });
            };
            // On the first step the buffer starts as d itself: b = 0·b + 1·d.
            let (keep, add) = if st.started { (mu, (1.0 - c.dampening) as f32) } else { (0.0, 1.0) };
            st.started = true;
            let nesterov = c.nesterov;
            par_chunks3(p, g, buf.as_mut_slice(), |p, g, b| {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                    let d = g + wd * *p;
                    *b = keep * *b + add * d;
                    let d = if nesterov { d + mu * *b } else { *b };
                    *p -= lr * d;
                }
            });
        })
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let with_buf = self.slots.iter().filter(|s| s.state.started).filter_map(|s| s.state.buf.as_ref().map(|b| (s, b)));
        with_buf.map(|(s, b)| (state_key(&s.name, FIELD), b.to_tensor(&s.tensor).expect("the buffer matches the parameter"))).collect()
    }

    fn load_state_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        const OP: &str = "Sgd::load_state";
        check_state_keys(OP, &self.slots, &[FIELD], map)?;
        let mut bufs = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let key = state_key(&s.name, FIELD);
            bufs.push(map.get(&key).map(|t| StateBuf::from_tensor(OP, &key, t, &s.tensor)).transpose()?);
        }
        for (s, buf) in self.slots.iter_mut().zip(bufs) {
            s.state = SgdState { started: buf.is_some(), buf };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn step_with(opt: &mut Sgd, p: &Tensor, g: &[f32]) {
        let mut gs = GradStore::new();
        gs.insert(p, Tensor::from_slice(g, p.shape().clone(), Device::Cpu).unwrap());
        opt.step(&gs).unwrap();
    }

    #[test]
    fn momentum_matches_a_hand_computation() {
        // lr 0.1, μ 0.9, wd 0.01; p0 = 1, gradients 0.5 then −0.2, by hand:
        //   d1 = 0.5 + 0.01·1 = 0.51, b1 = 0.51, p1 = 1 − 0.051 = 0.949
        //   d2 = −0.2 + 0.01·0.949 = −0.19051, b2 = 0.9·0.51 − 0.19051 = 0.26849, p2 = 0.949 − 0.026849 = 0.922151
        let c = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01, ..Default::default() };
        let p = Tensor::from_vec(vec![1f32], 1, Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], c).unwrap();
        step_with(&mut opt, &p, &[0.5]);
        assert!((p.to_vec_f32().unwrap()[0] - 0.949).abs() < 1e-6);
        step_with(&mut opt, &p, &[-0.2]);
        assert!((p.to_vec_f32().unwrap()[0] - 0.922151).abs() < 1e-6);
        let state = opt.state_tensors();
        assert_eq!(state[0].0, "p.momentum_buffer");
        assert!((state[0].1.to_vec_f32().unwrap()[0] - 0.26849).abs() < 1e-6);
    }

    #[test]
    fn nesterov_dampening_and_plain_sgd_match_the_formulas() {
        // Nesterov, μ 0.5, lr 1: d1 = 2, b1 = 2, step 2 + 0.5·2 = 3 → p1 = −3;
        // d2 = 1, b2 = 0.5·2 + 1 = 2, step 1 + 0.5·2 = 2 → p2 = −5.
        let p = Tensor::from_vec(vec![0f32], 1, Device::Cpu).unwrap();
        let c = SgdConfig { lr: 1.0, momentum: 0.5, nesterov: true, ..Default::default() };
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], c).unwrap();
        step_with(&mut opt, &p, &[2.0]);
        step_with(&mut opt, &p, &[1.0]);
        assert_eq!(p.to_vec_f32().unwrap(), vec![-5.0]);
        // Dampening 0.5, μ 1, lr 1: b1 = d1 = 4 (no dampening on the first step), b2 = 4 + 0.5·2 = 5; p = −9.
        let p = Tensor::from_vec(vec![0f32], 1, Device::Cpu).unwrap();
        let c = SgdConfig { lr: 1.0, momentum: 1.0, dampening: 0.5, ..Default::default() };
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], c).unwrap();
        step_with(&mut opt, &p, &[4.0]);
        step_with(&mut opt, &p, &[2.0]);
        assert_eq!(p.to_vec_f32().unwrap(), vec![-9.0]);
        // No momentum: p ← p − lr·(g + wd·p) = 2 − 0.5·(1 + 0.5·2) = 1, and no state is kept.
        let p = Tensor::from_vec(vec![2f32], 1, Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], SgdConfig { lr: 0.5, weight_decay: 0.5, ..Default::default() }).unwrap();
        step_with(&mut opt, &p, &[1.0]);
        assert_eq!(p.to_vec_f32().unwrap(), vec![1.0]);
        assert!(opt.state_tensors().is_empty());
        assert!(Sgd::new(vec![], SgdConfig { nesterov: true, ..Default::default() }).is_err());
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let c = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
        let (p, q) = (Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu).unwrap(), Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu).unwrap());
        let mut a = Sgd::new(vec![("p".into(), p.clone())], c).unwrap();
        let mut b = Sgd::new(vec![("p".into(), q.clone())], c).unwrap();
        step_with(&mut a, &p, &[0.3, -0.7]);
        step_with(&mut b, &q, &[0.3, -0.7]);
        let mut fresh = Sgd::new(vec![("p".into(), q.clone())], c).unwrap();
        fresh.load_state_tensors(&a.state_tensors().into_iter().collect()).unwrap();
        step_with(&mut a, &p, &[0.1, 0.2]);
        step_with(&mut fresh, &q, &[0.1, 0.2]);
        assert_eq!(p.to_vec_f32().unwrap(), q.to_vec_f32().unwrap());
        drop(b);
    }
}
