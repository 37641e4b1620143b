//! ptxsim runtime behaviour: argument checks, the memory cap, module variables, the CPU GEMM stand-in,
//! device printf, and that every shipped PTX module parses.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use rankfold_kernels::{GpuBuffer, GpuRuntime, KernelArg};
use rankfold_ptxsim::SimRuntime;

use super::{cfg, ptr, run, runtime, Rng, KERNELS};

#[test]
fn argument_mismatch_names_kernel_and_parameter() -> Result<()> {
    let (sim, rt) = runtime();
    let xb = GpuBuffer::zeroed(&rt, 64)?;
    let e = run(
        &sim,
        "sim_copy",
        cfg(16, 32),
        &[ptr(&xb), ptr(&xb), KernelArg::I64(16)],
    )
    .err()
    .context("accepted")?;
    let msg = format!("{e:#}");
    ensure!(
        msg.contains("sim_copy") && msg.contains("sim_copy_param_2"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn entry_names_and_memory_cap() -> Result<()> {
    let names = rankfold_ptxsim::entry_names(KERNELS)?;
    ensure!(
        names.contains(&"sim_call".to_string()) && !names.iter().any(|n| n.contains("sim_poly")),
        "{names:?}"
    );
    let capped: Arc<dyn GpuRuntime> = Arc::new(SimRuntime::with_memory_cap(1000));
    let _a = GpuBuffer::zeroed(&capped, 600)?;
    ensure!(
        matches!(
            GpuBuffer::zeroed(&capped, 600),
            Err(rankfold_kernels::Error::OutOfMemory { .. })
        ),
        "cap"
    );
    ensure!(
        capped.memory_info()?.total == 1000,
        "memory_info reports the cap"
    );
    Ok(())
}

#[test]
fn module_variables_constant_and_global() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(8);
    let n = 91usize;
    let x: Vec<f32> = (0..n).map(|_| rng.f32(-3.0, 3.0)).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
    let tb = GpuBuffer::zeroed(&rt, 4 * n)?;
    let args = [ptr(&xb), ptr(&ob), ptr(&tb), KernelArg::I32(n as i32)];
    run(&sim, "sim_module_vars", cfg(n, 40), &args)?;
    let coef = [0.5f32, -1.25, 2.0, 3.5];
    let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| coef[i % 4] * v).collect();
    ensure!(ob.to_vec::<f32>()? == want, "constant table");
    let mut tickets = tb.to_vec::<u32>()?;
    tickets.sort_unstable();
    ensure!(
        tickets == (7..7 + n as u32).collect::<Vec<_>>(),
        "tickets {tickets:?}"
    );
    // The module stays loaded, so a second launch continues from the counter the first one left.
    run(&sim, "sim_module_vars", cfg(n, 40), &args)?;
    ensure!(
        tb.to_vec::<u32>()?.iter().all(|&t| t >= 7 + n as u32),
        "the __device__ variable persists"
    );
    Ok(())
}

/// Naive row-major reference of `alpha·op(a)·op(b) + beta·c` in f64.
#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &[f32],
    alpha: f32,
    beta: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += f64::from(av) * f64::from(bv);
            }
            out[i * n + j] =
                (f64::from(alpha) * s + f64::from(beta) * f64::from(c[i * n + j])) as f32;
        }
    }
    out
}

#[test]
fn library_gemm_stand_in() -> Result<()> {
    use rankfold_kernels::{GemmConfig, GemmDType};
    let (_sim, rt) = runtime();
    let mut rng = Rng(9);
    for (m, n, k, ta, tb) in [
        (13usize, 7usize, 29usize, false, false),
        (5, 17, 9, true, false),
        (8, 3, 33, true, true),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.f32(-1.0, 1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.f32(-1.0, 1.0)).collect();
        let c: Vec<f32> = (0..m * n).map(|_| rng.f32(-1.0, 1.0)).collect();
        let (alpha, beta) = (0.75f32, -0.5f32);
        let want = gemm_ref(m, n, k, &a, ta, &b, tb, &c, alpha, beta);
        for dtype in [GemmDType::F32, GemmDType::Bf16] {
            let to_dev = |v: &[f32]| -> Result<GpuBuffer> {
                Ok(match dtype {
                    GemmDType::F32 => GpuBuffer::from_slice(&rt, v)?,
                    GemmDType::Bf16 => GpuBuffer::from_slice(
                        &rt,
                        &v.iter()
                            .map(|&x| half::bf16::from_f32(x))
                            .collect::<Vec<_>>(),
                    )?,
                })
            };
            let (ab, bb, cb) = (to_dev(&a)?, to_dev(&b)?, to_dev(&c)?);
            let cfg = GemmConfig {
                dtype,
                m,
                n,
                k,
                a: ab.ptr(),
                lda: if ta { m } else { k },
                trans_a: ta,
                b: bb.ptr(),
                ldb: if tb { k } else { n },
                trans_b: tb,
                c: cb.ptr(),
                ldc: n,
                alpha,
                beta,
            };
            // SAFETY: the three buffers were allocated above with exactly the sizes cfg describes.
            unsafe { rt.gemm(&cfg)? };
            let got: Vec<f32> = match dtype {
                GemmDType::F32 => cb.to_vec::<f32>()?,
                GemmDType::Bf16 => cb
                    .to_vec::<half::bf16>()?
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
            };
            // bf16 inputs and output round each value to 8 bits of mantissa.
            let tol = if dtype == GemmDType::F32 { 1e-5 } else { 3e-2 };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                ensure!(
                    (g - w).abs() <= tol * (1.0 + w.abs()) * (k as f32).sqrt(),
                    "{dtype:?} {m}x{n}x{k} [{i}]: {g} vs {w}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn every_shipped_module_parses() -> Result<()> {
    // Parsing decodes every instruction, so an instruction the simulator lacks fails here, naming its line.
    for m in rankfold_kernels::PtxModule::ALL {
        let names =
            rankfold_ptxsim::entry_names(m.ptx()).with_context(|| format!("{}.ptx", m.stem()))?;
        ensure!(!names.is_empty(), "{}.ptx has no entries", m.stem());
    }
    Ok(())
}

#[test]
fn device_printf_is_skipped() -> Result<()> {
    let (sim, rt) = runtime();
    let n = 45usize;
    let yb = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_printf",
        cfg(n, 32),
        &[ptr(&yb), KernelArg::I32(n as i32)],
    )?;
    ensure!(
        yb.to_vec::<i32>()? == (0..n as i32).map(|i| 3 * i).collect::<Vec<_>>(),
        "sim_printf"
    );
    Ok(())
}
