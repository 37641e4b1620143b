//! Gradient clipping by global L2 norm, as PyTorch's `torch.nn.utils.clip_grad_norm_`.
//!
//! Math: N = √(Σ_params Σ_i g_i²) over every listed parameter that has a gradient (accumulated in f64);
//! when c = max_norm/(N + 1e-6) < 1, every such gradient is replaced by c·g. Returns N (before clipping).

use std::collections::HashSet;

use rayon::prelude::*;

use super::CHUNK;
use crate::{no_grad, Error, GradStore, Result, Tensor};

/// Σ g² of one gradient in f64, on rayon's pool for large tensors.
fn sum_sq(g: &Tensor) -> f64 {
    let st = g.storage();
    let v = st.cpu().float_slice::<f32>(g.layout());
    let sq = |c: &[f32]| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    if v.len() <= CHUNK {
        sq(&v)
    } else {
        v.par_chunks(CHUNK).map(sq).sum()
    }
}

/// The gradients of `params` that are present, each parameter counted once.
fn present<'a>(grads: &'a GradStore, params: &'a [(String, Tensor)]) -> impl Iterator<Item = (&'a Tensor, &'a Tensor)> {
    let mut seen = HashSet::new();
    params.iter().filter(move |(_, p)| seen.insert(p.id())).filter_map(|(_, p)| grads.get(p).map(|g| (p, g)))
}

/// The global L2 norm of the gradients of `params` (parameters without a gradient count as zero).
pub fn grad_norm(grads: &GradStore, params: &[(String, Tensor)]) -> Result<f64> {
    Ok(present(grads, params).map(|(_, g)| sum_sq(g)).sum::<f64>().sqrt())
}

/// Scales the gradients of `params` so that their global L2 norm is at most about `max_norm` (by
/// max_norm/(norm + 1e-6), only when that is below 1) and returns the norm before clipping. A non-finite
/// norm is returned as is (and scales the gradients to NaN or zero, as PyTorch does by default).
pub fn clip_grad_norm(grads: &mut GradStore, params: &[(String, Tensor)], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::invalid("clip_grad_norm", format!("max_norm = {max_norm} must be non-negative")));
    }
    let norm = grad_norm(grads, params)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 || coef.is_nan() {
        // Gradients may share storage (an op can hand one tensor to several inputs), so each is replaced by
        // a scaled copy rather than scaled in place.
        let scaled: Vec<(Tensor, Tensor)> =
            no_grad(|| present(grads, params).map(|(p, g)| Ok((p.clone(), g.affine(coef, 0.0)?))).collect::<Result<_>>())?;
        for (p, g) in scaled {
            grads.insert(&p, g);
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    fn setup() -> (Vec<(String, Tensor)>, GradStore) {
        let (a, b, c) = (Tensor::zeros(2, DType::F32, Device::Cpu).unwrap(), Tensor::zeros((1, 2), DType::F32, Device::Cpu).unwrap(), Tensor::zeros(1, DType::F32, Device::Cpu).unwrap());
        let mut gs = GradStore::new();
        gs.insert(&a, Tensor::from_vec(vec![3f32, 0.], 2, Device::Cpu).unwrap());
        gs.insert(&b, Tensor::from_vec(vec![0f32, 4.], (1, 2), Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap());
        let params = vec![("a".into(), a), ("b".into(), b), ("c (no gradient)".into(), c)];
        (params, gs)
    }

    #[test]
    fn norm_and_clipping_match_the_formula() {
        // N = √(3² + 4²) = 5.
        let (params, mut gs) = setup();
        assert_eq!(grad_norm(&gs, &params).unwrap(), 5.0);
        assert_eq!(clip_grad_norm(&mut gs, &params, 10.0).unwrap(), 5.0);
        assert_eq!(gs.get(&params[0].1).unwrap().to_vec_f32().unwrap(), vec![3.0, 0.0], "below max_norm: unchanged");
        let n = clip_grad_norm(&mut gs, &params, 1.0).unwrap();
        assert_eq!(n, 5.0);
        let c = 1.0 / (5.0 + 1e-6);
        let a = gs.get(&params[0].1).unwrap().to_vec_f32().unwrap();
        assert!((a[0] as f64 - 3.0 * c).abs() < 1e-7);
        let b = gs.get(&params[1].1).unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        assert!((b.to_vec_f32().unwrap()[1] as f64 - 4.0 * c).abs() < 4e-3);
        assert!((grad_norm(&gs, &params).unwrap() - 1.0).abs() < 2e-3);
        assert!(clip_grad_norm(&mut gs, &params, f64::NAN).is_err());
    }

    #[test]
    fn large_gradients_sum_over_chunks() {
        let n = 3 * CHUNK + 5;
        let p = Tensor::zeros(n, DType::F32, Device::Cpu).unwrap();
        let mut gs = GradStore::new();
        gs.insert(&p, Tensor::full(0.5, n, DType::F32, Device::Cpu).unwrap());
        // N = √(n·0.25) = 0.5·√n.
        let want = 0.5 * (n as f64).sqrt();
        assert!((grad_norm(&gs, &[("p".into(), p)]).unwrap() - want).abs() < 1e-9 * want);
    }
}
