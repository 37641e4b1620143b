//! The dequantize-fused NF4 matmul of the CPU backend: `y = x·Ŵᵀ` and `dx = dy·Ŵ` with the NF4 weight
//! `Ŵ [n, k]` dequantized one tile of rows at a time into a cache-sized f32 buffer, so a QLoRA layer never holds
//! a full-precision copy of its weight. Each tile is multiplied with the `gemm` crate.

use gemm::Parallelism;
use rankfold_kernels::nf4::fast;

use crate::nf4::Nf4Tensor;
use rayon::prelude::*;

/// The tile buffer's target size in bytes (half of a Zen 4 core's 1 MiB L2).
const TILE_BYTES: usize = 512 * 1024;

/// Rows of `Ŵ` per tile for a weight with `k` columns (at least one, at most `n`).
fn tile_rows(n: usize, k: usize) -> usize {
    (TILE_BYTES / 4 / k.max(1)).clamp(1, n.max(1))
}

/// Dequantizes rows `r0 .. r0 + rows` of `w` (`[n, k]`) into `buf [rows, k]`, eight rows per thread task, each
/// task reconstructing only the block scales its rows need.
fn dequantize_rows(w: &Nf4Tensor, k: usize, r0: usize, buf: &mut [f32]) {
    buf.par_chunks_mut(k.max(1) * 8).enumerate().for_each(|(c, dst)| {
        let start = (r0 + c * 8) * k;
        let mut scratch = Vec::new();
        let (view, at) = w.tile_view(start, start + dst.len(), &mut scratch);
        fast::dequantize_range(view, at, dst).expect("the tile lies inside the weight (checked by the caller)");
    });
}

/// Calls `f(r0, rows, tile)` for each tile of `Ŵ [n, k]`: rows `r0 .. r0 + rows` dequantized into `tile
/// [rows, k]` row-major (one buffer reused for every tile).
fn for_each_tile(w: &Nf4Tensor, n: usize, k: usize, mut f: impl FnMut(usize, usize, &[f32])) {
    let tn = tile_rows(n, k);
    let mut buf = vec![0f32; tn * k];
    for r0 in (0..n).step_by(tn) {
        let rows = tn.min(n - r0);
        let tile = &mut buf[..rows * k];
        dequantize_rows(w, k, r0, tile);
        f(r0, rows, tile);
    }
}

fn parallelism(macs: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if macs >= 1 << 18 && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `y [m, n] = x [m, k] · Ŵᵀ` where `w` holds `Ŵ [n, k]` row-major.
pub(crate) fn forward(x: &[f32], m: usize, w: &Nf4Tensor, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "nf4_matmul: x is [m, k]");
    assert_eq!(w.shape().elem_count(), n * k, "nf4_matmul: the weight is [n, k]");
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return y;
    }
    for_each_tile(w, n, k, |r0, rows, tile| {
        // SAFETY: dst is y[.., r0 .. r0 + rows] of the row-major [m, n] output: row stride n, column stride 1,
        // m·rows elements all inside `y` since r0 + rows ≤ n. lhs is x [m, k] row-major (row stride k). rhs is
        // the tileᵀ [k, rows]: element (p, j) = tile[j·k + p], row stride 1 and column stride k, inside `tile`.
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                y.as_mut_ptr().add(r0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                tile.as_ptr(),
                k as isize,
                1,
                0f32,
                1f32,
                false,
                false,
                false,
                parallelism(m * rows * k),
            )
        }
    });
    y
}

/// `dx [m, k] = dy [m, n] · Ŵ` where `w` holds `Ŵ [n, k]` row-major (the gradient of `forward` for `x`).
pub(crate) fn backward_x(dy: &[f32], m: usize, w: &Nf4Tensor, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(dy.len(), m * n, "nf4_matmul backward: dy is [m, n]");
    assert_eq!(
        w.shape().elem_count(),
        n * k,
        "nf4_matmul backward: the weight is [n, k]"
    );
    let mut dx = vec![0f32; m * k];
    if m == 0 || n == 0 || k == 0 {
        return dx;
    }
    for_each_tile(w, n, k, |r0, rows, tile| {
        // SAFETY: dst is dx [m, k] row-major, read and accumulated into (read_dst with alpha 1). lhs is
        // dy[.., r0 .. r0 + rows]: row stride n, column stride 1, inside `dy` since r0 + rows ≤ n. rhs is the
        // tile [rows, k] row-major, inside `tile`.
        unsafe {
            gemm::gemm(
                m,
                k,
                rows,
                dx.as_mut_ptr(),
                1,
                k as isize,
                r0 > 0,
                dy.as_ptr().add(r0),
                1,
                n as isize,
                tile.as_ptr(),
                1,
                k as isize,
                1f32,
                1f32,
                false,
                false,
                false,
                parallelism(m * rows * k),
            )
        }
    });
    dx
}
