//! CPU twins of the optimizer family: plain loops, one element at a time, in the order of the module docs.
//! They are the reference of the fast CPU optimizers in `rankfold-tensor` and, later, of the GPU kernels.

use super::{AdamConsts, BLOCKSIZE};
use crate::blockwise8::{quantize_block, DynamicMap};
use crate::{Error, Result};

/// The 8-bit state of one tensor of `n` elements: codes `[n]` and one absmax per block of 256 (`[n.div_ceil(256)]`).
#[derive(Debug)]
pub struct Adam8State<'a> {
    /// First moment, codes of the signed map.
    pub state1: &'a mut [u8],
    /// Second moment, codes of the unsigned map.
    pub state2: &'a mut [u8],
    pub absmax1: &'a mut [f32],
    pub absmax2: &'a mut [f32],
}

fn check(op: &'static str, what: &str, have: usize, need: usize) -> Result<()> {
    if have != need {
        return Err(Error::Shape { op, msg: format!("`{what}` has {have} elements, need {need}") });
    }
    Ok(())
}

/// The moments of one element after its gradient `g` (unchanged for a non-finite `g`; both values are computed
/// and one is selected, so the loops stay branch-free).
#[inline(always)]
fn moments(m: f32, v: f32, g: f32, k: &AdamConsts) -> (f32, f32) {
    let m1 = g.mul_add(k.one_minus_b1, m * k.b1);
    let v1 = (k.one_minus_b2 * g).mul_add(g, v * k.b2);
    if g.is_finite() {
        (m1, v1)
    } else {
        (m, v)
    }
}

/// One 8-bit AdamW step over `p [n]` with gradient `g [n]`: dequantize each block's moments, update the
/// moments and the parameters, requantize. `k` comes from [`AdamConsts::new`] for this step.
pub fn adamw8bit(p: &mut [f32], g: &[f32], st: Adam8State<'_>, k: &AdamConsts) -> Result<()> {
    check8("optim::cpu::adamw8bit", p, g, &st)?;
    adamw8bit_blocks(p, g, st, k);
    Ok(())
}

/// Checks the lengths of an 8-bit step's arrays against `p`'s.
pub(super) fn check8(op: &'static str, p: &[f32], g: &[f32], st: &Adam8State<'_>) -> Result<()> {
    let n = p.len();
    check(op, "g", g.len(), n)?;
    check(op, "state1", st.state1.len(), n)?;
    check(op, "state2", st.state2.len(), n)?;
    check(op, "absmax1", st.absmax1.len(), n.div_ceil(BLOCKSIZE))?;
    check(op, "absmax2", st.absmax2.len(), n.div_ceil(BLOCKSIZE))
}

/// Checks the lengths of a 32-bit step's arrays against `p`'s.
pub(super) fn check32(op: &'static str, p: &[f32], g: &[f32], m: &[f32], v: &[f32]) -> Result<()> {
    let n = p.len();
    check(op, "g", g.len(), n)?;
    check(op, "m", m.len(), n)?;
    check(op, "v", v.len(), n)
}

/// The blocks of [`adamw8bit`], lengths checked by the caller (also the body of the fast path's builds).
#[inline(always)]
pub(super) fn adamw8bit_blocks(p: &mut [f32], g: &[f32], st: Adam8State<'_>, k: &AdamConsts) {
    let (map1, map2) = (DynamicMap::signed(), DynamicMap::unsigned());
    let (mut m, mut v) = ([0f32; BLOCKSIZE], [0f32; BLOCKSIZE]);
    let blocks = p
        .chunks_mut(BLOCKSIZE)
        .zip(g.chunks(BLOCKSIZE))
        .zip(st.state1.chunks_mut(BLOCKSIZE).zip(st.state2.chunks_mut(BLOCKSIZE)))
        .zip(st.absmax1.iter_mut().zip(st.absmax2.iter_mut()));
    for (((pb, gb), (q1, q2)), (a1, a2)) in blocks {
        let len = pb.len();
        for i in 0..len {
            let (m0, v0) = (map1.code()[q1[i] as usize] * *a1, map2.code()[q2[i] as usize] * *a2);
            (m[i], v[i]) = moments(m0, v0, gb[i], k);
        }
        let decay = k.decay.unwrap_or(1.0);
        for i in 0..len {
            let denom = v[i].sqrt() / k.c2 + k.eps;
            // Without weight decay the multiply by 1.0 is exact, as skipping it is.
            let x = pb[i] * decay;
            let new = x + k.neg_lr_over_c1 * m[i] / denom;
            pb[i] = if gb[i].is_finite() { new } else { pb[i] };
        }
        *a1 = quantize_block(&m[..len], map1, q1);
        *a2 = quantize_block(&v[..len], map2, q2);
    }
}

/// One 32-bit AdamW step as bitsandbytes does it below `min_8bit_size`: `m [n]`, `v [n]` in f32.
pub fn adamw32(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) -> Result<()> {
    check32("optim::cpu::adamw32", p, g, m, v)?;
    adamw32_elems(p, g, m, v, k);
    Ok(())
}

/// The loop of [`adamw32`], lengths checked by the caller.
#[inline(always)]
pub(super) fn adamw32_elems(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let decay = k.decay.unwrap_or(1.0);
    for i in 0..n {
        (m[i], v[i]) = moments(m[i], v[i], g[i], k);
        let x = p[i] * decay;
        let update = m[i] / (v[i].sqrt() + k.eps_c2);
        let new = update.mul_add(k.step_size, x);
        p[i] = if g[i].is_finite() { new } else { p[i] };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamParams;

    const H: AdamParams = AdamParams { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };

    /// The 32-bit update in f64 (no roundings): the first step moves every parameter by about −lr·sign(g).
    #[test]
    fn the_first_32bit_step_is_adams_sign_step_in_f64() {
        let k = AdamConsts::new(&H, 1);
        let mut p = [0.5f32, -0.25, 1.0];
        let g = [0.3f32, -2.0, 1e-3];
        let (mut m, mut v) = ([0f32; 3], [0f32; 3]);
        adamw32(&mut p, &g, &mut m, &mut v, &k).unwrap();
        for (i, &p0) in [0.5f64, -0.25, 1.0].iter().enumerate() {
            let want = p0 * (1.0 - H.lr * H.weight_decay) - H.lr * (g[i] as f64).signum();
            assert!((p[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", p[i]);
        }
    }

    #[test]
    fn non_finite_gradients_leave_their_elements_alone() {
        let k = AdamConsts::new(&H, 3);
        let g = [f32::NAN, 0.5, f32::INFINITY, -0.5];
        let (mut p, mut m, mut v) = ([1f32, 1.0, 1.0, 1.0], [0.1f32; 4], [0.2f32; 4]);
        adamw32(&mut p, &g, &mut m, &mut v, &k).unwrap();
        assert_eq!((p[0], m[0], v[0]), (1.0, 0.1, 0.2));
        assert_eq!((p[2], m[2], v[2]), (1.0, 0.1, 0.2));
        // Both finite elements move down (their first moments stay positive), the larger moment further.
        assert!(p[1] < p[3] && p[3] < 1.0 && p.iter().all(|x| x.is_finite()), "{p:?}");
        // 8-bit: the skipped element's moment survives requantization (to within the code's resolution).
        let n = 300;
        let mut p8 = vec![1f32; n];
        let (mut q1, mut q2, mut a1, mut a2) = (vec![0u8; n], vec![0u8; n], vec![0f32; 2], vec![0f32; 2]);
        let mut g8: Vec<f32> = (0..n).map(|i| (i as f32 - 150.0) / 100.0).collect();
        for _ in 0..2 {
            let st = Adam8State { state1: &mut q1, state2: &mut q2, absmax1: &mut a1, absmax2: &mut a2 };
            adamw8bit(&mut p8, &g8, st, &k).unwrap();
            g8[7] = f32::NAN;
        }
        assert!(p8.iter().all(|x| x.is_finite()) && a1.iter().chain(&a2).all(|x| x.is_finite()));
        let m7 = DynamicMap::signed().code()[q1[7] as usize] * a1[0];
        assert!(m7 < 0.0, "element 7 keeps its negative first moment, got {m7}");
    }

    #[test]
    fn shapes_are_checked() {
        let k = AdamConsts::new(&H, 1);
        let st = Adam8State { state1: &mut [0; 4], state2: &mut [0; 4], absmax1: &mut [0.0; 2], absmax2: &mut [0.0; 1] };
        assert!(adamw8bit(&mut [0.0; 4], &[0.0; 4], st, &k).is_err());
        assert!(adamw32(&mut [0.0; 2], &[0.0; 3], &mut [0.0; 2], &mut [0.0; 2], &k).is_err());
    }
}
