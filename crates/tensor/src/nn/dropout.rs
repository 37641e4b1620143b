//! `Dropout`: inverted dropout that is active only while training.

use crate::{Error, Result, Rng, Tensor};

/// Zeroes each element with probability `p` while training and scales the kept ones by 1/(1−p), so that
/// evaluation (the identity) needs no rescaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Dropout with drop probability `p` in [0, 1).
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("Dropout::new", format!("probability {p} is outside [0, 1)")));
        }
        Ok(Dropout { p })
    }

    pub fn p(&self) -> f64 {
        self.p
    }

    /// `x` unchanged when `!train` (drawing nothing from `rng`), else [`Tensor::dropout`] with `rng`.
    pub fn forward(&self, x: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        x.dropout(self.p, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    #[test]
    fn train_masks_and_scales_eval_is_identity() {
        let x = Tensor::ones(10_000, DType::F32, Device::Cpu).unwrap();
        let d = Dropout::new(0.25).unwrap();
        let mut rng = Rng::new(1);
        let before = rng.clone();
        assert_eq!(d.forward(&x, false, &mut rng).unwrap().id(), x.id());
        assert_eq!(rng, before, "evaluation must not draw from the generator");
        let y = d.forward(&x, true, &mut rng).unwrap().to_vec_f32().unwrap();
        // Every element is 0 or 1/(1 − 0.25) = 4/3, and about a quarter are 0.
        assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropped fraction {dropped}");
        assert!(Dropout::new(1.0).is_err() && Dropout::new(-0.1).is_err());
    }
}
