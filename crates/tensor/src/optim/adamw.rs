//! AdamW with the exact semantics of PyTorch's `torch.optim.AdamW` (decoupled weight decay), as one fused
//! pass per tensor.
//!
//! Math (per parameter, t = that parameter's own step count from 1; g its gradient):
//!   p ← p·(1 − lr·wd)
//!   m ← β1·m + (1−β1)·g
//!   v ← β2·v + (1−β2)·g²
//!   p ← p − lr/(1−β1^t) · m / (√v / √(1−β2^t) + ε)      (= p − lr·m̂/(√v̂ + ε), PyTorch's factoring)
//! Layout:  p `[n]` (contiguous, in place), g `[n]` f32 (converted when not), m `[n]` and v `[n]` host f32.
//! Traffic: read p, g, m, v and write p, m, v → 28 B per f32 parameter; ~12 flops, one sqrt and one division
//!          per element, far below what two cores do per 28 B → memory-bound: 16.8 M params ≈ 470 MB per step,
//!          ≈ 15 ms at 32 GB/s.
//! Kernel:  the scalars (1−lr·wd, lr/(1−β1^t), 1/√(1−β2^t)) are computed once per tensor in f64 and rounded
//!          to f32; the loop over a [`super::CHUNK`] is branch-free f32 so it auto-vectorizes.
//! Reference: the f64 hand computations in the tests below.

use std::collections::HashMap;

use super::{check_nonneg, check_state_keys, make_slots, par_chunks4, state_key, update_each, Optimizer, Slot, StateBuf};
use crate::{Device, Error, GradStore, Result, Tensor};

/// Hyperparameters of [`AdamW`]; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rate of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay rate of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the denominator for numerical stability (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies p by 1 − lr·wd (default 0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// Checks the ranges PyTorch checks: lr, eps and weight decay non-negative, betas in [0, 1).
    pub fn validate(&self) -> Result<()> {
        check_adam("AdamW", self.lr, self.eps, self.weight_decay, [self.beta1, self.beta2])
    }
}

/// The state of one parameter: its step count and the two moments (empty until its first gradient).
#[derive(Debug, Clone)]
struct AdamState {
    step: u64,
    m: StateBuf,
    v: StateBuf,
}

impl AdamState {
    fn fresh() -> Self {
        AdamState { step: 0, m: StateBuf::empty(), v: StateBuf::empty() }
    }
}

/// The per-step scalars of the kernel, in f32.
#[derive(Debug, Clone, Copy)]
struct Consts {
    decay: f32,
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
}

impl Consts {
    fn new(c: &AdamWConfig, t: u64) -> Self {
        let t = t as f64;
        let bc1 = 1.0 - c.beta1.powf(t);
        let bc2 = 1.0 - c.beta2.powf(t);
        Consts {
            decay: (1.0 - c.lr * c.weight_decay) as f32,
            b1: c.beta1 as f32,
            one_minus_b1: (1.0 - c.beta1) as f32,
            b2: c.beta2 as f32,
            one_minus_b2: (1.0 - c.beta2) as f32,
            step_size: (c.lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: c.eps as f32,
        }
    }
}

/// The fused update over one chunk: p `[n]`, g `[n]`, m `[n]`, v `[n]`.
#[inline(always)]
fn kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Consts) {
    let n = p.len();
    // Reslicing to one length lets the compiler drop the bounds checks and vectorize the loop.
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = k.b1 * m[i] + k.one_minus_b1 * gi;
        let vi = k.b2 * v[i] + k.one_minus_b2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * k.decay - k.step_size * mi / (vi.sqrt() * k.inv_sqrt_bc2 + k.eps);
    }
}

/// AdamW over named parameters; see the module docs for the update.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot<AdamState>>,
}

const FIELDS: [&str; 3] = ["exp_avg", "exp_avg_sq", "step"];

impl AdamW {
    /// An optimizer over `params` (unique names and handles; contiguous float CPU tensors).
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW { config, slots: make_slots("AdamW::new", params, AdamState::fresh)? })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The parameters by name, in the order given.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.slots.iter().map(|s| (s.name.clone(), s.tensor.clone())).collect()
    }

    /// How many steps parameter `name` has taken (those in which it had a gradient).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.state.step)
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let prepare = |st: &mut AdamState, n: usize| {
            if st.step == 0 {
                *st = AdamState { step: 0, m: StateBuf::zeros(n), v: StateBuf::zeros(n) };
            }
        };
        update_each("AdamW::step", &mut self.slots, grads, prepare, |st, p, g| {
            st.step += 1;
            let k = Consts::new(&c, st.step);
            par_chunks4(p, g, st.m.as_mut_slice(), st.v.as_mut_slice(), |p, g, m, v| kernel(p, g, m, v, &k));
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
        for s in self.slots.iter().filter(|s| s.state.step > 0) {
            let (m, v) = (s.state.m.to_tensor(&s.tensor), s.state.v.to_tensor(&s.tensor));
            let t = Tensor::from_vec(vec![s.state.step as i64], (), Device::Cpu);
            let (m, v, t) = (m.expect("moments match the parameter's shape"), v.expect("ditto"), t.expect("one element"));
            out.extend([(state_key(&s.name, FIELDS[0]), m), (state_key(&s.name, FIELDS[1]), v), (state_key(&s.name, FIELDS[2]), t)]);
        }
        out
    }

    fn load_state_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        const OP: &str = "AdamW::load_state";
        check_state_keys(OP, &self.slots, &FIELDS, map)?;
        let mut states = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let keys = FIELDS.map(|f| state_key(&s.name, f));
            let st = match keys.clone().map(|k| map.get(&k)) {
                [None, None, None] => AdamState::fresh(),
                [Some(m), Some(v), Some(t)] => {
                    let step = read_step(OP, &keys[2], t)?;
                    let m = StateBuf::from_tensor(OP, &keys[0], m, &s.tensor)?;
                    let v = StateBuf::from_tensor(OP, &keys[1], v, &s.tensor)?;
                    if step == 0 {
                        AdamState::fresh()
                    } else {
                        AdamState { step, m, v }
                    }
                }
                _ => {
                    let msg = format!("the state is incomplete: it needs all of {FIELDS:?}");
                    return Err(Error::Parameter { op: OP, name: s.name.clone(), msg });
                }
            };
            states.push(st);
        }
        for (s, st) in self.slots.iter_mut().zip(states) {
            s.state = st;
        }
        Ok(())
    }
}

/// Checks Adam's hyperparameters for optimizer `op`: lr, eps and weight decay finite and non-negative, betas in
/// [0, 1).
pub(crate) fn check_adam(op: &'static str, lr: f64, eps: f64, weight_decay: f64, betas: [f64; 2]) -> Result<()> {
    check_nonneg(op, "lr", lr)?;
    check_nonneg(op, "eps", eps)?;
    check_nonneg(op, "weight_decay", weight_decay)?;
    for (what, b) in ["beta1", "beta2"].into_iter().zip(betas) {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::invalid(op, format!("{what} = {b} is outside [0, 1)")));
        }
    }
    Ok(())
}

/// A step count stored as a one-element tensor: a non-negative integer.
pub(crate) fn read_step(op: &'static str, key: &str, t: &Tensor) -> Result<u64> {
    let bad = |msg: String| Error::Parameter { op, name: key.into(), msg };
    if t.elem_count() != 1 {
        return Err(bad(format!("a step count has one element, got shape {}", t.shape())));
    }
    let v = t.to_scalar()?;
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
        return Err(bad(format!("step count {v} is not a non-negative integer")));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Rng};

    /// One AdamW step in f64 exactly as the module docs write it; returns the new (p, m, v).
    fn reference(p: f64, g: f64, m: f64, v: f64, t: i32, c: &AdamWConfig) -> (f64, f64, f64) {
        let p = p * (1.0 - c.lr * c.weight_decay);
        let m = c.beta1 * m + (1.0 - c.beta1) * g;
        let v = c.beta2 * v + (1.0 - c.beta2) * g * g;
        let (mh, vh) = (m / (1.0 - c.beta1.powi(t)), v / (1.0 - c.beta2.powi(t)));
        (p - c.lr * mh / (vh.sqrt() + c.eps), m, v)
    }

    fn grads_for(pairs: &[(&Tensor, Vec<f32>)]) -> GradStore {
        let mut gs = GradStore::new();
        for (p, g) in pairs {
            gs.insert(p, Tensor::from_vec(g.clone(), p.shape().clone(), Device::Cpu).unwrap());
        }
        gs
    }

    fn assert_close(got: &[f32], want: &[f64], rel: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= 1e-7 + rel * w.abs(), "{g} vs {w}");
        }
    }

    #[test]
    fn two_steps_match_a_hand_computation() {
        let c = AdamWConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let p0 = [0.5f32, -1.0, 2.0, 0.0];
        let g1 = [0.1f32, -0.2, 0.0, 3.0];
        let g2 = [-0.3f32, 0.2, 1.0, 0.5];
        let w = Tensor::from_slice(&p0, (2, 2), Device::Cpu).unwrap().with_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], c).unwrap();
        opt.step(&grads_for(&[(&w, g1.to_vec())])).unwrap();
        opt.step(&grads_for(&[(&w, g2.to_vec())])).unwrap();
        let mut want = vec![];
        for i in 0..4 {
            let (p, m, v) = reference(p0[i] as f64, g1[i] as f64, 0.0, 0.0, 1, &c);
            want.push(reference(p, g2[i] as f64, m, v, 2, &c).0);
        }
        assert_close(&w.to_vec_f32().unwrap(), &want, 1e-6);
        assert_eq!(opt.step_count("w"), Some(2));
        // Step 1 by hand for element 0: m̂ = g, v̂ = g², so p = 0.5·(1 − 0.005) − 0.05·0.1/(0.1 + 1e-8).
        let (p, _, _) = reference(0.5, 0.1f32 as f64, 0.0, 0.0, 1, &c);
        assert!((p - (0.4975 - 0.05 * (0.1f32 as f64) / (0.1f32 as f64 + 1e-8))).abs() < 1e-12);
    }

    #[test]
    fn a_parameter_without_gradient_is_skipped_and_keeps_its_own_step_count() {
        let c = AdamWConfig { lr: 0.1, ..Default::default() };
        let a = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![-1f32], 1, Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], c).unwrap();
        opt.step(&grads_for(&[(&a, vec![0.5, 0.5])])).unwrap();
        assert_eq!(b.to_vec_f32().unwrap(), vec![-1.0], "no gradient, no weight decay either");
        opt.step(&grads_for(&[(&a, vec![0.5, 0.5]), (&b, vec![2.0])])).unwrap();
        assert_eq!((opt.step_count("a"), opt.step_count("b")), (Some(2), Some(1)));
        // b's first update uses t = 1 bias corrections although it is the optimizer's second step.
        assert_close(&b.to_vec_f32().unwrap(), &[reference(-1.0, 2.0, 0.0, 0.0, 1, &c).0], 1e-6);
        assert_eq!(opt.state_tensors().len(), 6);
    }

    #[test]
    fn large_and_half_precision_parameters_match_the_reference() {
        // 2.5 chunks plus a ragged tail exercise the parallel split.
        let n = 2 * super::super::CHUNK + 12_345;
        let c = AdamWConfig { lr: 0.01, weight_decay: 0.05, ..Default::default() };
        let mut rng = Rng::new(7);
        let p0: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let g: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let want: Vec<f64> = p0.iter().zip(&g).map(|(&p, &g)| reference(p as f64, g as f64, 0.0, 0.0, 1, &c).0).collect();
        let big = Tensor::from_slice(&p0, n, Device::Cpu).unwrap();
        let half = Tensor::from_slice(&p0[..1000], 1000, Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let mut opt = AdamW::new(vec![("big".into(), big.clone()), ("half".into(), half.clone())], c).unwrap();
        opt.step(&grads_for(&[(&big, g.clone()), (&half, g[..1000].to_vec())])).unwrap();
        assert_close(&big.to_vec_f32().unwrap(), &want, 1e-6);
        assert_eq!(half.dtype(), DType::BF16);
        // bf16 keeps 8 significant bits: relative error up to 2^-8, on top of the bf16 rounding of p0.
        let half_want: Vec<f64> = p0[..1000]
            .iter()
            .zip(&g)
            .map(|(&p, &g)| reference(half::bf16::from_f32(p).to_f64(), g as f64, 0.0, 0.0, 1, &c).0)
            .collect();
        assert_close(&half.to_vec_f32().unwrap(), &half_want, 1.0 / 256.0);
    }

    #[test]
    fn save_load_then_the_next_step_is_bit_identical() {
        let mut rng = Rng::new(3);
        let shapes = [(3usize, 5usize), (1, 40_000)];
        let params: Vec<Tensor> = shapes.iter().map(|&s| rng.normal_tensor(0.0, 1.0, s, DType::F32, Device::Cpu).unwrap()).collect();
        let named = |ps: &[Tensor]| ps.iter().enumerate().map(|(i, p)| (format!("layer.{i}.weight"), p.clone())).collect::<Vec<_>>();
        let grads_of = |ps: &[Tensor], rng: &mut Rng| {
            let mut gs = GradStore::new();
            for p in ps {
                gs.insert(p, rng.normal_tensor(0.0, 1.0, p.shape().clone(), DType::F32, Device::Cpu).unwrap());
            }
            gs
        };
        let c = AdamWConfig { lr: 3e-3, ..Default::default() };
        let mut a = AdamW::new(named(&params), c).unwrap();
        a.step(&grads_of(&params, &mut rng)).unwrap();
        a.set_learning_rate(1e-3);
        let path = std::env::temp_dir().join(format!("rankfold-adamw-state-{}.safetensors", std::process::id()));
        a.save_state(&path).unwrap();

        // A second optimizer over copies of the parameters, restored from the file.
        let copies: Vec<Tensor> = params.iter().map(|p| Tensor::from_vec(p.to_vec_f32().unwrap(), p.shape().clone(), Device::Cpu).unwrap()).collect();
        let mut b = AdamW::new(named(&copies), AdamWConfig::default()).unwrap();
        b.load_state(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(b.learning_rate(), 1e-3);

        let g = grads_of(&params, &mut rng);
        let mut g2 = GradStore::new();
        for (p, q) in params.iter().zip(&copies) {
            g2.insert(q, g.get(p).unwrap().clone());
        }
        a.step(&g).unwrap();
        b.step(&g2).unwrap();
        for (p, q) in params.iter().zip(&copies) {
            assert_eq!(p.to_vec_f32().unwrap(), q.to_vec_f32().unwrap());
        }
        let (sa, sb) = (a.state_tensors(), b.state_tensors());
        assert_eq!(sa.len(), sb.len());
        for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
            assert_eq!(na, nb);
            assert_eq!(ta.to_vec::<f64>().unwrap(), tb.to_vec::<f64>().unwrap(), "{na}");
        }
    }

    #[test]
    fn parameters_sharing_storage_and_aliasing_gradients() {
        let copy = |t: &Tensor| Tensor::from_vec(t.to_vec_f32().unwrap(), t.shape().clone(), Device::Cpu).unwrap();
        let fused = Tensor::from_vec((0..8).map(|v| v as f32 * 0.25 - 1.0).collect(), (4, 2), Device::Cpu).unwrap();
        let (a, b) = (fused.narrow(0, 0, 2).unwrap(), fused.narrow(0, 2, 2).unwrap());
        let (ra, rb) = (copy(&a), copy(&b));
        let c = AdamWConfig { lr: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], c).unwrap();
        let mut reference = AdamW::new(vec![("a".into(), ra.clone()), ("b".into(), rb.clone())], c).unwrap();
        // a's gradient is b itself, a view of the storage being updated: it must be read before b changes.
        let gb = vec![1f32, -1., 0.5, 2.];
        let mut gs = grads_for(&[(&b, gb.clone())]);
        gs.insert(&a, b.clone());
        for _ in 0..2 {
            // The reference gets a copy of b's values as they are before the step.
            let rgs = grads_for(&[(&ra, rb.to_vec_f32().unwrap()), (&rb, gb.clone())]);
            opt.step(&gs).unwrap();
            reference.step(&rgs).unwrap();
        }
        assert_eq!(fused.to_vec_f32().unwrap(), [ra.to_vec_f32().unwrap(), rb.to_vec_f32().unwrap()].concat());
    }

    #[test]
    fn bad_inputs_are_errors_that_change_nothing() {
        let w = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu).unwrap();
        assert!(AdamW::new(vec![("w".into(), w.clone())], AdamWConfig { beta2: 1.0, ..Default::default() }).is_err());
        assert!(AdamW::new(vec![("w".into(), w.clone()), ("w".into(), w.t().unwrap_or(w.clone()))], AdamWConfig::default()).is_err());
        let m = Tensor::zeros((2, 3), DType::F32, Device::Cpu).unwrap();
        assert!(AdamW::new(vec![("m".into(), m.t().unwrap())], AdamWConfig::default()).is_err(), "a transposed view is not contiguous");
        let v = Tensor::from_vec(vec![5f32], 1, Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("v".into(), v.clone()), ("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        let mut gs = grads_for(&[(&v, vec![1.0])]);
        gs.insert(&w, Tensor::zeros(3, DType::F32, Device::Cpu).unwrap());
        assert!(matches!(opt.step(&gs), Err(Error::Parameter { .. })));
        assert_eq!(v.to_vec_f32().unwrap(), vec![5.0]);
        assert_eq!(opt.step_count("v"), Some(0));
        let stray = HashMap::from([("u.exp_avg".to_string(), Tensor::zeros(1, DType::F32, Device::Cpu).unwrap())]);
        assert!(opt.load_state_tensors(&stray).is_err());
        let partial = HashMap::from([("v.exp_avg".to_string(), Tensor::zeros(1, DType::F32, Device::Cpu).unwrap())]);
        assert!(opt.load_state_tensors(&partial).is_err());
    }
}
