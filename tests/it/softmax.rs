//! `kernels/softmax.cu` on every runtime against its CPU twin: forward and backward, f32 and bf16, row lengths
//! below, at and above the warp width, logits of ±1e4, and typed errors for bad shapes.

use std::sync::Arc;

use anyhow::Result;
use half::bf16;
use rankfold_kernels::elementwise::{Element, FloatType};
use rankfold_kernels::softmax::{self, cpu, SoftmaxShape};
use rankfold_kernels::{Error, GpuBuffer, GpuRuntime};
use rankfold_tensor::Rng;

use crate::gpu::{check_frobenius, check_frobenius_floor, random, runtimes, tol_of};

/// (rows, cols, logit scale): one element, short rows, rows not multiples of 32 or of 8 rows per block, a long
/// row, logits of ±1e4 that overflow exp without the max subtraction, and rows past `softmax::LONG_ROW` (one block
/// per row; 4999 is not a multiple of the 256-thread block).
const SHAPES: [(usize, usize, f64); 9] = [
    (1, 1, 3.0),
    (3, 5, 3.0),
    (13, 31, 3.0),
    (9, 33, 3.0),
    (5, 100, 8.0),
    (2, 1025, 3.0),
    (11, 40, 1e4),
    (3, 4999, 3.0),
    (2, 2100, 1e4),
];

fn forward_and_backward_on<T: Element>(rt: &Arc<dyn GpuRuntime>, rt_name: &str, rng: &mut Rng) -> Result<()> {
    for (rows, cols, scale) in SHAPES {
        let shape = SoftmaxShape { rows, cols };
        let what = format!("{rt_name} {:?} {rows}x{cols} scale {scale}", T::TYPE);
        let bytes = rows * cols * std::mem::size_of::<T>();

        let x: Vec<T> = random(rng, rows * cols, -scale, scale);
        let want_y = cpu::forward(shape, &x)?;
        let gx = GpuBuffer::from_slice(rt, &x)?;
        let gy = GpuBuffer::zeroed(rt, bytes)?;
        softmax::forward(rt, T::TYPE, shape, &gx, &gy)?;
        check_frobenius(&gy.to_vec::<T>()?, &want_y, tol_of::<T>(), &format!("forward {what}"))?;

        // The backward pass starts from the twin's y, so it is tested on its own.
        let dy: Vec<T> = random(rng, rows * cols, -1.0, 1.0);
        let want_dx = cpu::backward(shape, &want_y, &dy)?;
        let (gy, gdy) = (GpuBuffer::from_slice(rt, &want_y)?, GpuBuffer::from_slice(rt, &dy)?);
        let gdx = GpuBuffer::zeroed(rt, bytes)?;
        softmax::backward(rt, T::TYPE, shape, &gy, &gdy, &gdx)?;
        // dx is y ⊙ dy minus y·(Σ y ⊙ dy): with near one-hot rows (logits of ±1e4) the two cancel to ~0, so the
        // error is measured against the norm of y ⊙ dy, the size of the terms that cancel.
        let terms: f64 = want_y.iter().zip(&dy).map(|(a, b)| (a.to_f32() as f64 * b.to_f32() as f64).powi(2)).sum();
        let got_dx = gdx.to_vec::<T>()?;
        check_frobenius_floor(&got_dx, &want_dx, terms.sqrt(), tol_of::<T>(), &format!("backward {what}"))?;
    }
    Ok(())
}

#[test]
fn softmax_matches_the_cpu_twin() -> Result<()> {
    let mut rng = Rng::new(0x50F7);
    for (name, rt) in runtimes()? {
        forward_and_backward_on::<f32>(&rt, name, &mut rng)?;
        forward_and_backward_on::<bf16>(&rt, name, &mut rng)?;
    }
    Ok(())
}

#[test]
fn bad_softmax_shapes_are_typed_errors() -> Result<()> {
    for (_, rt) in runtimes()? {
        let x = GpuBuffer::zeroed(&rt, 4 * 12)?;
        let y = GpuBuffer::zeroed(&rt, 4 * 11)?;
        let zero_cols = SoftmaxShape { rows: 3, cols: 0 };
        assert!(matches!(softmax::forward(&rt, FloatType::F32, zero_cols, &x, &x), Err(Error::Shape { .. })));
        let shape = SoftmaxShape { rows: 3, cols: 4 };
        let r = softmax::forward(&rt, FloatType::F32, shape, &x, &y);
        assert!(matches!(r, Err(Error::BufferTooSmall { name: "y", .. })), "{r:?}");
        let r = softmax::backward(&rt, FloatType::F32, shape, &x, &y, &x);
        assert!(matches!(r, Err(Error::BufferTooSmall { name: "dy", .. })), "{r:?}");
        // A row of 2³¹ elements would wrap the kernels' u32 column counters: refused by its shape alone.
        let long = SoftmaxShape { rows: 1, cols: 1 << 31 };
        let r = softmax::forward(&rt, FloatType::Bf16, long, &x, &x);
        assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 32, failure_persistence: None, ..Default::default()
    })]

    /// The twin's rows sum to 1 and do not change when a constant is added to a row (the max subtraction).
    #[test]
    fn twin_rows_sum_to_one_and_ignore_shifts(
        rows in 1usize..5, cols in 1usize..70, seed in 0u64..1000, shift in -50.0f64..50.0,
    ) {
        let shape = SoftmaxShape { rows, cols };
        let x: Vec<f32> = random(&mut Rng::new(seed), rows * cols, -5.0, 5.0);
        let shifted: Vec<f32> = x.iter().map(|&v| v + shift as f32).collect();
        let (y, ys) = (cpu::forward(shape, &x).expect("shape"), cpu::forward(shape, &shifted).expect("shape"));
        for row in y.chunks(cols) {
            proptest::prop_assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        }
        // The shift moves x by up to one f32 ulp of |x + shift| ≤ 55, so y moves by at most ~4e-6 relative.
        for (a, b) in y.iter().zip(&ys) {
            proptest::prop_assert!((a - b).abs() <= 1e-5 * a.abs() + 1e-9, "{a} vs {b}");
        }
    }
}
