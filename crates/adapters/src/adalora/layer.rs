//! AdaLoRA's SVD-form layer (PEFT `SVDLinear`): `y = base(x) + (drop(x)·(Q⊙λ)ᵀ·Pᵀ)·α/(ranknum + 1e-5)`, with
//! Q = `lora_A` `[r, in]`, λ = `lora_E` `[r, 1]`, P = `lora_B` `[out, r]`, α = `lora_alpha` (or r when
//! `lora_alpha ≤ 0`) and ranknum = `init_r` (PEFT keeps ranknum at the initial rank even after a layer is cut
//! down on load, and never saves it). [`SvdAdapter`] holds one adapter's tensors; the orthogonal regularizer
//! lives here too, and the layer that carries adapters over a base is [`super::SvdLinear`].

use std::sync::Mutex;

use rankfold_tensor::{no_grad, DType, Device, Rng, Tensor};

use crate::layer::rows_of;
use crate::{Error, Result};

/// PEFT's guard against a zero rank in the scale `α / (ranknum + 1e-5)`.
pub const RANKNUM_EPS: f64 = 1e-5;

/// One named AdaLoRA adapter of a layer: the triplet tensors and the constants of its scale.
#[derive(Debug, Clone)]
pub struct SvdAdapter {
    /// Q `[r, in]` (PEFT `lora_A`).
    pub(crate) a: Tensor,
    /// λ `[r, 1]` (PEFT `lora_E`).
    pub(crate) e: Tensor,
    /// P `[out, r]` (PEFT `lora_B`).
    pub(crate) b: Tensor,
    /// PEFT's `ranknum`: the initial rank, kept when the layer is cut down.
    pub(crate) ranknum: f64,
    /// PEFT's `scaling`: `lora_alpha`, or r when `lora_alpha ≤ 0`.
    pub(crate) scaling: f64,
    /// Dropout probability on the adapter input (training only).
    pub(crate) dropout: f64,
    /// This layer's entry of the adapter's `rank_pattern` (one flag per initial rank, as PEFT saves it), once
    /// one is known.
    pub(crate) pattern: Option<Vec<bool>>,
    /// The pattern the layer was cut down with on load (its kept positions are the current ranks, in order),
    /// so later patterns are written in the same initial-rank coordinates that PEFT's loader indexes with.
    pub(crate) cut: Option<Vec<bool>>,
}

impl SvdAdapter {
    /// A fresh adapter of rank `r` (PEFT `update_layer`): with `init_lora_weights`, λ = 0 and P, Q ~ N(0, 0.02²)
    /// (Q drawn first, then P); without it, all three ~ N(0, 1) as `torch.randn` leaves them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_features: usize,
        out_features: usize,
        r: usize,
        lora_alpha: f64,
        dropout: f64,
        init_lora_weights: bool,
        rng: &mut Rng,
        dtype: DType,
        device: Device,
    ) -> Result<Self> {
        crate::config::check_dropout(dropout)?;
        let (a, e, b) = if r == 0 {
            (
                empty((0, in_features), dtype, device)?,
                empty((0, 1), dtype, device)?,
                empty((out_features, 0), dtype, device)?,
            )
        } else if init_lora_weights {
            let a = rng.normal_tensor(0.0, 0.02, (r, in_features), dtype, device)?;
            let b = rng.normal_tensor(0.0, 0.02, (out_features, r), dtype, device)?;
            (a, Tensor::zeros((r, 1), dtype, device)?, b)
        } else {
            let a = rng.normal_tensor(0.0, 1.0, (r, in_features), dtype, device)?;
            let e = rng.normal_tensor(0.0, 1.0, (r, 1), dtype, device)?;
            let b = rng.normal_tensor(0.0, 1.0, (out_features, r), dtype, device)?;
            (a, e, b)
        };
        let scaling = if lora_alpha > 0.0 { lora_alpha } else { r as f64 };
        Ok(SvdAdapter {
            a: a.with_requires_grad(r > 0),
            e: e.with_requires_grad(r > 0),
            b: b.with_requires_grad(r > 0),
            ranknum: r as f64,
            scaling,
            dropout,
            pattern: None,
            cut: None,
        })
    }

    /// The current rank r (rows of Q).
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
    pub fn lora_a(&self) -> &Tensor {
        &self.a
    }
    pub fn lora_e(&self) -> &Tensor {
        &self.e
    }
    pub fn lora_b(&self) -> &Tensor {
        &self.b
    }
    pub fn ranknum(&self) -> f64 {
        self.ranknum
    }
    /// The factor the product is multiplied by: `scaling / (ranknum + 1e-5)`.
    pub fn scale(&self) -> f64 {
        self.scaling / (self.ranknum + RANKNUM_EPS)
    }
    /// This layer's `rank_pattern` entry in initial-rank coordinates (as saved), if any.
    pub fn pattern(&self) -> Option<&[bool]> {
        self.pattern.as_deref()
    }

    /// The pattern over the current ranks: the saved pattern read through the positions the layer was cut to
    /// on load (or the pattern itself when it was not cut). Errors when the lengths do not fit.
    pub fn current_mask(&self) -> Result<Option<Vec<bool>>> {
        let Some(p) = &self.pattern else { return Ok(None) };
        let mask = match &self.cut {
            Some(c) if c.len() == p.len() => c.iter().zip(p).filter(|(&c, _)| c).map(|(_, &k)| k).collect(),
            None => p.clone(),
            Some(c) => {
                let msg = format!("a pattern of {} flags for a layer cut with {} flags", p.len(), c.len());
                return Err(Error::config("rank_pattern", msg));
            }
        };
        if mask.len() != self.rank() {
            let msg = format!("{} flags for a layer of rank {}", mask.len(), self.rank());
            return Err(Error::config("rank_pattern", msg));
        }
        Ok(Some(mask))
    }

    /// Records `keep` (one flag per current rank) as the layer's pattern, expanded to initial-rank coordinates
    /// through the load-time cut (positions cut away stay false). λ is not touched.
    pub fn record_pattern(&mut self, keep: &[bool]) -> Result<()> {
        if keep.len() != self.rank() {
            let msg = format!("{} flags for a layer of rank {}", keep.len(), self.rank());
            return Err(Error::config("rank_pattern", msg));
        }
        self.pattern = Some(match &self.cut {
            Some(c) => {
                let mut next = keep.iter();
                c.iter()
                    .map(|&on| on && *next.next().expect("the cut keeps `rank` positions"))
                    .collect()
            }
            None => keep.to_vec(),
        });
        Ok(())
    }

    /// Prunes to `keep` (one flag per current rank): zeroes λ_i in place where `keep[i]` is false (Q and P
    /// stay) and records the pattern, so saving cuts those ranks away. This is what the allocator does at a
    /// masking step.
    pub fn set_pattern(&mut self, keep: &[bool]) -> Result<()> {
        if keep.len() != self.rank() {
            let msg = format!("{} flags for a layer of rank {}", keep.len(), self.rank());
            return Err(Error::config("rank_pattern", msg));
        }
        if keep.iter().any(|&k| !k) {
            no_grad(|| -> Result<()> {
                let drop: Vec<u8> = keep.iter().map(|&k| u8::from(!k)).collect();
                let m = Tensor::from_vec(drop, self.e.dims(), self.e.device())?;
                self.e.assign(&self.e.detach().masked_fill(&m, 0.0)?)?;
                Ok(())
            })?;
        }
        self.record_pattern(keep)
    }

    /// Makes Q, λ, P trainable leaves (`on`) or frozen. The handles change unless already in that state.
    pub fn set_trainable(&mut self, on: bool) {
        let on = on && self.rank() > 0;
        for t in [&mut self.a, &mut self.e, &mut self.b] {
            if t.requires_grad() != on || (!on && t.tracks_grad()) {
                *t = t.with_requires_grad(on);
            }
        }
    }
    pub fn is_trainable(&self) -> bool {
        self.a.requires_grad()
    }

    /// ΔW = P·(Q⊙λ)·scale `[out, in]` (PEFT `get_delta_weight`).
    pub fn delta_weight(&self) -> Result<Tensor> {
        if self.rank() == 0 {
            let out = self.b.dims()[0];
            let inf = self.a.dims()[1];
            return Ok(Tensor::zeros((out, inf), self.a.dtype(), self.a.device())?);
        }
        let qe = self.a.mul(&self.e)?;
        Ok(self.b.matmul(&qe)?.mul_scalar(self.scale())?)
    }

    /// The adapter branch `(drop(x)·(Q⊙λ)ᵀ·Pᵀ)·scale` for `x [.., in]`, or None for a rank-0 layer (whose
    /// branch is exactly zero). `rng` drives dropout when `train` is set.
    pub fn branch(&self, x: &Tensor, train: bool, rng: &Mutex<Rng>) -> Result<Option<Tensor>> {
        let r = self.rank();
        if r == 0 {
            return Ok(None);
        }
        let (mut x2, dims) = rows_of(x, self.a.dims()[1], self.b.dims()[0], "AdaLoRA")?;
        if train && self.dropout > 0.0 {
            let mut g = rng
                .lock()
                .map_err(|_| Error::module("AdaLoRA", "the dropout RNG's lock is poisoned"))?;
            x2 = x2.dropout(self.dropout, &mut g)?;
        }
        let qe = self.a.mul(&self.e)?;
        let h = x2.matmul(&qe.t()?)?.matmul(&self.b.t()?)?.mul_scalar(self.scale())?;
        Ok(Some(h.reshape(dims)?))
    }

    /// The tensors as PEFT saves them (`lora_A`, `lora_E`, `lora_B`, no `.weight`), with the pruned ranks cut
    /// away as PEFT's `resize_state_dict_by_rank_pattern` does: when the pattern keeps fewer ranks than the
    /// tensors hold, only the kept rows of Q and λ and the kept columns of P are written.
    pub fn peft_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let (a, e, b) = (self.a.detach(), self.e.detach(), self.b.detach());
        let (a, e, b) = match self.current_mask()? {
            Some(keep) if count(&keep) != self.rank() => (
                select_rows(&a, &keep)?,
                select_rows(&e, &keep)?,
                select_rows(&b.t()?, &keep)?.t()?.contiguous()?,
            ),
            _ => (a, e, b),
        };
        Ok(vec![("lora_A".into(), a), ("lora_B".into(), b), ("lora_E".into(), e)])
    }
}

/// The number of kept ranks in a pattern.
pub(crate) fn count(keep: &[bool]) -> usize {
    keep.iter().filter(|&&k| k).count()
}

/// A tensor with a zero-length dimension.
fn empty(shape: (usize, usize), dtype: DType, device: Device) -> Result<Tensor> {
    Ok(Tensor::zeros(shape, dtype, device)?)
}

/// The rows of a 2-D tensor `t` where `keep` is true, in order (a rank-0 result when none is kept).
fn select_rows(t: &Tensor, keep: &[bool]) -> Result<Tensor> {
    let cols = t.dims()[1];
    let kept = count(keep);
    if kept == 0 {
        return empty((0, cols), t.dtype(), t.device());
    }
    let rows: Vec<Tensor> = keep
        .iter()
        .enumerate()
        .filter(|(_, &k)| k)
        .map(|(i, _)| t.narrow(0, i, 1))
        .collect::<std::result::Result<_, _>>()?;
    let refs: Vec<&Tensor> = rows.iter().collect();
    Ok(Tensor::cat(&refs, 0)?.contiguous()?)
}

/// PEFT's orthogonal regularizer over the trainable adapter:
/// `weight · mean over every Q and every P of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F` (norms, not squared). A rank-0
/// layer's Q and P count in the mean with a zero norm, as in PEFT. None when there are no AdaLoRA tensors.
pub fn orth_regularization<'a>(
    pairs: impl IntoIterator<Item = (&'a Tensor, &'a Tensor)>,
    weight: f64,
) -> Result<Option<Tensor>> {
    if weight < 0.0 {
        return Err(Error::config("orth_reg_weight", format!("must be ≥ 0, got {weight}")));
    }
    let mut total: Option<Tensor> = None;
    let mut n = 0usize;
    for (a, b) in pairs {
        n += 2;
        if a.dims()[0] == 0 {
            continue;
        }
        for cov in [a.matmul(&a.t()?)?, b.t()?.matmul(b)?] {
            let r = cov.dims()[0];
            let eye = identity(r, cov.dtype(), cov.device())?;
            let norm = cov.sub(&eye)?.sqr()?.sum_all()?.sqrt()?;
            total = Some(match total {
                None => norm,
                Some(t) => t.add(&norm)?,
            });
        }
    }
    if n == 0 {
        return Ok(None);
    }
    Ok(match total {
        Some(t) => Some(t.mul_scalar(weight / n as f64)?),
        None => None,
    })
}

/// The r×r identity.
fn identity(r: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let mut v = vec![0f32; r * r];
    for i in 0..r {
        v[i * r + i] = 1.0;
    }
    Ok(Tensor::from_vec(v, (r, r), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rand(rng: &mut Rng, dims: (usize, usize), dtype: DType) -> Tensor {
        rng.normal_tensor(0.0, 0.5, dims, dtype, Device::Cpu).unwrap()
    }

    /// An adapter of rank r with random non-zero Q, λ, P in `dtype`.
    fn adapter(rng: &mut Rng, r: usize, inf: usize, out: usize, dtype: DType) -> SvdAdapter {
        let mut ad = SvdAdapter::new(inf, out, r, 8.0, 0.0, true, rng, dtype, Device::Cpu).unwrap();
        if r > 0 {
            ad.a = rand(rng, (r, inf), dtype).with_requires_grad(true);
            ad.e = rand(rng, (r, 1), dtype).with_requires_grad(true);
            ad.b = rand(rng, (out, r), dtype).with_requires_grad(true);
        }
        ad.ranknum = 6.0;
        ad
    }

    /// The branch by plain f64 loops: Σ_i P[o,i]·λ_i·(Σ_j Q[i,j]·x[j]) · α/(ranknum + 1e-5).
    fn branch_ref(ad: &SvdAdapter, x: &[f64], rows: usize) -> Vec<f64> {
        let (a, e, b) = (
            ad.a.to_vec::<f64>().unwrap(),
            ad.e.to_vec::<f64>().unwrap(),
            ad.b.to_vec::<f64>().unwrap(),
        );
        let (r, inf, out) = (ad.rank(), ad.a.dims()[1], ad.b.dims()[0]);
        let s = ad.scaling / (ad.ranknum + 1e-5);
        let mut y = vec![0.0; rows * out];
        for row in 0..rows {
            for i in 0..r {
                let qx: f64 = (0..inf).map(|j| a[i * inf + j] * x[row * inf + j]).sum();
                for o in 0..out {
                    y[row * out + o] += b[o * r + i] * e[i] * qx * s;
                }
            }
        }
        y
    }

    #[test]
    fn branch_and_delta_match_plain_loops() {
        let mut rng = Rng::new(3);
        let lock = Mutex::new(Rng::new(0));
        for (r, inf, out, lead) in [
            (5, 37, 23, vec![2, 3]),
            (1, 7, 1, vec![4]),
            (6, 13, 29, vec![1]),
            (0, 9, 4, vec![3]),
        ] {
            let ad = adapter(&mut rng, r, inf, out, DType::F32);
            let mut xd = lead.clone();
            xd.push(inf);
            let x = rng
                .normal_tensor(0.0, 1.0, xd.clone(), DType::F32, Device::Cpu)
                .unwrap();
            let rows: usize = lead.iter().product();
            let want = branch_ref(&ad, &x.to_vec::<f64>().unwrap(), rows);
            let delta = ad.delta_weight().unwrap();
            assert_eq!(delta.dims(), [out, inf]);
            let via_delta = x
                .reshape((rows, inf))
                .unwrap()
                .matmul(&delta.t().unwrap())
                .unwrap()
                .to_vec::<f64>()
                .unwrap();
            match ad.branch(&x, true, &lock).unwrap() {
                None => assert!(r == 0 && via_delta.iter().all(|&v| v == 0.0)),
                Some(y) => {
                    let mut yd = lead.clone();
                    yd.push(out);
                    assert_eq!(y.dims(), yd.as_slice());
                    for ((g, d), w) in y.to_vec::<f64>().unwrap().iter().zip(&via_delta).zip(&want) {
                        assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "branch {g} vs {w}");
                        assert!((d - w).abs() <= 1e-5 + 1e-5 * w.abs(), "delta {d} vs {w}");
                    }
                }
            }
        }
    }

    /// Central finite differences of `f` at every element of `t` (f64 tensors, perturbed in place).
    fn fd(t: &Tensor, f: &dyn Fn() -> f64) -> Vec<f64> {
        let base = t.to_vec::<f64>().unwrap();
        let h = 1e-6;
        (0..base.len())
            .map(|i| {
                let mut v = base.clone();
                v[i] += h;
                t.assign(&Tensor::from_vec(v.clone(), t.dims(), Device::Cpu).unwrap())
                    .unwrap();
                let up = f();
                v[i] -= 2.0 * h;
                t.assign(&Tensor::from_vec(v, t.dims(), Device::Cpu).unwrap()).unwrap();
                let down = f();
                t.assign(&Tensor::from_vec(base.clone(), t.dims(), Device::Cpu).unwrap())
                    .unwrap();
                (up - down) / (2.0 * h)
            })
            .collect()
    }

    fn assert_grad(got: &Tensor, want: &[f64], what: &str) {
        for (g, w) in got.to_vec::<f64>().unwrap().iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 + 1e-5 * w.abs(), "{what}: {g} vs {w}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(17);
        let lock = Mutex::new(Rng::new(0));
        for (r, inf, out, rows) in [(3, 5, 4, 3), (1, 2, 7, 1), (4, 6, 3, 2)] {
            let ad = adapter(&mut rng, r, inf, out, DType::F64);
            let x = rng
                .normal_tensor(0.0, 1.0, (rows, inf), DType::F64, Device::Cpu)
                .unwrap()
                .with_requires_grad(true);
            let w = rng
                .normal_tensor(0.0, 1.0, (rows, out), DType::F64, Device::Cpu)
                .unwrap();
            let loss = || {
                ad.branch(&x, false, &lock)
                    .unwrap()
                    .unwrap()
                    .mul(&w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let grads = loss().backward().unwrap();
            let value = || loss().to_scalar().unwrap();
            for (t, name) in [(&ad.a, "lora_A"), (&ad.e, "lora_E"), (&ad.b, "lora_B"), (&x, "x")] {
                assert_grad(grads.get(t).unwrap(), &fd(t, &value), name);
            }
            // The orthogonal regularizer, too (two layers, so the mean is over four norms).
            let other = adapter(&mut rng, r + 1, out, inf, DType::F64);
            let reg = || {
                orth_regularization([(&ad.a, &ad.b), (&other.a, &other.b)], 0.5)
                    .unwrap()
                    .unwrap()
            };
            let grads = reg().backward().unwrap();
            let value = || reg().to_scalar().unwrap();
            for (t, name) in [
                (&ad.a, "reg lora_A"),
                (&ad.b, "reg lora_B"),
                (&other.a, "reg other A"),
                (&other.b, "reg other B"),
            ] {
                assert_grad(grads.get(t).unwrap(), &fd(t, &value), name);
            }
        }
    }

    /// ‖M − I‖_F by plain loops for M = XXᵀ (`rows`) or XᵀX (columns) of a row-major [n, m] matrix.
    fn orth_ref(x: &[f64], n: usize, m: usize, rows: bool) -> f64 {
        let (k, len) = if rows { (n, m) } else { (m, n) };
        let at = |i: usize, j: usize| if rows { x[i * m + j] } else { x[j * m + i] };
        let mut s = 0.0;
        for i in 0..k {
            for j in 0..k {
                let dot: f64 = (0..len).map(|t| at(i, t) * at(j, t)).sum();
                let d = dot - if i == j { 1.0 } else { 0.0 };
                s += d * d;
            }
        }
        s.sqrt()
    }

    #[test]
    fn orth_regularization_is_the_mean_of_frobenius_norms() {
        let mut rng = Rng::new(23);
        let ads: Vec<SvdAdapter> = [(3, 11, 7), (0, 5, 4), (5, 4, 9)]
            .iter()
            .map(|&(r, i, o)| adapter(&mut rng, r, i, o, DType::F32))
            .collect();
        let got = orth_regularization(ads.iter().map(|a| (&a.a, &a.b)), 0.3)
            .unwrap()
            .unwrap()
            .to_scalar()
            .unwrap();
        let mut sum = 0.0;
        for ad in &ads {
            let (r, inf, out) = (ad.rank(), ad.a.dims()[1], ad.b.dims()[0]);
            if r > 0 {
                sum += orth_ref(&ad.a.to_vec::<f64>().unwrap(), r, inf, true);
                sum += orth_ref(&ad.b.to_vec::<f64>().unwrap(), out, r, false);
            }
        }
        // Six tensors in the mean, the rank-0 layer's two with norm zero.
        let want = 0.3 * sum / 6.0;
        assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
        assert!(orth_regularization(std::iter::empty(), 0.5).unwrap().is_none());
        assert!(orth_regularization(std::iter::empty(), -1.0).is_err());
    }

    #[test]
    fn dropout_acts_on_the_adapter_input_only_while_training() {
        let mut rng = Rng::new(31);
        let mut ad = adapter(&mut rng, 4, 9, 5, DType::F64);
        ad.dropout = 0.5;
        let lock = Mutex::new(Rng::new(1));
        let x = rng.normal_tensor(0.0, 1.0, (6, 9), DType::F64, Device::Cpu).unwrap();
        let eval = ad.branch(&x, false, &lock).unwrap().unwrap().to_vec::<f64>().unwrap();
        let want = branch_ref(&ad, &x.to_vec::<f64>().unwrap(), 6);
        for (g, w) in eval.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 + 1e-12 * w.abs());
        }
        // In training the branch equals the reference on the same input with the dropped elements zeroed and
        // the rest scaled by 2; replay the generator to know which were dropped.
        let train = ad.branch(&x, true, &lock).unwrap().unwrap().to_vec::<f64>().unwrap();
        let mut replay = Rng::new(1);
        let xd: Vec<f64> = x
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .map(|&v| if replay.uniform() >= 0.5 { 2.0 * v } else { 0.0 })
            .collect();
        let want = branch_ref(&ad, &xd, 6);
        assert!(train.iter().zip(&eval).any(|(a, b)| a != b));
        for (g, w) in train.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 + 1e-12 * w.abs(), "{g} vs {w}");
        }
    }

    #[test]
    fn set_pattern_masks_lambda_and_checks_the_length() {
        let mut rng = Rng::new(37);
        let mut ad = adapter(&mut rng, 4, 3, 2, DType::F32);
        let e = ad.e.to_vec_f32().unwrap();
        ad.set_pattern(&[true, false, true, false]).unwrap();
        assert_eq!(ad.e.to_vec_f32().unwrap(), vec![e[0], 0.0, e[2], 0.0]);
        assert_eq!(ad.pattern(), Some(&[true, false, true, false][..]));
        assert!(ad.set_pattern(&[true]).is_err());
    }

    #[test]
    fn saving_cuts_pruned_ranks() {
        let mut rng = Rng::new(29);
        let mut ad = adapter(&mut rng, 5, 6, 4, DType::F32);
        let keep = vec![true, false, false, true, true];
        ad.pattern = Some(keep.clone());
        let t: BTreeMap<String, Tensor> = ad.peft_tensors().unwrap().into_iter().collect();
        let (a, e, b) = (
            ad.a.to_vec_f32().unwrap(),
            ad.e.to_vec_f32().unwrap(),
            ad.b.to_vec_f32().unwrap(),
        );
        let kept: Vec<usize> = (0..5).filter(|&i| keep[i]).collect();
        assert_eq!(t["lora_A"].dims(), [3, 6]);
        assert_eq!(t["lora_E"].dims(), [3, 1]);
        assert_eq!(t["lora_B"].dims(), [4, 3]);
        let (sa, se, sb) = (
            t["lora_A"].to_vec_f32().unwrap(),
            t["lora_E"].to_vec_f32().unwrap(),
            t["lora_B"].to_vec_f32().unwrap(),
        );
        for (n, &i) in kept.iter().enumerate() {
            assert_eq!(se[n], e[i]);
            assert_eq!(&sa[n * 6..n * 6 + 6], &a[i * 6..i * 6 + 6]);
            for o in 0..4 {
                assert_eq!(sb[o * 3 + n], b[o * 5 + i]);
            }
        }
        // Nothing kept: zero-sized tensors, as PEFT writes them.
        ad.pattern = Some(vec![false; 5]);
        let t: BTreeMap<String, Tensor> = ad.peft_tensors().unwrap().into_iter().collect();
        assert_eq!(
            (t["lora_A"].dims(), t["lora_E"].dims(), t["lora_B"].dims()),
            (&[0, 6][..], &[0, 1][..], &[4, 0][..])
        );
        // A layer cut on load (rank 2 of 6) saves as it is under its load pattern; a later pattern over its two
        // ranks is recorded in the six initial-rank positions and cuts the tensors again.
        let mut small = adapter(&mut rng, 2, 6, 4, DType::F32);
        let loaded = vec![false, true, false, true, false, false];
        (small.pattern, small.cut) = (Some(loaded.clone()), Some(loaded));
        let t: BTreeMap<String, Tensor> = small.peft_tensors().unwrap().into_iter().collect();
        assert_eq!(t["lora_A"].to_vec_f32().unwrap(), small.a.to_vec_f32().unwrap());
        small.set_pattern(&[false, true]).unwrap();
        assert_eq!(small.pattern(), Some(&[false, false, false, true, false, false][..]));
        let t: BTreeMap<String, Tensor> = small.peft_tensors().unwrap().into_iter().collect();
        assert_eq!(
            t["lora_A"].to_vec_f32().unwrap(),
            small.a.narrow(0, 1, 1).unwrap().to_vec_f32().unwrap()
        );
        assert!(small.record_pattern(&[true]).is_err());
    }
}
