//! The CPU twin of `kernels/softmax.cu`: plain loops per row, sums in f64.

use super::SoftmaxShape;
use crate::elementwise::Element;
use crate::{Error, Result};

/// Checks that a row-major `[rows, cols]` buffer holds exactly rows·cols elements.
fn check(op: &'static str, name: &str, shape: SoftmaxShape, len: usize) -> Result<()> {
    match shape.rows.checked_mul(shape.cols) {
        Some(n) if n == len => Ok(()),
        _ => Err(Error::Shape { op, msg: format!("`{name}` has {len} elements, shape {shape:?} needs rows·cols") }),
    }
}

/// `y = softmax(x)` over each row of `x` [rows, cols] row-major.
pub fn forward<T: Element>(shape: SoftmaxShape, x: &[T]) -> Result<Vec<T>> {
    check("softmax::cpu::forward", "x", shape, x.len())?;
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(shape.cols.max(1)).take(shape.rows) {
        let row: Vec<f64> = row.iter().map(|v| v.to_f32() as f64).collect();
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        y.extend(row.iter().map(|v| T::from_f32(((v - max).exp() / sum) as f32)));
    }
    Ok(y)
}

/// `dx = y ⊙ (dy − Σ dy ⊙ y)` over each row; `y`, `dy` [rows, cols] row-major, `y` the forward output.
pub fn backward<T: Element>(shape: SoftmaxShape, y: &[T], dy: &[T]) -> Result<Vec<T>> {
    check("softmax::cpu::backward", "y", shape, y.len())?;
    check("softmax::cpu::backward", "dy", shape, dy.len())?;
    let cols = shape.cols.max(1);
    let mut dx = Vec::with_capacity(y.len());
    for (yr, dyr) in y.chunks(cols).zip(dy.chunks(cols)).take(shape.rows) {
        let dot: f64 = yr.iter().zip(dyr).map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64).sum();
        dx.extend(yr.iter().zip(dyr).map(|(a, b)| {
            let a = a.to_f32() as f64;
            T::from_f32((a * (b.to_f32() as f64 - dot)) as f32)
        }));
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_survive_large_logits() {
        let shape = SoftmaxShape { rows: 3, cols: 5 };
        let x: Vec<f32> = (0..15).map(|i| if i % 2 == 0 { 1e4 } else { -1e4 } + i as f32).collect();
        let y = forward(shape, &x).expect("matching shape");
        for row in y.chunks(5) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-6 && row.iter().all(|v| v.is_finite()), "{row:?}");
        }
    }

    #[test]
    fn backward_of_a_uniform_gradient_is_zero() {
        // Σ y = 1 per row, so dy = c·1 gives dx = y·(c − c) = 0.
        let shape = SoftmaxShape { rows: 2, cols: 7 };
        let x: Vec<f32> = (0..14).map(|i| (i as f32 * 0.37).sin()).collect();
        let y = forward(shape, &x).expect("matching shape");
        let dx = backward(shape, &y, &[0.5f32; 14]).expect("matching shape");
        assert!(dx.iter().all(|v| v.abs() < 1e-7), "{dx:?}");
    }

    #[test]
    fn a_wrong_length_is_an_error() {
        assert!(forward(SoftmaxShape { rows: 2, cols: 3 }, &[0.0f32; 5]).is_err());
    }
}
