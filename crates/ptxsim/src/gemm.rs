//! The CPU stand-in for cuBLAS: a row-major GEMM `c = alpha·op(a)·op(b) + beta·c` on simulated device memory,
//! in f32, or bf16 storage with f32 accumulation.

use half::bf16;
use rankfold_kernels::{Error, GemmConfig, GemmDType};

use crate::memory::DeviceMemory;

/// Reads `rows × cols` elements with row stride `ld` (in elements) as f32.
fn read_matrix(
    mem: &DeviceMemory,
    ptr: u64,
    rows: usize,
    cols: usize,
    ld: usize,
    dt: GemmDType,
    what: &'static str,
) -> Result<Vec<f32>, Error> {
    let es = elem_size(dt);
    if rows == 0 || cols == 0 {
        return Ok(vec![]);
    }
    if ld < cols {
        return Err(Error::Shape {
            op: "gemm",
            msg: format!("{what}: leading dimension {ld} < {cols} columns"),
        });
    }
    let bytes = ((rows - 1) * ld + cols) * es;
    let s = mem.slice(ptr, bytes).ok_or(Error::InvalidPointer {
        op: "gemm",
        ptr,
        bytes,
    })?;
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let o = (r * ld + c) * es;
            out.push(match dt {
                GemmDType::F32 => f32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]),
                GemmDType::Bf16 => bf16::from_le_bytes([s[o], s[o + 1]]).to_f32(),
            });
        }
    }
    Ok(out)
}

fn elem_size(dt: GemmDType) -> usize {
    match dt {
        GemmDType::F32 => 4,
        GemmDType::Bf16 => 2,
    }
}

/// Runs the GEMM described by `cfg`.
pub(crate) fn gemm(mem: &mut DeviceMemory, cfg: &GemmConfig) -> Result<(), Error> {
    let (m, n, k, dt) = (cfg.m, cfg.n, cfg.k, cfg.dtype);
    // op(a) is [m, k]: stored [k, m] when transposed.
    let (ar, ac) = if cfg.trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if cfg.trans_b { (n, k) } else { (k, n) };
    let a = read_matrix(mem, cfg.a.0, ar, ac, cfg.lda, dt, "a")?;
    let b = read_matrix(mem, cfg.b.0, br, bc, cfg.ldb, dt, "b")?;
    let c = if cfg.beta != 0.0 {
        read_matrix(mem, cfg.c.0, m, n, cfg.ldc, dt, "c")?
    } else {
        vec![0.0; m * n]
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let es = elem_size(dt);
    if cfg.ldc < n {
        return Err(Error::Shape {
            op: "gemm",
            msg: format!("c: leading dimension {} < {n} columns", cfg.ldc),
        });
    }
    let bytes = ((m - 1) * cfg.ldc + n) * es;
    let out = mem.slice_mut(cfg.c.0, bytes).ok_or(Error::InvalidPointer {
        op: "gemm",
        ptr: cfg.c.0,
        bytes,
    })?;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                let av = if cfg.trans_a {
                    a[p * m + i]
                } else {
                    a[i * k + p]
                };
                let bv = if cfg.trans_b {
                    b[j * k + p]
                } else {
                    b[p * n + j]
                };
                acc += av * bv;
            }
            let v = cfg.alpha * acc
                + if cfg.beta != 0.0 {
                    cfg.beta * c[i * n + j]
                } else {
                    0.0
                };
            let o = (i * cfg.ldc + j) * es;
            match dt {
                GemmDType::F32 => out[o..o + 4].copy_from_slice(&v.to_le_bytes()),
                GemmDType::Bf16 => out[o..o + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
    }
    Ok(())
}
