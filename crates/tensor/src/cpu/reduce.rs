//! Row-wise and dimension reductions on the CPU: sum/max/min/argmax/argmin, softmax and log-softmax (forward and
//! backward), the causal attention softmax (scale, mask and softmax in one pass), layer norm and RMS norm (fused
//! forward and backward), and fused cross-entropy.

use rayon::prelude::*;

use super::vecmath as vm;
use super::{float_dispatch, float_into_data, CpuData, CpuStorage};
use crate::{Error, Float, Layout, Result, Shape};

/// Rows per rayon task is chosen so that each task touches at least this many elements.
const PAR_ELEMS: usize = 1 << 14;

fn rows_per_task(cols: usize) -> usize {
    (PAR_ELEMS / cols.max(1)).max(1)
}

/// Reductions over one or more dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReduceOp {
    Sum,
    Max,
    Min,
    ArgMax,
    ArgMin,
}

impl CpuStorage {
    /// Reduces `dims` of the view to size 1 (the caller squeezes them when keepdim is off).
    pub(crate) fn reduce(&self, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<CpuStorage> {
            let x = s.float_slice::<T>(l);
            let in_shape = l.shape();
            let mut out_dims = in_shape.dims().to_vec();
            for &d in dims {
                out_dims[d] = 1;
            }
            let out_shape = Shape::new(out_dims);
            let n_out = out_shape.elem_count();
            let rank = in_shape.rank();
            let last_only = dims.len() == 1 && dims[0] + 1 == rank;
            let cols = if rank == 0 { 1 } else { in_shape.elem_count() / n_out.max(1) };
            // Values are accumulated in f64 for sums; max/min track value and first index.
            let mut acc = vec![0f64; n_out];
            let mut idx = vec![0u32; n_out];
            if last_only && n_out > 0 {
                let work = |(r, (a, i)): (usize, (&mut f64, &mut u32))| {
                    let row = &x[r * cols..(r + 1) * cols];
                    (*a, *i) = reduce_row(row, op);
                };
                if x.len() >= PAR_ELEMS {
                    acc.par_iter_mut().zip(idx.par_iter_mut()).enumerate().with_min_len(rows_per_task(cols)).for_each(work);
                } else {
                    acc.iter_mut().zip(idx.iter_mut()).enumerate().for_each(work);
                }
            } else {
                let init = match op {
                    ReduceOp::Sum => 0.0,
                    ReduceOp::Max | ReduceOp::ArgMax => f64::NEG_INFINITY,
                    ReduceOp::Min | ReduceOp::ArgMin => f64::INFINITY,
                };
                acc.fill(init);
                let mut seen = vec![false; n_out];
                let out_l = Layout::contiguous(out_shape.clone()).broadcast_as(in_shape, "reduce")?;
                // Position of each element along the reduced dims, for argmax/argmin over one dim.
                let arg_dim = dims.first().copied().unwrap_or(0);
                let arg_stride: usize = in_shape.dims().get(arg_dim + 1..).unwrap_or(&[]).iter().product();
                let arg_size = in_shape.dims().get(arg_dim).copied().unwrap_or(1);
                for (k, (&v, o)) in x.iter().zip(out_l.offsets()).enumerate() {
                    let v = v.to_f64();
                    match op {
                        ReduceOp::Sum => acc[o] += v,
                        ReduceOp::Max | ReduceOp::ArgMax | ReduceOp::Min | ReduceOp::ArgMin => {
                            let better = match op {
                                ReduceOp::Max | ReduceOp::ArgMax => v > acc[o] || (v.is_nan() && !acc[o].is_nan()),
                                _ => v < acc[o] || (v.is_nan() && !acc[o].is_nan()),
                            };
                            if !seen[o] || better {
                                seen[o] = true;
                                acc[o] = v;
                                idx[o] = ((k / arg_stride) % arg_size) as u32;
                            }
                        }
                    }
                }
            }
            let data = match op {
                ReduceOp::ArgMax | ReduceOp::ArgMin => CpuData::U32(idx),
                _ => float_into_data(acc.into_iter().map(T::from_f64).collect::<Vec<T>>(), s.dtype()),
            };
            Ok(CpuStorage::new(data))
        }
        if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) && dims.len() != 1 {
            return Err(Error::invalid("argmax", "argmax/argmin reduce exactly one dimension"));
        }
        float_dispatch!(self.dtype(), "reduce", go(self, layout, dims, op))
    }

    /// Softmax (or log-softmax) over the last dimension of a view; contiguous result.
    pub(crate) fn softmax_last(&self, layout: &Layout, log: bool) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, log: bool) -> Result<CpuStorage> {
            let x = s.float_slice::<T>(l);
            let cols = l.dims().last().copied().unwrap_or(1);
            let mut out = x.to_vec();
            for_rows(&mut out, cols, |row| {
                let max = vm::max(row);
                // A fully masked row (all −inf) gives zeros rather than PyTorch's NaNs.
                let max = if max == T::NEG_INFINITY { T::ZERO } else { max };
                if log {
                    let mut sum = T::ZERO;
                    for v in row.iter_mut() {
                        *v = *v - max;
                    }
                    for v in row.iter() {
                        sum += vm::exp(*v);
                    }
                    let lse = sum.ln();
                    row.iter_mut().for_each(|v| *v = *v - lse);
                } else {
                    for v in row.iter_mut() {
                        *v = vm::exp(*v - max);
                    }
                    let inv = T::ONE / vm::sum(row);
                    row.iter_mut().for_each(|v| *v = *v * inv);
                }
            });
            Ok(CpuStorage::new(float_into_data(out, s.dtype())))
        }
        float_dispatch!(self.dtype(), "softmax", go(self, layout, log))
    }

    /// Gradient of softmax/log-softmax over the last dim given its output `y` (self) and upstream `g`.
    pub(crate) fn softmax_last_bwd(&self, yl: &Layout, g: &CpuStorage, gl: &Layout, log: bool) -> Result<CpuStorage> {
        fn go<T: Float>(ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout, log: bool) -> Result<CpuStorage> {
            let y = ys.float_slice::<T>(yl);
            let cols = yl.dims().last().copied().unwrap_or(1);
            let mut out = gs.float_slice::<T>(gl).into_owned();
            for_rows_with(&mut out, &y, cols, |g, y| {
                if log {
                    let s: T = vm::sum(g);
                    g.iter_mut().zip(y).for_each(|(g, &y)| *g = *g - vm::exp(y) * s);
                } else {
                    let s: T = vm::dot(g, y);
                    g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - s));
                }
            });
            Ok(CpuStorage::new(float_into_data(out, gs.dtype())))
        }
        float_dispatch!(g.dtype(), "softmax_bwd", go(self, yl, g, gl, log))
    }
}

/// Shape of a causal softmax: the last two dims are [t, tk]; query row i (at position `offset + i`) sees the keys
/// j ≤ offset + i.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CausalArgs {
    pub(crate) t: usize,
    pub(crate) tk: usize,
    pub(crate) offset: usize,
    pub(crate) scale: f64,
}

impl CausalArgs {
    /// The number of keys that row `r` of the flattened [.., t, tk] view sees.
    fn visible(&self, r: usize) -> usize {
        (self.offset + r % self.t + 1).min(self.tk)
    }
}

/// Softmax over the last dim of `scale · x` with the causal mask of `a` applied in the same pass: masked keys
/// get exactly 0, as a fill with the lowest f32 would give. The scaled scores, the mask and the fill are never
/// materialized. Contiguous result.
pub(crate) fn causal_softmax(x: (&CpuStorage, &Layout), a: CausalArgs) -> Result<CpuStorage> {
    fn go<T: Float>(s: &CpuStorage, l: &Layout, a: CausalArgs) -> Result<CpuStorage> {
        let x = s.float_slice::<T>(l);
        let mut out = vec![T::ZERO; x.len()];
        let scale = T::from_f64(a.scale);
        let work = |(r, o): (usize, &mut [T])| {
            let n = a.visible(r);
            let seen = &mut o[..n];
            seen.iter_mut().zip(&x[r * a.tk..r * a.tk + n]).for_each(|(o, &v)| *o = v * scale);
            let max = vm::max(seen);
            for v in seen.iter_mut() {
                *v = vm::exp(*v - max);
            }
            // The sum runs over the whole row, zeros included, so that it adds in the same order as a softmax of
            // the masked-filled row would.
            let inv = T::ONE / vm::sum(o);
            o[..n].iter_mut().for_each(|v| *v = *v * inv);
        };
        if a.tk > 0 {
            if x.len() >= PAR_ELEMS {
                out.par_chunks_mut(a.tk).enumerate().with_min_len(rows_per_task(a.tk)).for_each(work);
            } else {
                out.chunks_mut(a.tk).enumerate().for_each(work);
            }
        }
        Ok(CpuStorage::new(float_into_data(out, s.dtype())))
    }
    float_dispatch!(x.0.dtype(), "causal_softmax", go(x.0, x.1, a))
}

/// Gradient of [`causal_softmax`] with respect to its input x, given its output `y` and upstream `g`:
/// `scale · y ⊙ (g − ⟨g, y⟩)` on the visible keys, 0 on the masked ones.
pub(crate) fn causal_softmax_bwd(y: (&CpuStorage, &Layout), g: (&CpuStorage, &Layout), a: CausalArgs) -> Result<CpuStorage> {
    fn go<T: Float>(y: (&CpuStorage, &Layout), g: (&CpuStorage, &Layout), a: CausalArgs) -> Result<CpuStorage> {
        let (yv, gv) = (y.0.float_slice::<T>(y.1), g.0.float_slice::<T>(g.1));
        let mut out = vec![T::ZERO; gv.len()];
        let scale = T::from_f64(a.scale);
        let work = |(r, o): (usize, &mut [T])| {
            let n = a.visible(r);
            let (yr, gr) = (&yv[r * a.tk..(r + 1) * a.tk], &gv[r * a.tk..(r + 1) * a.tk]);
            // Over the whole row (y is 0 on masked keys), in the order of the plain softmax's backward.
            let s: T = vm::dot(gr, yr);
            let (yr, gr) = (&yr[..n], &gr[..n]);
            o[..n].iter_mut().zip(yr.iter().zip(gr)).for_each(|(o, (&y, &g))| *o = y * (g - s) * scale);
        };
        if a.tk > 0 {
            if gv.len() >= PAR_ELEMS {
                out.par_chunks_mut(a.tk).enumerate().with_min_len(rows_per_task(a.tk)).for_each(work);
            } else {
                out.chunks_mut(a.tk).enumerate().for_each(work);
            }
        }
        Ok(CpuStorage::new(float_into_data(out, g.0.dtype())))
    }
    float_dispatch!(g.0.dtype(), "causal_softmax_bwd", go(y, g, a))
}

/// Per-row statistics saved by a norm's forward pass for its backward pass.
#[derive(Debug)]
pub(crate) struct NormOut {
    pub(crate) y: CpuStorage,
    /// Mean per row (zeros for RMS norm), f32/f64 by compute type.
    pub(crate) mean: CpuStorage,
    /// 1/sqrt(var + eps) (or 1/rms) per row.
    pub(crate) rstd: CpuStorage,
}

/// Gradients of a norm with respect to its input, weight and bias.
#[derive(Debug)]
pub(crate) struct NormGrads {
    pub(crate) gx: CpuStorage,
    pub(crate) gw: Option<CpuStorage>,
    pub(crate) gb: Option<CpuStorage>,
}

/// Inputs of the fused norm kernels (layer norm when `rms` is false).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormArgs<'a> {
    pub(crate) x: (&'a CpuStorage, &'a Layout),
    pub(crate) w: Option<(&'a CpuStorage, &'a Layout)>,
    pub(crate) b: Option<(&'a CpuStorage, &'a Layout)>,
    pub(crate) eps: f64,
    pub(crate) rms: bool,
}

pub(crate) fn norm_fwd(a: NormArgs<'_>) -> Result<NormOut> {
    fn go<T: Float>(a: NormArgs<'_>) -> Result<NormOut> {
        let x = a.x.0.float_slice::<T>(a.x.1);
        let cols = a.x.1.dims().last().copied().unwrap_or(1);
        let rows = x.len() / cols.max(1);
        let w = a.w.map(|(s, l)| s.float_slice::<T>(l));
        let b = a.b.map(|(s, l)| s.float_slice::<T>(l));
        let mut y = vec![T::ZERO; x.len()];
        let mut stats = vec![(T::ZERO, T::ZERO); rows];
        let eps = T::from_f64(a.eps);
        let inv_n = T::ONE / T::from_f64(cols as f64);
        let work = |((yr, xr), st): ((&mut [T], &[T]), &mut (T, T))| {
            let mean = if a.rms { T::ZERO } else { vm::sum(xr) * inv_n };
            // Centre into the output row first, so the variance is a lane-split dot product.
            yr.iter_mut().zip(xr).for_each(|(o, &v)| *o = v - mean);
            let var = vm::dot(yr, yr) * inv_n;
            let rstd = T::ONE / (var + eps).sqrt();
            match (&w, &b) {
                (Some(w), Some(b)) => yr.iter_mut().zip(w.iter().zip(b.iter())).for_each(|(o, (&w, &b))| *o = *o * rstd * w + b),
                (Some(w), None) => yr.iter_mut().zip(w.iter()).for_each(|(o, &w)| *o = *o * rstd * w),
                (None, Some(b)) => yr.iter_mut().zip(b.iter()).for_each(|(o, &b)| *o = *o * rstd + b),
                (None, None) => yr.iter_mut().for_each(|o| *o = *o * rstd),
            }
            *st = (mean, rstd);
        };
        if x.len() >= PAR_ELEMS {
            y.par_chunks_mut(cols).zip(x.par_chunks(cols)).zip(stats.par_iter_mut()).with_min_len(rows_per_task(cols)).for_each(work);
        } else {
            y.chunks_mut(cols).zip(x.chunks(cols)).zip(stats.iter_mut()).for_each(work);
        }
        let dt = a.x.0.dtype();
        let cd = T::DTYPE;
        Ok(NormOut {
            y: CpuStorage::new(float_into_data(y, dt)),
            mean: CpuStorage::new(float_into_data(stats.iter().map(|s| s.0).collect(), cd)),
            rstd: CpuStorage::new(float_into_data(stats.iter().map(|s| s.1).collect(), cd)),
        })
    }
    float_dispatch!(a.x.0.dtype(), "norm", go(a))
}

/// Backward of layer/RMS norm. `need` says which of (x, w, b) want gradients.
pub(crate) fn norm_bwd(
    a: NormArgs<'_>,
    mean: &CpuStorage,
    rstd: &CpuStorage,
    g: (&CpuStorage, &Layout),
    need: [bool; 3],
) -> Result<NormGrads> {
    fn go<T: Float>(
        a: NormArgs<'_>,
        mean: &CpuStorage,
        rstd: &CpuStorage,
        g: (&CpuStorage, &Layout),
        need: [bool; 3],
    ) -> Result<NormGrads> {
        let x = a.x.0.float_slice::<T>(a.x.1);
        let gy = g.0.float_slice::<T>(g.1);
        let cols = a.x.1.dims().last().copied().unwrap_or(1);
        let rows = x.len() / cols.max(1);
        let all = Layout::contiguous([rows]);
        let mean = mean.float_slice::<T>(&all);
        let rstd = rstd.float_slice::<T>(&all);
        let w = a.w.map(|(s, l)| s.float_slice::<T>(l));
        let inv_n = T::ONE / T::from_f64(cols as f64);
        let mut gx = vec![T::ZERO; if need[0] { x.len() } else { 0 }];
        if need[0] {
            let work = |(r, gxr): (usize, &mut [T])| {
                let (xr, gr) = (&x[r * cols..(r + 1) * cols], &gy[r * cols..(r + 1) * cols]);
                let (m, rs) = (mean[r], rstd[r]);
                // gŵ = g ⊙ w; gx = rstd (gŵ − mean(gŵ) − x̂ mean(gŵ ⊙ x̂)); RMS norm drops the mean(gŵ) term.
                let (mut s1, mut s2) = (T::ZERO, T::ZERO);
                for i in 0..cols {
                    let gh = gr[i] * w.as_ref().map_or(T::ONE, |w| w[i]);
                    s1 += gh;
                    s2 += gh * (xr[i] - m) * rs;
                }
                let (s1, s2) = (if a.rms { T::ZERO } else { s1 * inv_n }, s2 * inv_n);
                for i in 0..cols {
                    let gh = gr[i] * w.as_ref().map_or(T::ONE, |w| w[i]);
                    let xh = (xr[i] - m) * rs;
                    gxr[i] = rs * (gh - s1 - xh * s2);
                }
            };
            if x.len() >= PAR_ELEMS {
                gx.par_chunks_mut(cols).enumerate().with_min_len(rows_per_task(cols)).for_each(work);
            } else {
                gx.chunks_mut(cols).enumerate().for_each(work);
            }
        }
        let col_sum = |f: &dyn Fn(usize, usize) -> T| -> Vec<T> {
            let mut acc = vec![T::ZERO; cols];
            for r in 0..rows {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += f(r, c);
                }
            }
            acc
        };
        let gw = (need[1] && a.w.is_some())
            .then(|| col_sum(&|r, c| gy[r * cols + c] * (x[r * cols + c] - mean[r]) * rstd[r]));
        // Forward checked that weight and bias share x's dtype; `need[2]` is only set when there is a bias.
        let gb = need[2].then(|| col_sum(&|r, c| gy[r * cols + c]));
        let mk = |v: Vec<T>, dt| CpuStorage::new(float_into_data(v, dt));
        Ok(NormGrads {
            gx: mk(gx, a.x.0.dtype()),
            gw: gw.map(|v| mk(v, a.x.0.dtype())),
            gb: gb.map(|v| mk(v, a.x.0.dtype())),
        })
    }
    float_dispatch!(a.x.0.dtype(), "norm_bwd", go(a, mean, rstd, g, need))
}

/// Cross-entropy settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CeArgs {
    pub(crate) ignore_index: Option<i64>,
    pub(crate) label_smoothing: f64,
}

/// Mean cross-entropy over the rows whose target is not ignored; also returns log-sum-exp per row and the
/// number of counted rows, for the backward pass.
pub(crate) fn cross_entropy_fwd(
    logits: (&CpuStorage, &Layout),
    targets: &[i64],
    args: CeArgs,
) -> Result<(f64, CpuStorage, usize)> {
    fn go<T: Float>(logits: (&CpuStorage, &Layout), t: &[i64], args: CeArgs) -> Result<(f64, CpuStorage, usize)> {
        let x = logits.0.float_slice::<T>(logits.1);
        let c = logits.1.dims()[1];
        let eps = args.label_smoothing;
        if let Some(&bad) = t.iter().find(|&&v| Some(v) != args.ignore_index && (v < 0 || v as usize >= c)) {
            return Err(Error::IndexOutOfRange { op: "cross_entropy", index: bad, size: c });
        }
        // Per row: (log-sum-exp, loss contribution, counted).
        let row = |r: usize| -> (T, f64, usize) {
            let row = &x[r * c..(r + 1) * c];
            let max = vm::max(row);
            let max = if max == T::NEG_INFINITY { T::ZERO } else { max };
            let s: T = vm::sum_exp(row, max);
            let lse = max + s.ln();
            if Some(t[r]) == args.ignore_index {
                return (lse, 0.0, 0);
            }
            let nll = (lse - row[t[r] as usize]).to_f64();
            let smooth = if eps > 0.0 { lse.to_f64() - vm::sum(row).to_f64() / c as f64 } else { 0.0 };
            (lse, (1.0 - eps) * nll + eps * smooth, 1)
        };
        let rows: Vec<(T, f64, usize)> = if x.len() >= PAR_ELEMS {
            (0..t.len()).into_par_iter().with_min_len(rows_per_task(c)).map(row).collect()
        } else {
            (0..t.len()).map(row).collect()
        };
        let lse: Vec<T> = rows.iter().map(|r| r.0).collect();
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let count: usize = rows.iter().map(|r| r.2).sum();
        let loss = if count == 0 { 0.0 } else { total / count as f64 };
        Ok((loss, CpuStorage::new(float_into_data(lse, T::DTYPE)), count))
    }
    float_dispatch!(logits.0.dtype(), "cross_entropy", go(logits, targets, args))
}

/// Gradient of the mean cross-entropy with respect to the logits, times the upstream scalar `g`.
pub(crate) fn cross_entropy_bwd(
    logits: (&CpuStorage, &Layout),
    lse: &CpuStorage,
    targets: &[i64],
    args: CeArgs,
    count: usize,
    g: f64,
) -> Result<CpuStorage> {
    fn go<T: Float>(
        logits: (&CpuStorage, &Layout),
        lse: &CpuStorage,
        t: &[i64],
        args: CeArgs,
        count: usize,
        g: f64,
    ) -> Result<CpuStorage> {
        let x = logits.0.float_slice::<T>(logits.1);
        let c = logits.1.dims()[1];
        let lse = lse.float_slice::<T>(&Layout::contiguous([t.len()]));
        let mut out = vec![T::ZERO; x.len()];
        let scale = if count == 0 { 0.0 } else { g / count as f64 };
        let eps = args.label_smoothing;
        let (s, on, off) = (T::from_f64(scale), T::from_f64(1.0 - eps + eps / c as f64), T::from_f64(eps / c as f64));
        let work = |(r, o): (usize, &mut [T])| {
            if Some(t[r]) == args.ignore_index {
                return;
            }
            let row = &x[r * c..(r + 1) * c];
            let l = lse[r];
            // Every class as a non-target first (a branch-free loop that vectorizes), then the target's one value.
            o.iter_mut().zip(row).for_each(|(o, &v)| *o = (vm::exp(v - l) - off) * s);
            let j = t[r] as usize;
            o[j] = (vm::exp(row[j] - l) - on) * s;
        };
        if x.len() >= PAR_ELEMS {
            out.par_chunks_mut(c).enumerate().with_min_len(rows_per_task(c)).for_each(work);
        } else {
            out.chunks_mut(c).enumerate().for_each(work);
        }
        Ok(CpuStorage::new(float_into_data(out, logits.0.dtype())))
    }
    float_dispatch!(logits.0.dtype(), "cross_entropy_bwd", go(logits, lse, targets, args, count, g))
}

fn reduce_row<T: Float>(row: &[T], op: ReduceOp) -> (f64, u32) {
    match op {
        ReduceOp::Sum => (row.iter().map(|v| v.to_f64()).sum(), 0),
        ReduceOp::Max | ReduceOp::ArgMax | ReduceOp::Min | ReduceOp::ArgMin => {
            let max = matches!(op, ReduceOp::Max | ReduceOp::ArgMax);
            let mut best = 0usize;
            for (i, &v) in row.iter().enumerate().skip(1) {
                let b = row[best];
                let better = if max { v > b } else { v < b };
                if (better || v.is_nan()) && !b.is_nan() {
                    best = i;
                }
            }
            (row.get(best).map_or(f64::NAN, |v| v.to_f64()), best as u32)
        }
    }
}

fn for_rows<T: Float>(data: &mut [T], cols: usize, f: impl Fn(&mut [T]) + Sync + Send) {
    if cols == 0 {
        return;
    }
    if data.len() >= PAR_ELEMS {
        data.par_chunks_mut(cols).with_min_len(rows_per_task(cols)).for_each(f);
    } else {
        data.chunks_mut(cols).for_each(f);
    }
}

fn for_rows_with<T: Float>(data: &mut [T], other: &[T], cols: usize, f: impl Fn(&mut [T], &[T]) + Sync + Send) {
    if cols == 0 {
        return;
    }
    if data.len() >= PAR_ELEMS {
        data.par_chunks_mut(cols).zip(other.par_chunks(cols)).with_min_len(rows_per_task(cols)).for_each(|(a, b)| f(a, b));
    } else {
        data.chunks_mut(cols).zip(other.chunks(cols)).for_each(|(a, b)| f(a, b));
    }
}
