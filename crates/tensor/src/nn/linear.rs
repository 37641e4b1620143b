//! `Linear`: y = x·Wᵀ + b over the last dimension of x, with PyTorch's default initialization.

use super::{check_float, init, with_trainable};
use crate::{DType, Device, Error, Result, Rng, Tensor};

/// A fully connected layer: weight [out, in], optional bias `[out]`; `forward` maps [.., in] to [.., out].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A trainable layer with PyTorch's `nn.Linear` init: weight Kaiming uniform with a = √5, i.e.
    /// U(±1/√in), then (when `bias`) bias U(±1/√in), drawn from `rng` in that order.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng, dtype: DType, device: Device) -> Result<Self> {
        if in_features == 0 {
            return Err(Error::invalid("Linear::new", "in_features must be positive"));
        }
        let w = init::kaiming_uniform((out_features, in_features), init::SQRT_5, rng, dtype, device)?;
        let bound = 1.0 / (in_features as f64).sqrt();
        let b = if bias { Some(init::uniform(out_features, -bound, bound, rng, dtype, device)?) } else { None };
        Ok(Linear { weight: w.with_requires_grad(true), bias: b.map(|b| b.with_requires_grad(true)) })
    }

    /// A layer over existing tensors, kept as given (a frozen tensor stays frozen, a trainable leaf keeps its
    /// id): `weight` [out, in] and optional `bias` `[out]` of the same float dtype and device.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        check_float("Linear::from_weights", "weight", &weight)?;
        let (out, _) = weight.dims2("Linear::from_weights")?;
        if let Some(b) = &bias {
            if b.dims() != [out] {
                return Err(Error::ShapeMismatch { op: "Linear::from_weights", lhs: weight.shape().clone(), rhs: b.shape().clone() });
            }
            if b.dtype() != weight.dtype() {
                return Err(Error::DTypeMismatch { op: "Linear::from_weights", lhs: weight.dtype(), rhs: b.dtype() });
            }
            if b.device() != weight.device() {
                return Err(Error::DeviceMismatch { op: "Linear::from_weights", lhs: weight.device(), rhs: b.device() });
            }
        }
        Ok(Linear { weight, bias })
    }

    /// x [.., in] → x·Wᵀ + b [.., out]. The leading dims are flattened into rows for one matmul against the
    /// transposed view of W (no copy of W), then restored.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, inf) = (self.out_features(), self.in_features());
        let Some((&last, lead)) = x.dims().split_last() else {
            return Err(Error::InvalidShape { op: "linear", shape: x.shape().clone(), msg: "the input is a scalar".into() });
        };
        if last != inf {
            return Err(Error::ShapeMismatch { op: "linear", lhs: x.shape().clone(), rhs: self.weight.shape().clone() });
        }
        if x.dtype() != self.weight.dtype() {
            return Err(Error::DTypeMismatch { op: "linear", lhs: x.dtype(), rhs: self.weight.dtype() });
        }
        let rows: usize = lead.iter().product();
        let mut y = x.reshape((rows, inf))?.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.add(b)?;
        }
        let mut dims = lead.to_vec();
        dims.push(out);
        y.reshape(dims)
    }

    /// The weight [out, in].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The layer with frozen parameters (no gradient is computed for them).
    pub fn freeze(mut self) -> Self {
        self.set_trainable(false);
        self
    }
    /// Makes the parameters trainable leaves (`on`) or frozen (`!on`). The handles change (new ids over the
    /// same storage) unless they are already in that state.
    pub fn set_trainable(&mut self, on: bool) {
        self.weight = with_trainable(&self.weight, on);
        self.bias = self.bias.as_ref().map(|b| with_trainable(b, on));
    }
    /// Whether the weight receives gradients.
    pub fn is_trainable(&self) -> bool {
        self.weight.requires_grad()
    }

    /// The parameters by name: `weight`, then `bias` when present.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], rows: usize, w: &[f32], b: Option<&[f32]>, out: usize, inf: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let mut acc = b.map_or(0.0, |b| b[o] as f64);
                for i in 0..inf {
                    acc += x[r * inf + i] as f64 * w[o * inf + i] as f64;
                }
                y[r * out + o] = acc;
            }
        }
        y
    }

    #[test]
    fn forward_matches_a_naive_loop() {
        let mut rng = Rng::new(1);
        let (inf, out) = (7, 5);
        for bias in [true, false] {
            let lin = Linear::new(inf, out, bias, &mut rng, DType::F32, Device::Cpu).unwrap();
            let x = rng.normal_tensor(0.0, 1.0, (2, 3, inf), DType::F32, Device::Cpu).unwrap();
            let y = lin.forward(&x).unwrap();
            assert_eq!(y.dims(), [2, 3, out]);
            let (xv, wv) = (x.to_vec_f32().unwrap(), lin.weight().to_vec_f32().unwrap());
            let bv = lin.bias().map(|b| b.to_vec_f32().unwrap());
            let want = naive(&xv, 6, &wv, bv.as_deref(), out, inf);
            for (g, w) in y.to_vec_f32().unwrap().iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
            }
        }
        // A 1-D input maps to a 1-D output.
        let lin = Linear::new(3, 2, true, &mut rng, DType::F32, Device::Cpu).unwrap();
        assert_eq!(lin.forward(&Tensor::ones(3, DType::F32, Device::Cpu).unwrap()).unwrap().dims(), [2]);
    }

    #[test]
    fn default_init_bounds() {
        let lin = Linear::new(16, 8, true, &mut Rng::new(2), DType::F32, Device::Cpu).unwrap();
        // Both weight and bias are U(±1/√16) = U(±0.25).
        for (_, p) in lin.parameters() {
            assert!(p.requires_grad());
            assert!(p.to_vec_f32().unwrap().iter().all(|v| v.abs() <= 0.25));
        }
        let again = Linear::new(16, 8, true, &mut Rng::new(2), DType::F32, Device::Cpu).unwrap();
        assert_eq!(again.bias().unwrap().to_vec_f32().unwrap(), lin.bias().unwrap().to_vec_f32().unwrap());
    }

    #[test]
    fn frozen_weight_gets_no_gradient_but_the_input_does() {
        let w = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), Device::Cpu).unwrap().with_requires_grad(true);
        let b = Tensor::from_vec(vec![0.5f32, -0.5], 2, Device::Cpu).unwrap().with_requires_grad(true);
        let mut lin = Linear::from_weights(w, Some(b)).unwrap().freeze();
        assert!(!lin.is_trainable() && !lin.weight().tracks_grad());
        let x = Tensor::from_vec(vec![1f32, 0., -1., 2., 1., 0.], (2, 3), Device::Cpu).unwrap().with_requires_grad(true);
        let grads = lin.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(lin.weight()).is_none());
        assert!(grads.get(lin.bias().unwrap()).is_none());
        // d sum(x·Wᵀ + b) / dx[r, i] = Σ_o W[o, i] = [5, 7, 9] for every row.
        assert_eq!(grads.get(&x).unwrap().to_vec_f32().unwrap(), vec![5., 7., 9., 5., 7., 9.]);

        // Trainable again: dW[o, i] = Σ_r x[r, i] = [3, 1, −1] per row; db[o] = rows = 2.
        lin.set_trainable(true);
        let x = x.detach();
        let grads = lin.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(lin.weight()).unwrap().to_vec_f32().unwrap(), vec![3., 1., -1., 3., 1., -1.]);
        assert_eq!(grads.get(lin.bias().unwrap()).unwrap().to_vec_f32().unwrap(), vec![2., 2.]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = Tensor::zeros((2, 3), DType::F32, Device::Cpu).unwrap();
        assert!(Linear::from_weights(w.clone(), Some(Tensor::zeros(3, DType::F32, Device::Cpu).unwrap())).is_err());
        assert!(Linear::from_weights(Tensor::zeros(3, DType::F32, Device::Cpu).unwrap(), None).is_err());
        let lin = Linear::from_weights(w, None).unwrap();
        assert!(matches!(lin.forward(&Tensor::zeros((4, 2), DType::F32, Device::Cpu).unwrap()), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(lin.forward(&Tensor::zeros((4, 3), DType::F64, Device::Cpu).unwrap()), Err(Error::DTypeMismatch { .. })));
        assert!(Linear::new(0, 2, true, &mut Rng::new(0), DType::F32, Device::Cpu).is_err());
    }
}
