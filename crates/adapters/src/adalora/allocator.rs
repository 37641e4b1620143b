//! AdaLoRA's rank allocator (PEFT `RankAllocator` and `AdaLoraModel.update_and_allocate`): importance EMAs
//! of every adapter parameter, triplet scores, the cubic rank budget, and masking of the least important
//! singular values.
//!
//! Math (per parameter element w with gradient g, after each optimizer step):
//!   I = |w·g|;  Ī ← β1·Ī + (1−β1)·I;  Ū ← β2·Ū + (1−β2)·|I − Ī|;  s = Ī·Ū
//!   triplet i of a layer: S_i = s(λ_i) + (mean_j s(A_ij) + mean_j s(B_ji))
//!   budget b(t) = b0 for t ≤ tinit; bT for t > T − tfinal; otherwise
//!                 ⌊(b0 − bT)·(1 − (t − tinit)/(T − tfinal − tinit))³ + bT⌋, masking only when t % deltaT = 0
//!   where b0 = Σ init ranks and bT = target_r · (number of layers).
//!   Masking: the threshold is the k-th smallest S over all layers with k = b0 − b(t); every λ_i with
//!   S_i ≤ threshold is set to zero (its vectors are kept), and the rank pattern records which survive.
//! Phases (PEFT `AdaLoraModel.update_and_allocate(global_step)`): before T − tfinal, update the EMAs and mask
//! when the schedule says so; at T − tfinal, mask to the final budget once more (the EMAs are not updated), keep
//! that pattern and drop the EMAs; after it, re-apply the kept pattern every step.

use std::collections::{BTreeMap, HashMap};

use rankfold_tensor::{no_grad, GradStore, Tensor};

use crate::{Error, Result};

/// Which surviving singular values each layer keeps: module path → one flag per initial rank (true = kept).
pub type RankPattern = BTreeMap<String, Vec<bool>>;

/// The schedule and smoothing settings the allocator needs (a view of `AdaLoraConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocatorConfig {
    pub target_r: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub total_step: usize,
}

impl AllocatorConfig {
    /// Checks what PEFT checks (`AdaLoraConfig.__post_init__`, `RankAllocator.__init__`) plus `deltaT ≥ 1`
    /// (PEFT would divide by zero).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, msg: String| {
            Err(Error::Config {
                field: field.into(),
                msg,
            })
        };
        if self.total_step == 0 {
            return bad("total_step", "AdaLoRA needs total_step > 0".into());
        }
        if self.tinit + self.tfinal >= self.total_step {
            return bad(
                "tinit",
                format!(
                    "tinit ({}) must be below total_step - tfinal ({} - {}): no budgeting phase is left",
                    self.tinit, self.total_step, self.tfinal
                ),
            );
        }
        if self.delta_t == 0 {
            return bad("deltaT", "deltaT must be at least 1".into());
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b > 0.0 && b < 1.0) {
                return bad(field, format!("{field} must lie strictly between 0 and 1, got {b}"));
            }
        }
        Ok(())
    }
}

/// The three trainable tensors of one AdaLoRA layer, as the allocator sees them.
#[derive(Debug, Clone, Copy)]
pub struct TripletRef<'a> {
    /// The layer's module path, e.g. `layers.0.q_proj`.
    pub path: &'a str,
    /// Right singular vectors Q `[r, in]` (PEFT `lora_A`).
    pub a: &'a Tensor,
    /// Singular values Λ `[r, 1]` (PEFT `lora_E`); masking writes into it in place.
    pub e: &'a Tensor,
    /// Left singular vectors P `[out, r]` (PEFT `lora_B`).
    pub b: &'a Tensor,
}

/// The smoothed sensitivity Ī and uncertainty Ū of one parameter tensor.
#[derive(Debug, Clone)]
struct Ema {
    ipt: Tensor,
    unc: Tensor,
}

/// What one call of [`RankAllocator::on_step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// The budget of the schedule at this step (None in the final phase, where the kept pattern is re-applied).
    pub budget: Option<usize>,
    /// The new rank pattern when this step masked to a budget.
    pub pattern: Option<RankPattern>,
}

/// PEFT's `RankAllocator` together with the phase logic of `AdaLoraModel.update_and_allocate`.
#[derive(Debug, Clone)]
pub struct RankAllocator {
    config: AllocatorConfig,
    init_bgt: usize,
    target_bgt: usize,
    ema: HashMap<String, Ema>,
    /// The pattern fixed at step T − tfinal, re-applied in the final phase.
    final_pattern: Option<RankPattern>,
}

impl RankAllocator {
    /// An allocator over layers with these initial ranks (`init_ranks`: module path → rank).
    pub fn new(config: AllocatorConfig, init_ranks: &[(String, usize)]) -> Result<Self> {
        config.validate()?;
        let init_bgt = init_ranks.iter().map(|(_, r)| r).sum();
        Ok(RankAllocator {
            config,
            init_bgt,
            target_bgt: config.target_r * init_ranks.len(),
            ema: HashMap::new(),
            final_pattern: None,
        })
    }

    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }
    /// b0: the sum of the layers' initial ranks.
    pub fn init_budget(&self) -> usize {
        self.init_bgt
    }
    /// bT: `target_r` times the number of layers.
    pub fn target_budget(&self) -> usize {
        self.target_bgt
    }

    /// PEFT `budget_schedule`: the budget at `step` and whether this step masks.
    pub fn budget_schedule(&self, step: usize) -> (usize, bool) {
        let c = &self.config;
        if step <= c.tinit {
            (self.init_bgt, false)
        } else if step > c.total_step - c.tfinal {
            (self.target_bgt, true)
        } else {
            let span = (c.total_step - c.tfinal - c.tinit) as f64;
            let mul = 1.0 - (step - c.tinit) as f64 / span;
            // Python's `int(float)` truncates toward zero; `powf` is the C library's pow, as Python's `**`.
            let diff = self.init_bgt as f64 - self.target_bgt as f64;
            let budget = (diff * mul.powf(3.0) + self.target_bgt as f64).trunc();
            (budget.max(0.0) as usize, step % c.delta_t == 0)
        }
    }

    /// Updates Ī and Ū of every tensor of every layer from this step's gradients (PEFT `update_ipt`). A
    /// tensor without a gradient in `grads` counts as having a zero gradient (PEFT would fail on it).
    pub fn update_ipt(&mut self, layers: &[TripletRef<'_>], grads: &GradStore) -> Result<()> {
        let (b1, b2) = (self.config.beta1, self.config.beta2);
        let _guard = rankfold_tensor::NoGradGuard::new();
        for l in layers {
            for (which, p) in [("lora_A", l.a), ("lora_E", l.e), ("lora_B", l.b)] {
                let key = format!("{}.{which}", l.path);
                let ipt = match grads.get(p) {
                    Some(g) => p.detach().mul(&g.detach())?.abs()?,
                    None => p.detach().zeros_like()?,
                };
                let prev = match self.ema.remove(&key) {
                    Some(e) if e.ipt.dims() == p.dims() => e,
                    _ => Ema {
                        ipt: p.detach().zeros_like()?,
                        unc: p.detach().zeros_like()?,
                    },
                };
                let ipt_avg = prev.ipt.mul_scalar(b1)?.add(&ipt.mul_scalar(1.0 - b1)?)?;
                let unc = prev
                    .unc
                    .mul_scalar(b2)?
                    .add(&ipt.sub(&ipt_avg)?.abs()?.mul_scalar(1.0 - b2)?)?;
                self.ema.insert(key, Ema { ipt: ipt_avg, unc });
            }
        }
        Ok(())
    }

    /// Forgets the EMAs (PEFT `reset_ipt`).
    pub fn reset_ipt(&mut self) {
        self.ema.clear();
    }

    /// The element scores s = Ī·Ū of one tensor (zeros when it has no EMA yet).
    fn element_score(&self, path: &str, which: &str, like: &Tensor) -> Result<Tensor> {
        match self.ema.get(&format!("{path}.{which}")) {
            Some(e) => e.ipt.mul(&e.unc).map_err(Error::from),
            None => like.detach().zeros_like().map_err(Error::from),
        }
    }

    /// The score S_i of every triplet of every layer, in layer order (PEFT `mask_to_budget`'s `triplet_ipt`).
    pub fn triplet_scores(&self, layers: &[TripletRef<'_>]) -> Result<Vec<Vec<f32>>> {
        let _guard = rankfold_tensor::NoGradGuard::new();
        let mut all = Vec::with_capacity(layers.len());
        for l in layers {
            let r = l.e.dims().first().copied().unwrap_or(0);
            if r == 0 {
                all.push(Vec::new());
                continue;
            }
            let s_a = self
                .element_score(l.path, "lora_A", l.a)?
                .mean(&[1], false)?
                .to_vec_f32()?;
            let s_b = self
                .element_score(l.path, "lora_B", l.b)?
                .mean(&[0], false)?
                .to_vec_f32()?;
            let s_e = self.element_score(l.path, "lora_E", l.e)?.to_vec_f32()?;
            all.push((0..r).map(|i| s_e[i] + (s_a[i] + s_b[i])).collect());
        }
        Ok(all)
    }

    /// Masks every layer to `budget` (PEFT `mask_to_budget`): zeroes each λ_i whose score is at or below the
    /// k-th smallest score, k = b0 − budget, and returns the pattern of survivors. With k = 0 (where PEFT's
    /// `kthvalue` would fail) nothing is masked.
    pub fn mask_to_budget(&self, layers: &[TripletRef<'_>], budget: usize) -> Result<RankPattern> {
        let scores = self.triplet_scores(layers)?;
        let k = self.init_bgt.saturating_sub(budget);
        let mut flat: Vec<f32> = scores.iter().flatten().copied().collect();
        let threshold = if k == 0 || flat.is_empty() {
            f32::NEG_INFINITY
        } else {
            flat.sort_by(f32::total_cmp);
            flat[k.min(flat.len()) - 1]
        };
        let mut pattern = RankPattern::new();
        for (l, s) in layers.iter().zip(&scores) {
            // `<=` is false for a NaN score, so a NaN keeps its triplet, as in PEFT.
            let keep: Vec<bool> = s
                .iter()
                .map(|&v| v.partial_cmp(&threshold) == Some(std::cmp::Ordering::Greater) || v.is_nan())
                .collect();
            apply_mask(l, &keep)?;
            pattern.insert(l.path.to_string(), keep);
        }
        Ok(pattern)
    }

    /// The allocator's work after the optimizer step of global step `step` (PEFT
    /// `AdaLoraModel.update_and_allocate`); see the module doc for the three phases.
    pub fn on_step(&mut self, step: usize, layers: &[TripletRef<'_>], grads: &GradStore) -> Result<StepOutcome> {
        let end = self.config.total_step - self.config.tfinal;
        if step < end {
            self.update_ipt(layers, grads)?;
            let (budget, mask) = self.budget_schedule(step);
            let pattern = if mask {
                Some(self.mask_to_budget(layers, budget)?)
            } else {
                None
            };
            Ok(StepOutcome {
                budget: Some(budget),
                pattern,
            })
        } else if step == end {
            let (budget, _) = self.budget_schedule(step);
            let pattern = self.mask_to_budget(layers, budget)?;
            self.final_pattern = Some(pattern.clone());
            self.reset_ipt();
            Ok(StepOutcome {
                budget: Some(budget),
                pattern: Some(pattern),
            })
        } else {
            if let Some(p) = &self.final_pattern {
                mask_using_pattern(layers, p)?;
            }
            Ok(StepOutcome {
                budget: None,
                pattern: None,
            })
        }
    }

    /// The pattern the final phase re-applies, once step T − tfinal has fixed it.
    pub fn final_pattern(&self) -> Option<&RankPattern> {
        self.final_pattern.as_ref()
    }

    /// The importance averages as (key, Ī, Ū), sorted by key (`<path>.lora_A`, `<path>.lora_E`, …), for a
    /// training checkpoint.
    pub fn ema_tensors(&self) -> Vec<(String, Tensor, Tensor)> {
        let mut v: Vec<(String, Tensor, Tensor)> = self
            .ema
            .iter()
            .map(|(k, e)| (k.clone(), e.ipt.detach(), e.unc.detach()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Sets the importance averages of `key` (restoring a checkpoint; see [`RankAllocator::ema_tensors`]).
    pub fn set_ema(&mut self, key: String, ipt: Tensor, unc: Tensor) {
        self.ema.insert(key, Ema { ipt, unc });
    }

    /// Sets the pattern the final phase re-applies (for a run resumed past step T − tfinal).
    pub fn set_final_pattern(&mut self, pattern: Option<RankPattern>) {
        self.final_pattern = pattern;
    }
}

/// Zeroes λ_i in place wherever `keep[i]` is false (PEFT `mask_using_rank_pattern` for one layer).
pub fn apply_mask(l: &TripletRef<'_>, keep: &[bool]) -> Result<()> {
    let r = l.e.elem_count();
    if keep.len() != r {
        return Err(Error::Config {
            field: "rank_pattern".into(),
            msg: format!(
                "module {} has rank {r} but its pattern has {} entries",
                l.path,
                keep.len()
            ),
        });
    }
    if keep.iter().all(|&k| k) {
        return Ok(());
    }
    no_grad(|| -> Result<()> {
        let drop: Vec<u8> = keep.iter().map(|&k| u8::from(!k)).collect();
        let m = Tensor::from_vec(drop, l.e.dims(), l.e.device())?;
        l.e.assign(&l.e.detach().masked_fill(&m, 0.0)?)?;
        Ok(())
    })
}

/// Applies a saved pattern to every layer it names (PEFT `mask_using_rank_pattern`).
pub fn mask_using_pattern(layers: &[TripletRef<'_>], pattern: &RankPattern) -> Result<()> {
    for l in layers {
        if let Some(keep) = pattern.get(l.path) {
            apply_mask(l, keep)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankfold_tensor::{DType, Device, Rng};

    fn cfg(target_r: usize, tinit: usize, tfinal: usize, delta_t: usize, total_step: usize) -> AllocatorConfig {
        AllocatorConfig {
            target_r,
            tinit,
            tfinal,
            delta_t,
            beta1: 0.85,
            beta2: 0.7,
            total_step,
        }
    }

    /// The budget from exact integer arithmetic: bT + ⌊(b0 − bT)·(end − t)³ / span³⌋, with its remainder.
    fn exact_budget(b0: usize, bt: usize, end: usize, span: usize, t: usize) -> (usize, u128) {
        let num = (b0 - bt) as u128 * ((end - t) as u128).pow(3);
        let den = (span as u128).pow(3);
        (bt + (num / den) as usize, num % den)
    }

    #[test]
    fn budget_follows_the_cubic_schedule() {
        let mut rng = Rng::new(11);
        for _ in 0..40 {
            let layers = 1 + rng.below(6) as usize;
            let ranks: Vec<(String, usize)> = (0..layers)
                .map(|i| (format!("l{i}"), 2 + rng.below(11) as usize))
                .collect();
            let b0: usize = ranks.iter().map(|r| r.1).sum();
            let target_r = rng.below(3) as usize;
            let total = 20 + rng.below(200) as usize;
            let tinit = rng.below(total as u64 / 3) as usize;
            let tfinal = rng.below(total as u64 / 3) as usize;
            let dt = 1 + rng.below(7) as usize;
            let a = RankAllocator::new(cfg(target_r, tinit, tfinal, dt, total), &ranks).unwrap();
            let bt = target_r * layers;
            assert_eq!((a.init_budget(), a.target_budget()), (b0, bt));
            let (end, span) = (total - tfinal, total - tfinal - tinit);
            for t in 0..total + 3 {
                let (b, mask) = a.budget_schedule(t);
                if t <= tinit {
                    assert_eq!((b, mask), (b0, false), "t={t}");
                } else if t > end {
                    assert_eq!((b, mask), (bt, true), "t={t}");
                } else {
                    let (q, rem) = exact_budget(b0, bt, end, span, t);
                    // Where the exact value is an integer, float rounding (as in PEFT) may land one below it.
                    assert!(
                        b == q || (rem == 0 && b + 1 == q),
                        "t={t}: {b} vs exact {q} (rem {rem})"
                    );
                    assert_eq!(mask, t % dt == 0, "t={t}");
                }
            }
            // The budget never grows and ends at the target.
            let seq: Vec<usize> = (0..=end).map(|t| a.budget_schedule(t).0).collect();
            assert!(seq.windows(2).all(|w| w[1] <= w[0]));
            assert_eq!(a.budget_schedule(end).0, bt);
        }
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(cfg(2, 5, 5, 1, 10).validate().is_err());
        assert!(cfg(2, 0, 0, 0, 10).validate().is_err());
        assert!(cfg(2, 0, 0, 1, 0).validate().is_err());
        let mut c = cfg(2, 0, 0, 1, 10);
        c.beta1 = 1.0;
        assert!(c.validate().is_err());
    }

    struct Layer {
        path: String,
        a: Tensor,
        e: Tensor,
        b: Tensor,
    }

    fn layers(rng: &mut Rng, shapes: &[(usize, usize, usize)]) -> Vec<Layer> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, &(r, inf, out))| Layer {
                path: format!("layers.{i}.proj"),
                a: rng
                    .normal_tensor(0.0, 1.0, (r, inf), DType::F32, Device::Cpu)
                    .unwrap()
                    .with_requires_grad(true),
                e: rng
                    .normal_tensor(0.0, 1.0, (r, 1), DType::F32, Device::Cpu)
                    .unwrap()
                    .with_requires_grad(true),
                b: rng
                    .normal_tensor(0.0, 1.0, (out, r), DType::F32, Device::Cpu)
                    .unwrap()
                    .with_requires_grad(true),
            })
            .collect()
    }

    fn refs(ls: &[Layer]) -> Vec<TripletRef<'_>> {
        ls.iter()
            .map(|l| TripletRef {
                path: &l.path,
                a: &l.a,
                e: &l.e,
                b: &l.b,
            })
            .collect()
    }

    /// f64 EMAs of one tensor, updated by plain loops.
    #[derive(Clone, Default)]
    struct RefEma {
        ipt: Vec<f64>,
        unc: Vec<f64>,
    }

    impl RefEma {
        fn update(&mut self, p: &[f32], g: &[f32], b1: f64, b2: f64) {
            if self.ipt.is_empty() {
                self.ipt = vec![0.0; p.len()];
                self.unc = vec![0.0; p.len()];
            }
            for i in 0..p.len() {
                let ipt = (p[i] as f64 * g[i] as f64).abs();
                self.ipt[i] = b1 * self.ipt[i] + (1.0 - b1) * ipt;
                self.unc[i] = b2 * self.unc[i] + (1.0 - b2) * (ipt - self.ipt[i]).abs();
            }
        }
        fn score(&self, i: usize) -> f64 {
            self.ipt[i] * self.unc[i]
        }
    }

    #[test]
    fn masking_hits_the_budget_and_drops_the_lowest_scores() {
        let mut rng = Rng::new(5);
        for round in 0..6 {
            let shapes: Vec<(usize, usize, usize)> = (0..1 + rng.below(4) as usize)
                .map(|_| {
                    (
                        1 + rng.below(9) as usize,
                        1 + rng.below(13) as usize,
                        1 + rng.below(11) as usize,
                    )
                })
                .collect();
            let ls = layers(&mut rng, &shapes);
            let ranks: Vec<(String, usize)> = ls.iter().map(|l| (l.path.clone(), l.a.dims()[0])).collect();
            let c = cfg(1, 0, 0, 1, 100);
            let mut alloc = RankAllocator::new(c, &ranks).unwrap();
            let mut reference: Vec<[RefEma; 3]> = vec![Default::default(); ls.len()];
            for _ in 0..1 + round {
                let mut grads = GradStore::new();
                for (l, re) in ls.iter().zip(reference.iter_mut()) {
                    for (k, p) in [&l.a, &l.e, &l.b].into_iter().enumerate() {
                        let g = rng.normal_tensor(0.0, 1.0, p.dims(), DType::F32, Device::Cpu).unwrap();
                        re[k].update(&p.to_vec_f32().unwrap(), &g.to_vec_f32().unwrap(), c.beta1, c.beta2);
                        grads.insert(p, g);
                    }
                }
                alloc.update_ipt(&refs(&ls), &grads).unwrap();
            }
            // Independent triplet scores: s(λ_i) + mean_j s(A_ij) + mean_j s(B_ji).
            let want: Vec<Vec<f64>> = ls
                .iter()
                .zip(&reference)
                .map(|(l, re)| {
                    let (r, inf, out) = (l.a.dims()[0], l.a.dims()[1], l.b.dims()[0]);
                    (0..r)
                        .map(|i| {
                            let sa = (0..inf).map(|j| re[0].score(i * inf + j)).sum::<f64>() / inf as f64;
                            let sb = (0..out).map(|j| re[2].score(j * r + i)).sum::<f64>() / out as f64;
                            re[1].score(i) + sa + sb
                        })
                        .collect()
                })
                .collect();
            let got = alloc.triplet_scores(&refs(&ls)).unwrap();
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((*g as f64 - w).abs() <= 1e-6 + 1e-4 * w.abs(), "{g} vs {w}");
            }
            let b0 = alloc.init_budget();
            let budget = rng.below(b0 as u64 + 1) as usize;
            let before: Vec<Vec<f32>> = ls.iter().map(|l| l.e.to_vec_f32().unwrap()).collect();
            let pattern = alloc.mask_to_budget(&refs(&ls), budget).unwrap();
            let kept: usize = pattern.values().flatten().filter(|&&k| k).count();
            assert_eq!(kept, budget, "round {round}: b0 {b0}");
            // The dropped triplets are exactly the b0 − budget lowest reference scores.
            let mut order: Vec<(f64, usize, usize)> = want
                .iter()
                .enumerate()
                .flat_map(|(li, s)| s.iter().enumerate().map(move |(i, &v)| (v, li, i)))
                .collect();
            order.sort_by(|x, y| x.0.total_cmp(&y.0));
            for (n, &(_, li, i)) in order.iter().enumerate() {
                let keep = pattern[&ls[li].path][i];
                assert_eq!(keep, n >= b0 - budget, "layer {li} rank {i}");
                let e = ls[li].e.to_vec_f32().unwrap()[i];
                assert_eq!(e, if keep { before[li][i] } else { 0.0 });
            }
        }
    }

    #[test]
    fn phases_mask_at_the_right_steps_and_the_final_pattern_sticks() {
        let mut rng = Rng::new(9);
        let ls = layers(&mut rng, &[(4, 5, 3), (6, 3, 7), (3, 4, 4)]);
        let ranks: Vec<(String, usize)> = ls.iter().map(|l| (l.path.clone(), l.a.dims()[0])).collect();
        let c = cfg(2, 2, 3, 3, 14);
        let mut alloc = RankAllocator::new(c, &ranks).unwrap();
        let mut final_pattern = None;
        for step in 0..=14 {
            let mut grads = GradStore::new();
            for l in &ls {
                for p in [&l.a, &l.e, &l.b] {
                    grads.insert(
                        p,
                        rng.normal_tensor(0.0, 1.0, p.dims(), DType::F32, Device::Cpu).unwrap(),
                    );
                }
                // Training moves λ again between maskings.
                l.e.assign(
                    &rng.normal_tensor(0.0, 1.0, l.e.dims(), DType::F32, Device::Cpu)
                        .unwrap(),
                )
                .unwrap();
            }
            let out = alloc.on_step(step, &refs(&ls), &grads).unwrap();
            let end = 14 - 3;
            let masks = (step > 2 && step < end && step % 3 == 0) || step == end;
            assert_eq!(out.pattern.is_some(), masks, "step {step}");
            if let Some(p) = &out.pattern {
                let kept: usize = p.values().flatten().filter(|&&k| k).count();
                assert_eq!(kept, out.budget.unwrap(), "step {step}");
            }
            if step == end {
                assert_eq!(out.budget, Some(6));
                final_pattern = out.pattern.clone();
            }
            if step > end {
                assert!(out.pattern.is_none() && out.budget.is_none());
                let p = final_pattern.as_ref().unwrap();
                for l in &ls {
                    let e = l.e.to_vec_f32().unwrap();
                    for (i, &k) in p[&l.path].iter().enumerate() {
                        assert_eq!(e[i] == 0.0, !k, "step {step} {} rank {i}", l.path);
                    }
                }
            }
        }
    }
}
