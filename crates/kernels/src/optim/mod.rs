//! The optimizer kernel family: AdamW with bitsandbytes' state layouts. Today the CPU twins ([`cpu`]) of
//! bitsandbytes 0.50.2's CPU backend: the 8-bit blockwise AdamW (`AdamW8bit`) and the 32-bit AdamW it uses for
//! tensors below `min_8bit_size`. The GPU kernels (`kernels/optim.cu`, multi-tensor) will take these as reference.
//!
//! Math (per element, t the parameter's step from 1, every operation rounded to f32 as bitsandbytes' CPU backend
//! does through torch, `fma` a fused multiply-add):
//!   m ← fma(g, 1−β1, m·β1);  v ← fma((1−β2)·g, g, v·β2);  c1 = 1−β1^t, c2 = √(1−β2^t) (f64, then f32)
//!   8-bit:  p ← p·(1 − lr·wd) if wd > 0;  p ← p + (−lr/c1)·m / (√v/c2 + ε)
//!   32-bit: p ← p·(1 − lr·wd) if wd > 0;  p ← fma(m / (√v + ε·c2), −lr·c2/c1, p)
//! 8-bit state: m and v are stored per block of 256 as codes of the signed and the unsigned dynamic maps with an
//! f32 absmax ([`crate::blockwise8`]), dequantized before the update and requantized after it. The square root is
//! IEEE (correctly rounded); torch's vectorized f32 sqrt (MKL on x86) is not: about 0.7% of its results are one
//! ulp off, so stock bitsandbytes moves a few parameters by an ulp relative to this. The fixture of
//! `tests/it/optim8.rs` was written with a correctly rounded sqrt, and there the match is bit for bit.
//!
//! Non-finite gradients: an element whose gradient is NaN or ±∞ is skipped — its parameter and its (dequantized)
//! moments keep their values. bitsandbytes' CPU backend would spread the NaN into the element's state and its
//! block's scale; its CUDA kernel sets both moments of the element to zero and leaves the parameter.
//! Weight decay: the CPU backend applies it before the step (as here); the CUDA kernel after it.

pub mod cpu;
pub mod fast;

/// Elements per quantization block of the 8-bit states.
pub const BLOCKSIZE: usize = 256;

/// Tensors with fewer elements keep f32 states (bitsandbytes' `min_8bit_size` default).
pub const MIN_8BIT_SIZE: usize = 4096;

/// The hyperparameters of one AdamW step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The per-step scalars, rounded to f32 as torch rounds Python floats handed to an f32 kernel.
#[derive(Debug, Clone, Copy)]
pub struct AdamConsts {
    /// β1, 1−β1, β2, 1−β2.
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// `1 − lr·wd`, or `None` without weight decay (then no multiply happens at all).
    pub decay: Option<f32>,
    /// 8-bit path: `−lr/c1`, `c2` and `ε`.
    pub neg_lr_over_c1: f32,
    pub c2: f32,
    pub eps: f32,
    /// 32-bit path: `ε·c2` and `−lr·c2/c1`.
    pub eps_c2: f32,
    pub step_size: f32,
}

impl AdamConsts {
    /// The scalars of step `t` (from 1).
    pub fn new(h: &AdamParams, t: u64) -> AdamConsts {
        // `powf` is libm's `pow`, which Python's `beta ** step` calls too.
        let t = t as f64;
        let c1 = 1.0 - h.beta1.powf(t);
        let c2 = (1.0 - h.beta2.powf(t)).sqrt();
        AdamConsts {
            b1: h.beta1 as f32,
            one_minus_b1: (1.0 - h.beta1) as f32,
            b2: h.beta2 as f32,
            one_minus_b2: (1.0 - h.beta2) as f32,
            decay: (h.weight_decay > 0.0).then(|| (1.0 - h.lr * h.weight_decay) as f32),
            neg_lr_over_c1: (-h.lr / c1) as f32,
            c2: c2 as f32,
            eps: h.eps as f32,
            eps_c2: (h.eps * c2) as f32,
            step_size: (-h.lr * c2 / c1) as f32,
        }
    }
}
