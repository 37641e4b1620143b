//! `Embedding`: a [vocab, d] lookup table from integer ids to vectors, initialized N(0, 1) like PyTorch.

use super::{check_float, init, with_trainable};
use crate::{DType, Device, Result, Rng, Tensor};

/// A lookup table: weight [vocab, d]; `forward(ids [..])` returns [.., d].
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// A trainable table with PyTorch's `nn.Embedding` init, N(0, 1).
    pub fn new(vocab: usize, dim: usize, rng: &mut Rng, dtype: DType, device: Device) -> Result<Self> {
        let w = init::normal((vocab, dim), 0.0, 1.0, rng, dtype, device)?;
        Ok(Embedding { weight: w.with_requires_grad(true) })
    }

    /// A table over an existing [vocab, d] float tensor, kept as given (frozen or trainable).
    pub fn from_weights(weight: Tensor) -> Result<Self> {
        check_float("Embedding::from_weights", "weight", &weight)?;
        weight.dims2("Embedding::from_weights")?;
        Ok(Embedding { weight })
    }

    /// The rows of the table for integer `ids` of any shape: [ids.., d]. An id outside [0, vocab) is an error.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.embedding(ids)
    }

    /// The table [vocab, d].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn vocab_size(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn embedding_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// The layer with a frozen table.
    pub fn freeze(mut self) -> Self {
        self.set_trainable(false);
        self
    }
    /// Makes the table a trainable leaf (`on`) or frozen (`!on`); see [`super::Linear::set_trainable`].
    pub fn set_trainable(&mut self, on: bool) {
        self.weight = with_trainable(&self.weight, on);
    }
    pub fn is_trainable(&self) -> bool {
        self.weight.requires_grad()
    }

    /// The parameters by name: `weight`.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_gradient_scatter() {
        let w = Tensor::from_vec((0..8).map(|v| v as f32).collect(), (4, 2), Device::Cpu).unwrap();
        let emb = Embedding::from_weights(w.with_requires_grad(true)).unwrap();
        let ids = Tensor::from_vec(vec![3u32, 0, 3], (1, 3), Device::Cpu).unwrap();
        let y = emb.forward(&ids).unwrap();
        assert_eq!(y.dims(), [1, 3, 2]);
        assert_eq!(y.to_vec_f32().unwrap(), vec![6., 7., 0., 1., 6., 7.]);
        // Each row's gradient counts how often its id was looked up: row 3 twice, row 0 once.
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(emb.weight()).unwrap().to_vec_f32().unwrap(), vec![1., 1., 0., 0., 0., 0., 2., 2.]);
        assert!(emb.forward(&Tensor::from_vec(vec![4u32], 1, Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn init_is_standard_normal_from_the_seed() {
        let emb = Embedding::new(3, 4, &mut Rng::new(5), DType::F64, Device::Cpu).unwrap();
        let mut r = Rng::new(5);
        let want: Vec<f64> = (0..12).map(|_| r.normal()).collect();
        assert_eq!(emb.weight().to_vec::<f64>().unwrap(), want);
        assert!(emb.is_trainable() && !emb.freeze().is_trainable());
    }
}
