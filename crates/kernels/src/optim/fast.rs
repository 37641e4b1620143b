//! The fast CPU path of the optimizer family: the twins' loops ([`super::cpu`]) compiled a second time for
//! AVX-512 or AVX2 with FMA, chosen at run time. The arithmetic is the same IEEE operations in the same order (Rust
//! never fuses or reorders float operations on its own, and `mul_add` is a correctly rounded fused multiply-add
//! in every build), so the results are bit-identical to the twins'; only the instructions differ: hardware FMA
//! instead of a libm call, vector loads, square roots and divisions where the loops allow.

use super::cpu::{adamw32_elems, adamw8bit_blocks, check32, check8, Adam8State};
use super::AdamConsts;
use crate::Result;

/// Which instruction set the fast path runs on this CPU: `"avx512"`, `"avx2+fma"` or `"portable"`.
pub fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "portable"
}

/// Runs `$call` (a call of an `#[inline(always)]` loop) in a function built for the best instruction set.
macro_rules! dispatch {
    ($call:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn wide512(f: impl FnOnce()) {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide256(f: impl FnOnce()) {
                f()
            }
            match isa() {
                // SAFETY: `isa` reported avx512f and fma on this CPU (avx2 comes with avx512f).
                "avx512" => unsafe { wide512(|| $call) },
                // SAFETY: `isa` reported avx2 and fma on this CPU.
                "avx2+fma" => unsafe { wide256(|| $call) },
                _ => $call,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $call
        }
    }};
}

/// [`super::cpu::adamw8bit`], bit for bit, on the best instruction set.
pub fn adamw8bit(p: &mut [f32], g: &[f32], st: Adam8State<'_>, k: &AdamConsts) -> Result<()> {
    check8("optim::fast::adamw8bit", p, g, &st)?;
    dispatch!(adamw8bit_blocks(p, g, st, k));
    Ok(())
}

/// [`super::cpu::adamw32`], bit for bit, on the best instruction set.
pub fn adamw32(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) -> Result<()> {
    check32("optim::fast::adamw32", p, g, m, v)?;
    dispatch!(adamw32_elems(p, g, m, v, k));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{cpu, AdamParams, BLOCKSIZE};
    use super::*;

    #[test]
    fn the_fast_path_equals_the_twins_bit_for_bit() {
        let h = AdamParams { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
        let n = 3 * BLOCKSIZE + 77;
        let wave = |s: u64| -> Vec<f32> { (0..n as u64).map(|i| (((i * 2_654_435_761 + s) % 10_007) as f32 / 5003.0 - 1.0) * 0.3).collect() };
        let mut twin = (wave(1), vec![0u8; n], vec![0u8; n], vec![0f32; 4], vec![0f32; 4]);
        let mut fast = twin.clone();
        let (mut p32, mut m, mut v) = (wave(1), vec![0f32; n], vec![0f32; n]);
        let (mut q32, mut mq, mut vq) = (p32.clone(), m.clone(), v.clone());
        for t in 1..=4 {
            let k = AdamConsts::new(&h, t);
            let mut g = wave(100 + t);
            g[5] = f32::NAN;
            let (p, q1, q2, a1, a2) = &mut twin;
            cpu::adamw8bit(p, &g, Adam8State { state1: q1, state2: q2, absmax1: a1, absmax2: a2 }, &k).unwrap();
            let (p, q1, q2, a1, a2) = &mut fast;
            adamw8bit(p, &g, Adam8State { state1: q1, state2: q2, absmax1: a1, absmax2: a2 }, &k).unwrap();
            cpu::adamw32(&mut p32, &g, &mut m, &mut v, &k).unwrap();
            adamw32(&mut q32, &g, &mut mq, &mut vq, &k).unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&twin.0), bits(&fast.0), "{}", isa());
        assert_eq!((&twin.1, &twin.2, bits(&twin.3), bits(&twin.4)), (&fast.1, &fast.2, bits(&fast.3), bits(&fast.4)));
        assert_eq!((bits(&p32), bits(&m), bits(&v)), (bits(&q32), bits(&mq), bits(&vq)));
    }
}
