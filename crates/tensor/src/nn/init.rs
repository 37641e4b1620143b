//! Parameter initializers drawn from the crate's one seeded generator ([`Rng`]), so the same seed gives the
//! same parameters on every machine and thread count. The formulas follow `torch.nn.init`:
//!
//! | initializer | distribution |
//! |---|---|
//! | [`kaiming_uniform`] | U(−b, b), b = gain·√(3/fan_in), gain = √(2/(1+a²)) (PyTorch's leaky-ReLU gain, mode `fan_in`) |
//! | [`xavier_uniform`] | U(−b, b), b = gain·√(6/(fan_in+fan_out)) |
//! | [`uniform`] | U(lo, hi) |
//! | [`normal`] | N(mean, std²) |
//! | [`zeros`], [`ones`] | constants |
//!
//! Fans follow `torch.nn.init._calculate_fan_in_and_fan_out`: for a weight of shape [out, in, k…],
//! fan_in = in·∏k and fan_out = out·∏k. With PyTorch's default for `nn.Linear`, a = √5, the Kaiming bound
//! reduces to b = √(2/6)·√(3/fan_in) = 1/√fan_in.

use crate::{DType, Device, Error, Result, Rng, Shape, Tensor};

/// √5, the `a` PyTorch passes to `kaiming_uniform_` for the weights of `nn.Linear` (and convolutions).
pub const SQRT_5: f64 = 2.236_067_977_499_79;

/// An initializer as a value, for configs that choose one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element equal to the value.
    Const(f64),
    /// U(lo, hi).
    Uniform { lo: f64, hi: f64 },
    /// N(mean, std²).
    Normal { mean: f64, std: f64 },
    /// U(−b, b) with b = √(2/(1+a²))·√(3/fan_in); see [`kaiming_uniform`].
    KaimingUniform { a: f64 },
    /// U(−b, b) with b = gain·√(6/(fan_in+fan_out)); see [`xavier_uniform`].
    XavierUniform { gain: f64 },
}

impl Init {
    /// PyTorch's default for the weight of `nn.Linear`: Kaiming uniform with a = √5, i.e. U(±1/√fan_in).
    pub const LINEAR_WEIGHT: Init = Init::KaimingUniform { a: SQRT_5 };

    /// A new tensor of `shape` initialized this way. Draws from `rng` only for the random variants.
    pub fn tensor(&self, shape: impl Into<Shape>, rng: &mut Rng, dtype: DType, device: Device) -> Result<Tensor> {
        match *self {
            Init::Zeros => zeros(shape, dtype, device),
            Init::Ones => ones(shape, dtype, device),
            Init::Const(v) => Tensor::full(v, shape, dtype, device),
            Init::Uniform { lo, hi } => uniform(shape, lo, hi, rng, dtype, device),
            Init::Normal { mean, std } => normal(shape, mean, std, rng, dtype, device),
            Init::KaimingUniform { a } => kaiming_uniform(shape, a, rng, dtype, device),
            Init::XavierUniform { gain } => xavier_uniform(shape, gain, rng, dtype, device),
        }
    }
}

/// `(fan_in, fan_out)` of a weight of shape [out, in, k…]: (in·∏k, out·∏k). Fails below rank 2, as PyTorch.
pub fn fans(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        return Err(Error::InvalidShape { op: "init::fans", shape: shape.clone(), msg: "fans need a weight of rank 2 or more".into() });
    }
    let receptive: usize = dims[2..].iter().product();
    Ok((dims[1] * receptive, dims[0] * receptive))
}

/// The bound b of [`kaiming_uniform`] for a given `a` and fan_in: √(2/(1+a²))·√(3/fan_in).
pub fn kaiming_bound(a: f64, fan_in: usize) -> f64 {
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    gain * (3.0 / fan_in as f64).sqrt()
}

/// Kaiming (He) uniform init, mode `fan_in`, leaky-ReLU gain with negative slope `a`: U(−b, b) with
/// b = √(2/(1+a²))·√(3/fan_in). For a Linear weight [out, in], fan_in = in; with a = √5 ([`SQRT_5`]),
/// b = 1/√in.
pub fn kaiming_uniform(shape: impl Into<Shape>, a: f64, rng: &mut Rng, dtype: DType, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fan_in, _) = fans(&shape)?;
    if fan_in == 0 {
        return Err(Error::InvalidShape { op: "kaiming_uniform", shape, msg: "fan_in is zero".into() });
    }
    if !a.is_finite() {
        return Err(Error::invalid("kaiming_uniform", format!("negative slope a = {a} is not finite")));
    }
    let b = kaiming_bound(a, fan_in);
    uniform(shape, -b, b, rng, dtype, device)
}

/// Xavier (Glorot) uniform init: U(−b, b) with b = gain·√(6/(fan_in+fan_out)).
pub fn xavier_uniform(shape: impl Into<Shape>, gain: f64, rng: &mut Rng, dtype: DType, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fan_in, fan_out) = fans(&shape)?;
    if fan_in + fan_out == 0 {
        return Err(Error::InvalidShape { op: "xavier_uniform", shape, msg: "fan_in + fan_out is zero".into() });
    }
    if !gain.is_finite() || gain < 0.0 {
        return Err(Error::invalid("xavier_uniform", format!("gain {gain} must be finite and non-negative")));
    }
    let b = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
    uniform(shape, -b, b, rng, dtype, device)
}

/// Elements uniform in [lo, hi).
pub fn uniform(shape: impl Into<Shape>, lo: f64, hi: f64, rng: &mut Rng, dtype: DType, device: Device) -> Result<Tensor> {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(Error::invalid("init::uniform", format!("bounds [{lo}, {hi}) are not a finite interval")));
    }
    check_float("init::uniform", dtype)?;
    rng.uniform_tensor(lo, hi, shape, dtype, device)
}

/// Normal elements with the given mean and standard deviation.
pub fn normal(shape: impl Into<Shape>, mean: f64, std: f64, rng: &mut Rng, dtype: DType, device: Device) -> Result<Tensor> {
    if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
        return Err(Error::invalid("init::normal", format!("mean {mean} and std {std} must be finite, std non-negative")));
    }
    check_float("init::normal", dtype)?;
    rng.normal_tensor(mean, std, shape, dtype, device)
}

/// All zeros.
pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
    Tensor::zeros(shape, dtype, device)
}

/// All ones.
pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
    Tensor::ones(shape, dtype, device)
}

fn check_float(op: &'static str, dtype: DType) -> Result<()> {
    if !dtype.is_float() {
        return Err(Error::UnsupportedDType { op, dtype });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrt5_constant_is_exact() {
        assert_eq!(SQRT_5, 5f64.sqrt());
    }

    #[test]
    fn kaiming_bound_is_respected_and_seeded() {
        // A Linear weight [out = 64, in = 100] with a = √5: b = 1/√100 = 0.1 by hand.
        let w = kaiming_uniform((64, 100), SQRT_5, &mut Rng::new(3), DType::F32, Device::Cpu).unwrap();
        let v = w.to_vec_f32().unwrap();
        assert!((kaiming_bound(SQRT_5, 100) - 0.1).abs() < 1e-15);
        assert!(v.iter().all(|x| x.abs() <= 0.1), "a value exceeds the bound 0.1");
        // The samples fill the interval: the extremes come close to ±b and the variance is b²/3.
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.099, "max |w| = {max}");
        let var = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var - 0.01 / 3.0).abs() < 0.1 * 0.01 / 3.0, "variance {var}");
        // Same seed, same numbers; another seed, other numbers.
        let again = kaiming_uniform((64, 100), SQRT_5, &mut Rng::new(3), DType::F32, Device::Cpu).unwrap();
        assert_eq!(again.to_vec_f32().unwrap(), v);
        let other = kaiming_uniform((64, 100), SQRT_5, &mut Rng::new(4), DType::F32, Device::Cpu).unwrap();
        assert_ne!(other.to_vec_f32().unwrap(), v);
    }

    #[test]
    fn kaiming_matches_the_generator_stream() {
        // With a = 0 (ReLU gain √2) and fan_in 6: b = √2·√(3/6) = 1; element i is −1 + 2·u_i.
        let w = kaiming_uniform((2, 3, 2), 0.0, &mut Rng::new(11), DType::F64, Device::Cpu).unwrap();
        let mut r = Rng::new(11);
        let want: Vec<f64> = (0..12).map(|_| -1.0 + 2.0 * r.uniform()).collect();
        let got = w.to_vec::<f64>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
    }

    #[test]
    fn xavier_and_fans() {
        assert_eq!(fans(&Shape::new([8, 4, 3, 3])).unwrap(), (36, 72));
        assert!(fans(&Shape::new([8])).is_err());
        // b = 2·√(6/(30+20)) by hand.
        let b = 2.0 * (6.0f64 / 50.0).sqrt();
        let w = xavier_uniform((20, 30), 2.0, &mut Rng::new(5), DType::F32, Device::Cpu).unwrap();
        let v = w.to_vec_f32().unwrap();
        assert!(v.iter().all(|x| (x.abs() as f64) <= b));
        assert!(v.iter().any(|x| (x.abs() as f64) > 0.95 * b));
    }

    #[test]
    fn normal_moments_and_constants() {
        let t = normal(10_000, 2.0, 0.5, &mut Rng::new(9), DType::F32, Device::Cpu).unwrap();
        let v: Vec<f64> = t.to_vec::<f64>().unwrap();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((m - 2.0).abs() < 0.02 && (var - 0.25).abs() < 0.02, "mean {m} var {var}");
        assert!(normal(3, 0.0, -1.0, &mut Rng::new(0), DType::F32, Device::Cpu).is_err());
        let z = Init::Const(1.5).tensor((2, 2), &mut Rng::new(0), DType::BF16, Device::Cpu).unwrap();
        assert_eq!(z.to_vec_f32().unwrap(), vec![1.5; 4]);
        assert_eq!(zeros(3, DType::F32, Device::Cpu).unwrap().to_vec_f32().unwrap(), vec![0.0; 3]);
    }
}
