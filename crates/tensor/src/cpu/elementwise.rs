//! Elementwise CPU kernels: unary maps, broadcasting binary ops, affine, powf, comparisons, `where`, and the
//! fused SwiGLU gate `silu(g) · u` with its backward.

use rayon::prelude::*;

use super::{float_dispatch, float_into_data, CpuData, CpuStorage};
use crate::{Error, Float, Layout, Result};

/// Below this many elements a map runs on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// Elementwise unary functions. The `*Deriv` variants are the derivatives used by the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Neg,
    Abs,
    Sqr,
    Sqrt,
    Rsqrt,
    Recip,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Relu,
    GeluTanh,
    GeluErf,
    Silu,
    Sign,
    GeluTanhDeriv,
    GeluErfDeriv,
    SiluDeriv,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

impl UnaryOp {
    #[inline]
    fn apply<T: Float>(self, x: T) -> T {
        let one = T::ONE;
        let half = T::from_f32(0.5);
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => one / x.sqrt(),
            UnaryOp::Recip => one / x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => {
                if x > T::ZERO {
                    x
                } else {
                    T::ZERO
                }
            }
            UnaryOp::GeluTanh => {
                let c = T::from_f64(SQRT_2_OVER_PI);
                let k = T::from_f64(GELU_C);
                half * x * (one + (c * (x + k * x * x * x)).tanh())
            }
            UnaryOp::GeluErf => half * x * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf()),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Sign => {
                if x > T::ZERO {
                    one
                } else if x < T::ZERO {
                    -one
                } else {
                    T::ZERO
                }
            }
            UnaryOp::GeluTanhDeriv => {
                let c = T::from_f64(SQRT_2_OVER_PI);
                let k = T::from_f64(GELU_C);
                let t = (c * (x + k * x * x * x)).tanh();
                half * (one + t) + half * x * (one - t * t) * c * (one + T::from_f32(3.0) * k * x * x)
            }
            UnaryOp::GeluErfDeriv => {
                let cdf = half * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf = (-(half * x * x)).exp() * T::from_f64(0.398_942_280_401_432_7);
                cdf + x * pdf
            }
            UnaryOp::SiluDeriv => {
                let s = sigmoid(x);
                s * (one + x * (one - s))
            }
        }
    }
}

#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    // Written so that neither side overflows: exp of a non-positive number only. Both sides are computed and one
    // is selected (no branch), and `vm::exp` is the vectorizable f32 exp, so a SiLU over a tensor compiles to SIMD
    // instead of a libm call per element.
    let e = super::vecmath::exp(-x.abs());
    let d = T::ONE + e;
    if x >= T::ZERO {
        T::ONE / d
    } else {
        e / d
    }
}

/// Broadcasting binary arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

impl BinaryOp {
    #[inline]
    fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            // NaN propagates, as in PyTorch's maximum/minimum.
            BinaryOp::Maximum => {
                if a.is_nan() || a >= b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || a <= b {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// Comparisons; the result is U8 (1 for true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    #[inline]
    fn apply(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

fn map_vec<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    if x.len() >= PAR_MIN {
        x.par_iter().with_min_len(PAR_MIN / 4).map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

impl CpuStorage {
    pub(crate) fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, op: UnaryOp) -> Result<CpuStorage> {
            let x = s.float_slice::<T>(l);
            Ok(CpuStorage::new(float_into_data(map_vec(&x, |v| op.apply(v)), s.dtype())))
        }
        float_dispatch!(self.dtype(), "unary", go(self, layout, op))
    }

    pub(crate) fn affine(&self, layout: &Layout, mul: f64, add: f64) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, mul: f64, add: f64) -> Result<CpuStorage> {
            let (m, a) = (T::from_f64(mul), T::from_f64(add));
            let x = s.float_slice::<T>(l);
            Ok(CpuStorage::new(float_into_data(map_vec(&x, |v| v * m + a), s.dtype())))
        }
        float_dispatch!(self.dtype(), "affine", go(self, layout, mul, add))
    }

    pub(crate) fn powf(&self, layout: &Layout, e: f64) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, e: f64) -> Result<CpuStorage> {
            let e = T::from_f64(e);
            let x = s.float_slice::<T>(l);
            Ok(CpuStorage::new(float_into_data(map_vec(&x, |v| v.powf(e)), s.dtype())))
        }
        float_dispatch!(self.dtype(), "powf", go(self, layout, e))
    }

    /// `lhs op rhs` where both layouts are already broadcast to the output shape.
    pub(crate) fn binary(&self, ll: &Layout, rhs: &CpuStorage, rl: &Layout, op: BinaryOp) -> Result<CpuStorage> {
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op: "binary", lhs: self.dtype(), rhs: rhs.dtype() });
        }
        fn go<T: Float>(a: &CpuStorage, ll: &Layout, b: &CpuStorage, rl: &Layout, op: BinaryOp) -> Result<CpuStorage> {
            let n = ll.shape().elem_count();
            // Fast path: both operands contiguous (same shape).
            if ll.is_contiguous() && rl.is_contiguous() {
                let (x, y) = (a.float_slice::<T>(ll), b.float_slice::<T>(rl));
                let out: Vec<T> = if n >= PAR_MIN {
                    x.par_iter().zip(y.par_iter()).with_min_len(PAR_MIN / 4).map(|(&u, &v)| op.apply(u, v)).collect()
                } else {
                    x.iter().zip(y.iter()).map(|(&u, &v)| op.apply(u, v)).collect()
                };
                return Ok(CpuStorage::new(float_into_data(out, a.dtype())));
            }
            // General path: walk rows of the output; each operand has its own inner stride (0 when broadcast).
            let xa = full_float::<T>(a);
            let xb = full_float::<T>(b);
            let (inner, sa, rows_a) = ll.rows();
            let (_, sb, rows_b) = rl.rows();
            let mut out = Vec::with_capacity(n);
            for (oa, ob) in rows_a.zip(rows_b) {
                match (sa, sb) {
                    (1, 1) => out.extend(xa[oa..oa + inner].iter().zip(&xb[ob..ob + inner]).map(|(&u, &v)| op.apply(u, v))),
                    (1, 0) => {
                        let v = xb[ob];
                        out.extend(xa[oa..oa + inner].iter().map(|&u| op.apply(u, v)))
                    }
                    (0, 1) => {
                        let u = xa[oa];
                        out.extend(xb[ob..ob + inner].iter().map(|&v| op.apply(u, v)))
                    }
                    _ => out.extend((0..inner).map(|i| op.apply(xa[oa + i * sa], xb[ob + i * sb]))),
                }
            }
            Ok(CpuStorage::new(float_into_data(out, a.dtype())))
        }
        float_dispatch!(self.dtype(), "binary", go(self, ll, rhs, rl, op))
    }

    /// Elementwise comparison of two views broadcast to the same shape; U8 result.
    pub(crate) fn cmp(&self, ll: &Layout, rhs: &CpuStorage, rl: &Layout, op: CmpOp) -> Result<CpuStorage> {
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op: "cmp", lhs: self.dtype(), rhs: rhs.dtype() });
        }
        let (a, b) = (self.data(), rhs.data());
        let out = ll.offsets().zip(rl.offsets()).map(|(i, j)| op.apply(a.get_f64(i), b.get_f64(j)) as u8).collect();
        Ok(CpuStorage::new(CpuData::U8(out)))
    }

    /// `cond ? on_true : on_false` with all three views broadcast to the same shape.
    pub(crate) fn where_cond(
        &self,
        cl: &Layout,
        t: &CpuStorage,
        tl: &Layout,
        f: &CpuStorage,
        fl: &Layout,
    ) -> Result<CpuStorage> {
        if t.dtype() != f.dtype() {
            return Err(Error::DTypeMismatch { op: "where_cond", lhs: t.dtype(), rhs: f.dtype() });
        }
        let c = self.index_vec(cl, "where_cond")?;
        let (tv, fv) = (t.copy_contiguous(tl), f.copy_contiguous(fl));
        fn pick<T: Copy>(c: &[i64], t: &[T], f: &[T]) -> Vec<T> {
            c.iter().zip(t.iter().zip(f)).map(|(&c, (&t, &f))| if c != 0 { t } else { f }).collect()
        }
        let data = match (tv.data(), fv.data()) {
            (CpuData::F32(t), CpuData::F32(f)) => CpuData::F32(pick(&c, t, f)),
            (CpuData::F64(t), CpuData::F64(f)) => CpuData::F64(pick(&c, t, f)),
            (CpuData::F16(t), CpuData::F16(f)) => CpuData::F16(pick(&c, t, f)),
            (CpuData::BF16(t), CpuData::BF16(f)) => CpuData::BF16(pick(&c, t, f)),
            (CpuData::U8(t), CpuData::U8(f)) => CpuData::U8(pick(&c, t, f)),
            (CpuData::U32(t), CpuData::U32(f)) => CpuData::U32(pick(&c, t, f)),
            (CpuData::I64(t), CpuData::I64(f)) => CpuData::I64(pick(&c, t, f)),
            _ => unreachable!("dtypes were checked equal above"),
        };
        Ok(CpuStorage::new(data))
    }
}

/// SwiGLU's gate: `silu(gate) · up` for two views of the same shape, in one pass.
pub(crate) fn swiglu(gate: (&CpuStorage, &Layout), up: (&CpuStorage, &Layout)) -> Result<CpuStorage> {
    if gate.0.dtype() != up.0.dtype() {
        return Err(Error::DTypeMismatch { op: "swiglu", lhs: gate.0.dtype(), rhs: up.0.dtype() });
    }
    fn go<T: Float>(g: (&CpuStorage, &Layout), u: (&CpuStorage, &Layout)) -> Result<CpuStorage> {
        let (x, y) = (g.0.float_slice::<T>(g.1), u.0.float_slice::<T>(u.1));
        // The same roundings as `silu` followed by `mul`: (x · σ(x)) · u.
        let f = |(&a, &b): (&T, &T)| UnaryOp::Silu.apply(a) * b;
        let out: Vec<T> = if x.len() >= PAR_MIN {
            x.par_iter().zip(y.par_iter()).with_min_len(PAR_MIN / 4).map(f).collect()
        } else {
            x.iter().zip(y.iter()).map(f).collect()
        };
        Ok(CpuStorage::new(float_into_data(out, g.0.dtype())))
    }
    float_dispatch!(gate.0.dtype(), "swiglu", go(gate, up))
}

/// Gradients of [`swiglu`] for the upstream `d`: (d · up · silu′(gate), d · silu(gate)), each computed only when
/// asked for, in one pass over the three inputs.
pub(crate) fn swiglu_bwd(
    gate: (&CpuStorage, &Layout),
    up: (&CpuStorage, &Layout),
    d: (&CpuStorage, &Layout),
    need: [bool; 2],
) -> Result<[Option<CpuStorage>; 2]> {
    fn go<T: Float>(
        g: (&CpuStorage, &Layout),
        u: (&CpuStorage, &Layout),
        d: (&CpuStorage, &Layout),
        need: [bool; 2],
    ) -> Result<[Option<CpuStorage>; 2]> {
        let (x, y, dv) = (g.0.float_slice::<T>(g.1), u.0.float_slice::<T>(u.1), d.0.float_slice::<T>(d.1));
        let n = dv.len();
        let mut dg = if need[0] { vec![T::ZERO; n] } else { Vec::new() };
        let mut du = if need[1] { vec![T::ZERO; n] } else { Vec::new() };
        // The same roundings as the backward of `mul` then `silu`: (d · up) · silu′(x) and d · silu(x).
        // σ(x) once per element; silu′ = σ·(1 + x·(1 − σ)) and silu = x·σ as `UnaryOp` writes them. One
        // branch-free loop per case, so that each vectorizes.
        let work = |i0: usize, dg: &mut [T], du: &mut [T]| {
            let len = dg.len().max(du.len());
            let (x, y, dv) = (&x[i0..i0 + len], &y[i0..i0 + len], &dv[i0..i0 + len]);
            let deriv = |a: T, s: T| s * (T::ONE + a * (T::ONE - s));
            match (dg.is_empty(), du.is_empty()) {
                (false, false) => {
                    for ((((og, ou), &a), &b), &e) in dg.iter_mut().zip(du.iter_mut()).zip(x).zip(y).zip(dv) {
                        let s = sigmoid(a);
                        *og = e * b * deriv(a, s);
                        *ou = e * (a * s);
                    }
                }
                (false, true) => {
                    for (((og, &a), &b), &e) in dg.iter_mut().zip(x).zip(y).zip(dv) {
                        *og = e * b * deriv(a, sigmoid(a));
                    }
                }
                (true, false) => {
                    for ((ou, &a), &e) in du.iter_mut().zip(x).zip(dv) {
                        *ou = e * (a * sigmoid(a));
                    }
                }
                (true, true) => {}
            }
        };
        let chunk = PAR_MIN / 2;
        if n >= PAR_MIN {
            let empty = |v: &mut Vec<T>| v.is_empty();
            match (empty(&mut dg), empty(&mut du)) {
                (false, false) => dg
                    .par_chunks_mut(chunk)
                    .zip(du.par_chunks_mut(chunk))
                    .enumerate()
                    .for_each(|(c, (a, b))| work(c * chunk, a, b)),
                (false, true) => dg.par_chunks_mut(chunk).enumerate().for_each(|(c, a)| work(c * chunk, a, &mut [])),
                (true, false) => du.par_chunks_mut(chunk).enumerate().for_each(|(c, b)| work(c * chunk, &mut [], b)),
                (true, true) => {}
            }
        } else {
            work(0, &mut dg, &mut du);
        }
        let wrap = |v: Vec<T>, on: bool| on.then(|| CpuStorage::new(float_into_data(v, d.0.dtype())));
        Ok([wrap(dg, need[0]), wrap(du, need[1])])
    }
    float_dispatch!(d.0.dtype(), "swiglu_bwd", go(gate, up, d, need))
}

/// The whole buffer in compute type `T` (borrowed when already `T`), indexable by storage offset.
pub(crate) fn full_float<T: Float>(s: &CpuStorage) -> std::borrow::Cow<'_, [T]> {
    let n = s.data().len();
    s.float_slice::<T>(&Layout::contiguous([n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_central_differences() {
        let pairs = [
            (UnaryOp::GeluTanh, UnaryOp::GeluTanhDeriv),
            (UnaryOp::GeluErf, UnaryOp::GeluErfDeriv),
            (UnaryOp::Silu, UnaryOp::SiluDeriv),
        ];
        for (f, df) in pairs {
            for x in [-3.1f64, -0.7, 0.0, 0.4, 2.2] {
                let h = 1e-6;
                let num = (f.apply(x + h) - f.apply(x - h)) / (2.0 * h);
                assert!((num - df.apply(x)).abs() < 1e-8, "{f:?} at {x}: {num} vs {}", df.apply(x));
            }
        }
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(-1e4f32), 0.0);
        assert_eq!(sigmoid(1e4f32), 1.0);
        assert!(BinaryOp::Maximum.apply(f32::NAN, 1.0).is_nan());
    }
}
