//! `LayerNorm` and `RmsNorm` over the last dimension, owning their affine parameters and calling the fused
//! [`Tensor::layer_norm`] / [`Tensor::rms_norm`].
//!
//! LayerNorm: y = (x − mean(x)) / √(var(x) + eps) · weight + bias, with the biased variance (as PyTorch).
//! RmsNorm: y = x / √(mean(x²) + eps) · weight (as Llama's `LlamaRMSNorm`).

use super::{check_float, with_trainable};
use crate::{DType, Device, Error, Result, Tensor};

fn check_vector(op: &'static str, name: &str, t: &Tensor) -> Result<usize> {
    check_float(op, name, t)?;
    match t.dims() {
        &[d] => Ok(d),
        _ => Err(Error::Parameter { op, name: name.into(), msg: format!("expected a vector, got shape {}", t.shape()) }),
    }
}

fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(op, format!("eps {eps} must be finite and non-negative")));
    }
    Ok(())
}

/// Layer normalization with a weight (init ones) and an optional bias (init zeros), both `[d]`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// A trainable layer norm over `dim` features: weight ones, bias zeros (PyTorch's default; eps is
    /// usually 1e-5).
    pub fn new(dim: usize, eps: f64, dtype: DType, device: Device) -> Result<Self> {
        check_eps("LayerNorm::new", eps)?;
        let weight = Tensor::ones(dim, dtype, device)?.with_requires_grad(true);
        let bias = Tensor::zeros(dim, dtype, device)?.with_requires_grad(true);
        Ok(LayerNorm { weight, bias: Some(bias), eps })
    }

    /// A layer norm over existing `[d]` tensors, kept as given.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>, eps: f64) -> Result<Self> {
        check_eps("LayerNorm::from_weights", eps)?;
        let d = check_vector("LayerNorm::from_weights", "weight", &weight)?;
        if let Some(b) = &bias {
            if check_vector("LayerNorm::from_weights", "bias", b)? != d {
                return Err(Error::ShapeMismatch { op: "LayerNorm::from_weights", lhs: weight.shape().clone(), rhs: b.shape().clone() });
            }
            if b.dtype() != weight.dtype() {
                return Err(Error::DTypeMismatch { op: "LayerNorm::from_weights", lhs: weight.dtype(), rhs: b.dtype() });
            }
        }
        Ok(LayerNorm { weight, bias, eps })
    }

    /// Normalizes x [.., d] over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(Some(&self.weight), self.bias.as_ref(), self.eps)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The layer with frozen parameters.
    pub fn freeze(mut self) -> Self {
        self.set_trainable(false);
        self
    }
    /// Makes the parameters trainable leaves (`on`) or frozen (`!on`).
    pub fn set_trainable(&mut self, on: bool) {
        self.weight = with_trainable(&self.weight, on);
        self.bias = self.bias.as_ref().map(|b| with_trainable(b, on));
    }

    /// The parameters by name: `weight`, then `bias` when present.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}

/// RMS normalization with a weight `[d]` (init ones).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A trainable RMS norm over `dim` features with weight ones (Llama uses eps 1e-5 or 1e-6).
    pub fn new(dim: usize, eps: f64, dtype: DType, device: Device) -> Result<Self> {
        check_eps("RmsNorm::new", eps)?;
        Ok(RmsNorm { weight: Tensor::ones(dim, dtype, device)?.with_requires_grad(true), eps })
    }

    /// An RMS norm over an existing `[d]` weight, kept as given.
    pub fn from_weight(weight: Tensor, eps: f64) -> Result<Self> {
        check_eps("RmsNorm::from_weight", eps)?;
        check_vector("RmsNorm::from_weight", "weight", &weight)?;
        Ok(RmsNorm { weight, eps })
    }

    /// Normalizes x [.., d] over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(Some(&self.weight), self.eps)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The layer with a frozen weight.
    pub fn freeze(mut self) -> Self {
        self.set_trainable(false);
        self
    }
    /// Makes the weight a trainable leaf (`on`) or frozen (`!on`).
    pub fn set_trainable(&mut self, on: bool) {
        self.weight = with_trainable(&self.weight, on);
    }

    /// The parameters by name: `weight`.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &[f32], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
        }
    }

    #[test]
    fn layer_norm_matches_the_formula() {
        let x = [1f32, 2., 4., -1., 0., 7.];
        let (w, b) = ([0.5f32, 1.0, 2.0], [0.1f32, 0.0, -0.1]);
        let ln = LayerNorm::from_weights(
            Tensor::from_slice(&w, 3, Device::Cpu).unwrap(),
            Some(Tensor::from_slice(&b, 3, Device::Cpu).unwrap()),
            1e-5,
        )
        .unwrap();
        let y = ln.forward(&Tensor::from_slice(&x, (2, 3), Device::Cpu).unwrap()).unwrap();
        let mut want = vec![];
        for row in x.chunks(3) {
            let m = row.iter().map(|&v| v as f64).sum::<f64>() / 3.0;
            let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / 3.0;
            for i in 0..3 {
                want.push((row[i] as f64 - m) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64);
            }
        }
        close(&y.to_vec_f32().unwrap(), &want);
        // The defaults are weight ones and bias zeros.
        let d = LayerNorm::new(3, 1e-5, DType::F32, Device::Cpu).unwrap();
        assert_eq!(d.weight().to_vec_f32().unwrap(), vec![1.; 3]);
        assert_eq!(d.bias().unwrap().to_vec_f32().unwrap(), vec![0.; 3]);
        assert_eq!(d.parameters().len(), 2);
    }

    #[test]
    fn rms_norm_matches_the_formula() {
        let x = [3f32, 4., 0., 1.];
        let w = [2f32, 0.5];
        let n = RmsNorm::from_weight(Tensor::from_slice(&w, 2, Device::Cpu).unwrap(), 1e-6).unwrap();
        let y = n.forward(&Tensor::from_slice(&x, (2, 2), Device::Cpu).unwrap()).unwrap();
        let mut want = vec![];
        for row in x.chunks(2) {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 2.0;
            want.extend((0..2).map(|i| row[i] as f64 / (ms + 1e-6).sqrt() * w[i] as f64));
        }
        close(&y.to_vec_f32().unwrap(), &want);
        assert!(RmsNorm::from_weight(Tensor::zeros((2, 2), DType::F32, Device::Cpu).unwrap(), 1e-6).is_err());
        assert!(RmsNorm::new(2, -1.0, DType::F32, Device::Cpu).is_err());
    }
}
