//! Learning-rate schedules as pure functions of the step (0-based: the step about to be taken), with
//! Hugging Face transformers' semantics (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`).
//!
//! | schedule | step < warmup | step ≥ warmup |
//! |---|---|---|
//! | `Constant` | — | lr |
//! | `LinearWarmup` | lr·step/max(1, warmup) | lr |
//! | `WarmupLinear` | lr·step/max(1, warmup) | lr·max(0, (total − step)/max(1, total − warmup)) |
//! | `WarmupCosine` | lr·step/max(1, warmup) | lr·max(r, ½(1 + cos(π·min(1, q)))), q = (step − warmup)/max(1, total − warmup) |
//!
//! r is `min_lr_ratio`: the cosine is floored at r·lr (r = 0 gives HF's schedule exactly, except that q is
//! clamped at 1 so the rate stays at its floor after `total` instead of rising again). Warmup starts from
//! zero, so with warmup > 0 the first step has lr 0, as in HF.

use std::f64::consts::PI;

/// A learning-rate schedule; [`LrSchedule::lr_at`] gives the rate of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base rate at every step.
    Constant,
    /// Linear warmup from 0 over `warmup` steps, then constant.
    LinearWarmup { warmup: usize },
    /// Linear warmup, then linear decay to 0 at step `total` (HF Trainer's default, "linear").
    WarmupLinear { warmup: usize, total: usize },
    /// Linear warmup, then half a cosine down to `min_lr_ratio`·lr at step `total`.
    WarmupCosine { warmup: usize, total: usize, min_lr_ratio: f64 },
}

impl LrSchedule {
    /// The learning rate of `step` (0-based) for base rate `base_lr`.
    pub fn lr_at(&self, step: usize, base_lr: f64) -> f64 {
        let warm = |w: usize| base_lr * step as f64 / w.max(1) as f64;
        match *self {
            LrSchedule::Constant => base_lr,
            LrSchedule::LinearWarmup { warmup } if step < warmup => warm(warmup),
            LrSchedule::LinearWarmup { .. } => base_lr,
            LrSchedule::WarmupLinear { warmup, .. } if step < warmup => warm(warmup),
            LrSchedule::WarmupLinear { warmup, total } => {
                let left = total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64;
                base_lr * left.max(0.0)
            }
            LrSchedule::WarmupCosine { warmup, .. } if step < warmup => warm(warmup),
            LrSchedule::WarmupCosine { warmup, total, min_lr_ratio } => {
                let q = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
                let cos = 0.5 * (1.0 + (PI * q.min(1.0)).cos());
                base_lr * cos.max(min_lr_ratio.clamp(0.0, 1.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn values_at_chosen_steps() {
        let lr = 2e-4;
        assert_eq!(LrSchedule::Constant.lr_at(123, lr), lr);
        let w = LrSchedule::LinearWarmup { warmup: 10 };
        close(w.lr_at(0, lr), 0.0);
        close(w.lr_at(5, lr), 1e-4);
        close(w.lr_at(10, lr), lr);
        close(w.lr_at(1000, lr), lr);

        let c = LrSchedule::WarmupCosine { warmup: 10, total: 110, min_lr_ratio: 0.0 };
        close(c.lr_at(3, lr), lr * 0.3);
        close(c.lr_at(10, lr), lr);
        // Halfway through the decay, q = 0.5: ½(1 + cos(π/2)) = ½.
        close(c.lr_at(60, lr), lr * 0.5);
        // q = 0.25: ½(1 + √2/2).
        close(c.lr_at(35, lr), lr * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2));
        close(c.lr_at(110, lr), 0.0);
        close(c.lr_at(500, lr), 0.0);
        // With a floor of 0.1: q = 0.9 gives ½(1 + cos(0.9π)) ≈ 0.0245 < 0.1, so the floor holds.
        let f = LrSchedule::WarmupCosine { warmup: 10, total: 110, min_lr_ratio: 0.1 };
        close(f.lr_at(100, lr), lr * 0.1);
        close(f.lr_at(60, lr), lr * 0.5);

        let l = LrSchedule::WarmupLinear { warmup: 4, total: 12 };
        close(l.lr_at(2, lr), lr * 0.5);
        close(l.lr_at(4, lr), lr);
        close(l.lr_at(10, lr), lr * 0.25);
        close(l.lr_at(20, lr), 0.0);
        // No warmup: step 0 already has the full rate.
        close(LrSchedule::WarmupCosine { warmup: 0, total: 10, min_lr_ratio: 0.0 }.lr_at(0, lr), lr);
    }
}
