//! The linear-layer extension point: [`LinearLayer`] (what any linear layer offers), [`LinearSlot`] (what a
//! model holds for each linear layer, so an adapter can replace it in place), [`LinearModel`] (a model that
//! lists its slots by module path) and [`Nf4Linear`] (a frozen linear layer over an NF4 weight, QLoRA's base).
//!
//! Models never know about adapters: an adapter crate walks `linear_slots()`, picks slots by module path, and
//! swaps each picked layer for a wrapper that owns the old one as its base.

use std::any::Any;
use std::sync::Arc;

use super::Linear;
use crate::{DType, Error, Nf4Tensor, Result, Tensor};

/// A linear map `y = x·Wᵀ (+ b)` over the last dimension of `x`, whatever holds `W` (a dense tensor, NF4
/// codes, or a base layer plus adapters).
pub trait LinearLayer: std::fmt::Debug + Send + Sync + Any {
    /// `x [.., in]` → `y [.., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// Every parameter (trainable or frozen) by a name relative to the layer: `weight`, `bias`,
    /// `lora_A.default.weight`, …
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// The base weight W0 `[out, in]` as a dense tensor: the stored tensor for a dense layer, a fresh
    /// dequantized tensor (not kept) for an NF4 layer.
    fn dense_weight(&self) -> Result<Tensor>;
    /// The bias `[out]`, if any.
    fn bias(&self) -> Option<Tensor>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// What a model holds for each linear layer: a boxed [`LinearLayer`] that an adapter may replace.
#[derive(Debug)]
pub struct LinearSlot {
    layer: Box<dyn LinearLayer>,
}

impl LinearSlot {
    pub fn new(layer: impl LinearLayer) -> Self {
        LinearSlot {
            layer: Box::new(layer),
        }
    }
    /// A slot over an already boxed layer.
    pub fn from_boxed(layer: Box<dyn LinearLayer>) -> Self {
        LinearSlot { layer }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.layer.forward(x)
    }
    pub fn layer(&self) -> &dyn LinearLayer {
        self.layer.as_ref()
    }
    pub fn layer_mut(&mut self) -> &mut dyn LinearLayer {
        self.layer.as_mut()
    }
    /// The layer as a `T`, when it is one.
    pub fn downcast_ref<T: LinearLayer>(&self) -> Option<&T> {
        self.layer.as_any().downcast_ref::<T>()
    }
    /// The layer as a mutable `T`, when it is one.
    pub fn downcast_mut<T: LinearLayer>(&mut self) -> Option<&mut T> {
        self.layer.as_any_mut().downcast_mut::<T>()
    }
    /// Replaces the layer by `f(old)`. When `f` fails it hands the old layer back, which is put back, so nothing
    /// is lost; the error is returned.
    pub fn replace_with<E>(
        &mut self,
        f: impl FnOnce(
            Box<dyn LinearLayer>,
        ) -> std::result::Result<Box<dyn LinearLayer>, (Box<dyn LinearLayer>, E)>,
    ) -> std::result::Result<(), E> {
        // A zero-sized placeholder holds the slot while `f` owns the old layer.
        let old = std::mem::replace(&mut self.layer, Box::new(Placeholder));
        match f(old) {
            Ok(new) => {
                self.layer = new;
                Ok(())
            }
            Err((old, e)) => {
                self.layer = old;
                Err(e)
            }
        }
    }
    pub fn into_inner(self) -> Box<dyn LinearLayer> {
        self.layer
    }
}

/// The stand-in a [`LinearSlot`] holds for the instant its layer is handed to `replace_with`'s closure.
#[derive(Debug)]
struct Placeholder;

impl LinearLayer for Placeholder {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::invalid("LinearSlot", "the slot is being replaced"))
    }
    fn in_features(&self) -> usize {
        0
    }
    fn out_features(&self) -> usize {
        0
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn dense_weight(&self) -> Result<Tensor> {
        Err(Error::invalid("LinearSlot", "the slot is being replaced"))
    }
    fn bias(&self) -> Option<Tensor> {
        None
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A model whose linear layers adapters can find and replace by module path.
pub trait LinearModel {
    /// Every linear slot with its full module path, e.g. `model.layers.0.self_attn.q_proj`.
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)>;
}

impl LinearLayer for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
    fn in_features(&self) -> usize {
        Linear::in_features(self)
    }
    fn out_features(&self) -> usize {
        Linear::out_features(self)
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        Linear::parameters(self)
    }
    fn dense_weight(&self) -> Result<Tensor> {
        Ok(self.weight().clone())
    }
    fn bias(&self) -> Option<Tensor> {
        Linear::bias(self).cloned()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A frozen linear layer over an NF4 weight (QLoRA's base): `forward` runs [`Tensor::nf4_linear`], which
/// dequantizes tile by tile, so no full-precision copy of the weight lives across a step. The bias, if any, is
/// a frozen dense tensor.
#[derive(Debug, Clone)]
pub struct Nf4Linear {
    weight: Arc<Nf4Tensor>,
    bias: Option<Tensor>,
}

impl Nf4Linear {
    /// A layer over an NF4 weight `[out, in]` and an optional bias `[out]` (detached: it stays frozen).
    pub fn new(weight: Arc<Nf4Tensor>, bias: Option<Tensor>) -> Result<Self> {
        let [out, _] = weight.shape().dims() else {
            return Err(Error::InvalidShape {
                op: "Nf4Linear::new",
                shape: weight.shape().clone(),
                msg: "the weight must be 2-D".into(),
            });
        };
        if let Some(b) = &bias {
            if b.dims() != [*out] {
                return Err(Error::ShapeMismatch {
                    op: "Nf4Linear::new",
                    lhs: weight.shape().clone(),
                    rhs: b.shape().clone(),
                });
            }
        }
        Ok(Nf4Linear {
            weight,
            bias: bias.map(|b| b.detach()),
        })
    }
    /// Quantizes a dense layer's weight to NF4 in blocks of `blocksize` (double-quantized scales when
    /// `double_quant`); the bias is kept dense and frozen.
    pub fn quantize(lin: &Linear, blocksize: usize, double_quant: bool) -> Result<Self> {
        let w = Nf4Tensor::quantize(&lin.weight().detach(), blocksize, double_quant)?;
        Nf4Linear::new(Arc::new(w), lin.bias().cloned())
    }
    pub fn weight(&self) -> &Arc<Nf4Tensor> {
        &self.weight
    }
    /// The dtype the NF4 weight stands for (the dtype of dequantized weights and of the bias).
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }
}

impl LinearLayer for Nf4Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.nf4_linear(&self.weight)?;
        match &self.bias {
            Some(b) => y.add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
    fn in_features(&self) -> usize {
        self.weight.shape().dims()[1]
    }
    fn out_features(&self) -> usize {
        self.weight.shape().dims()[0]
    }
    /// Only the bias: the NF4 codes are not a tensor parameter (see [`Nf4Linear::weight`]).
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.bias
            .iter()
            .map(|b| ("bias".to_string(), b.clone()))
            .collect()
    }
    fn dense_weight(&self) -> Result<Tensor> {
        self.weight.dequantize(self.weight.dtype())
    }
    fn bias(&self) -> Option<Tensor> {
        self.bias.clone()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Rng};

    #[derive(Debug)]
    struct Two {
        a: LinearSlot,
        b: LinearSlot,
    }
    impl LinearModel for Two {
        fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
            vec![("a".into(), &mut self.a), ("b".into(), &mut self.b)]
        }
    }

    #[test]
    fn slots_forward_downcast_and_replace() {
        let mut rng = Rng::new(3);
        let lin = Linear::new(5, 3, true, &mut rng, DType::F32, Device::Cpu).unwrap();
        let mut m = Two {
            a: LinearSlot::new(lin.clone()),
            b: LinearSlot::new(lin.clone().freeze()),
        };
        let x = rng
            .normal_tensor(0.0, 1.0, (2, 5), DType::F32, Device::Cpu)
            .unwrap();
        assert_eq!(
            m.a.forward(&x).unwrap().to_vec_f32().unwrap(),
            lin.forward(&x).unwrap().to_vec_f32().unwrap()
        );
        assert!(
            m.a.downcast_ref::<Linear>().is_some() && m.a.downcast_ref::<Nf4Linear>().is_none()
        );
        // A failing replacement puts the old layer back.
        let r: std::result::Result<(), &str> = m.b.replace_with(|old| Err((old, "no")));
        assert_eq!(r, Err("no"));
        assert!(m.b.downcast_ref::<Linear>().is_some());
        // A succeeding one installs the new layer.
        m.b.replace_with::<()>(|old| {
            let l = old.as_any().downcast_ref::<Linear>().unwrap();
            Ok(Box::new(Nf4Linear::quantize(l, 64, true).unwrap()))
        })
        .unwrap();
        assert!(m.b.downcast_ref::<Nf4Linear>().is_some());
        assert_eq!(m.linear_slots().len(), 2);
    }

    #[test]
    fn nf4_linear_matches_the_dequantized_dense_layer() {
        let mut rng = Rng::new(4);
        let lin = Linear::new(37, 23, true, &mut rng, DType::F32, Device::Cpu).unwrap();
        let q = Nf4Linear::quantize(&lin, 64, true).unwrap();
        let dense = Linear::from_weights(q.dense_weight().unwrap(), q.bias()).unwrap();
        let x = rng
            .normal_tensor(0.0, 1.0, (3, 2, 37), DType::F32, Device::Cpu)
            .unwrap();
        let (y, want) = (
            LinearLayer::forward(&q, &x).unwrap(),
            dense.forward(&x).unwrap(),
        );
        assert_eq!(y.dims(), [3, 2, 23]);
        for (a, b) in y
            .to_vec_f32()
            .unwrap()
            .iter()
            .zip(want.to_vec_f32().unwrap())
        {
            assert!((a - b).abs() <= 1e-5 + 1e-5 * b.abs(), "{a} vs {b}");
        }
        assert!(q.parameters().iter().all(|(_, t)| !t.requires_grad()));
    }
}
