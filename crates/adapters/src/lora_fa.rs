//! LoRA-FA's optional closed-form gradient correction (PEFT's `LoraFAOptimizer`): with A frozen, the update
//! of B that best follows full fine-tuning's gradient is `g_B ← (1/s²) · g_B · pinv(A Aᵀ + 1e-8 I)`. LoRA-FA
//! itself (A frozen, only B trained, only `A x` kept) is the `lora_fa` flag of [`crate::lora::LoraConfig`];
//! this is the extra step an optimizer may apply to B's gradient before its update.

use rankfold_tensor::nn::LinearModel;
use rankfold_tensor::{no_grad, DType, GradStore, Tensor};

use crate::lora::LoraLayer;
use crate::{PeftModel, Result};

/// The ridge PEFT adds to A Aᵀ before the pseudo-inverse.
pub const RIDGE: f64 = 1e-8;

/// The Moore–Penrose pseudo-inverse of a symmetric positive semi-definite `[r, r]` matrix through its SVD
/// (singular values below `r · ε · σ_max` count as zero, as `torch.linalg.pinv` does).
fn pinv_psd(m: &Tensor) -> Result<Tensor> {
    let svd = m.to_dtype(DType::F64)?.svd()?;
    let s = svd.s.to_vec::<f64>()?;
    let smax = s.first().copied().unwrap_or(0.0);
    let tol = s.len() as f64 * f64::EPSILON * smax;
    let inv: Vec<f64> = s
        .iter()
        .map(|&v| if v > tol { 1.0 / v } else { 0.0 })
        .collect();
    let inv = Tensor::from_vec(inv, s.len(), m.device())?;
    // pinv = V diag(1/σ) Uᵀ = (Vᵀ)ᵀ · (diag(1/σ) Uᵀ).
    let p = svd.vt.t()?.matmul(&svd.u.t()?.mul(&inv.unsqueeze(1)?)?)?;
    Ok(p)
}

/// B's corrected gradient for one LoRA-FA adapter: `(1/s²) · g_B · pinv(A Aᵀ + 1e-8 I)`, in g_B's dtype.
pub fn corrected_grad_b(g_b: &Tensor, a: &Tensor, scaling: f64) -> Result<Tensor> {
    no_grad(|| {
        let a64 = a.to_dtype(DType::F64)?;
        let r = a64.dims()[0];
        let eye = Tensor::from_vec(
            (0..r * r)
                .map(|i| if i % (r + 1) == 0 { RIDGE } else { 0.0 })
                .collect::<Vec<f64>>(),
            (r, r),
            a.device(),
        )?;
        let aat = a64.matmul(&a64.t()?)?.add(&eye)?;
        let g = g_b
            .to_dtype(DType::F64)?
            .matmul(&pinv_psd(&aat)?)?
            .mul_scalar(1.0 / (scaling * scaling))?;
        Ok(g.to_dtype(g_b.dtype())?)
    })
}

/// Replaces, in `grads`, the gradient of B of every active LoRA-FA adapter of the model by its corrected form;
/// returns how many were corrected. Call between `backward` and the optimizer step.
pub fn correct_lora_fa_grads<M: LinearModel>(
    pm: &mut PeftModel<M>,
    grads: &mut GradStore,
) -> Result<usize> {
    let mut n = 0;
    for (_, slot) in pm.model_mut().linear_slots() {
        let Some(l) = slot.downcast_ref::<LoraLayer>() else {
            continue;
        };
        let Some(name) = crate::layer::AdapterLayer::active(l) else {
            continue;
        };
        if !l.is_lora_fa(&name)? {
            continue;
        }
        let (a, b) = l.lora_tensors(&name)?;
        let Some(g) = grads.remove(&b) else { continue };
        grads.insert(&b, corrected_grad_b(&g, &a, l.scaling(&name)?)?);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankfold_tensor::{Device, Rng};

    #[test]
    fn corrected_gradient_solves_the_normal_equations() {
        let mut rng = Rng::new(1);
        let (r, inf, out, s) = (3, 11, 7, 2.5);
        let a = rng
            .normal_tensor(0.0, 1.0, (r, inf), DType::F64, Device::Cpu)
            .unwrap();
        let g = rng
            .normal_tensor(0.0, 1.0, (out, r), DType::F64, Device::Cpu)
            .unwrap();
        let c = corrected_grad_b(&g, &a, s).unwrap();
        // With A of full row rank, c · (A Aᵀ + εI) = g / s².
        let aat = a.matmul(&a.t().unwrap()).unwrap().to_vec::<f64>().unwrap();
        let (cv, gv) = (c.to_vec::<f64>().unwrap(), g.to_vec::<f64>().unwrap());
        for i in 0..out {
            for j in 0..r {
                let lhs: f64 = (0..r)
                    .map(|k| cv[i * r + k] * (aat[k * r + j] + if k == j { RIDGE } else { 0.0 }))
                    .sum();
                let want = gv[i * r + j] / (s * s);
                assert!(
                    (lhs - want).abs() < 1e-9 * (1.0 + want.abs()),
                    "({i},{j}): {lhs} vs {want}"
                );
            }
        }
        // A rank-deficient A (two equal rows) still gives a finite answer.
        let row = rng
            .normal_tensor(0.0, 1.0, (1, inf), DType::F64, Device::Cpu)
            .unwrap();
        let a2 = Tensor::cat(&[&row, &row], 0).unwrap();
        let g2 = rng
            .normal_tensor(0.0, 1.0, (out, 2), DType::F64, Device::Cpu)
            .unwrap();
        assert!(corrected_grad_b(&g2, &a2, 1.0)
            .unwrap()
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
    }
}
