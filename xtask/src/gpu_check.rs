//! `cargo xtask gpu-check`: runs the kernel tests and benches on a real GPU through `CudaRuntime`.
//!
//! It fails, rather than skips, when no GPU can be opened. Otherwise it (1) checks the runtime itself: copies,
//! memset and the cuBLAS GEMM (f32 and bf16, all transposes, awkward shapes) against a CPU loop; (2) runs the
//! kernel integration tests with `RANKFOLD_GPU_CHECK=1`, which adds CUDA to the runtimes of
//! `tests/it/gpu.rs::runtimes()`; (3) runs the kernel benches in criterion's quick mode with the filter
//! `cuda|cublas` (the benches add CUDA rows whenever a device opens, and cuBLAS baselines beside them), and
//! prints one time and throughput per bench.
//! It needs neither the network nor the NVRTC toolchain: the PTX is committed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rankfold_kernels::{CudaRuntime, GemmConfig, GemmDType, GpuBuffer, GpuRuntime};

/// The integration-test filters that select the kernel tests.
const TEST_FILTERS: [&str; 5] = ["elementwise", "softmax", "gemm", "ptxsim", "nf4_gpu"];
/// The bench files (`benches/<name>.rs`) of the kernel families, run when present.
const BENCHES: [&str; 4] = ["elementwise", "softmax", "gemm", "nf4_gpu"];
/// The criterion filter (a regex) that selects the GPU rows of those benches.
const BENCH_FILTER: &str = "cuda|cublas";

/// `cargo xtask gpu-check`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("gpu-check takes no arguments, got `{extra}`");
    }
    let started = Instant::now();
    {
        let rt = CudaRuntime::new(0).map_err(|e| {
            anyhow::anyhow!("gpu-check needs a CUDA GPU and found none: {e}\n(gpu-check fails rather than skips)")
        })?;
        let info = rt.memory_info()?;
        eprintln!(
            "gpu-check: {} ({:.1} of {:.1} GiB free)",
            rt.name(),
            gib(info.free),
            gib(info.total)
        );
        let rt: Arc<dyn GpuRuntime> = Arc::new(rt);
        runtime_smoke(&rt).context("the CudaRuntime self-check failed")?;
        eprintln!("gpu-check: runtime self-check ok (copies, memset, cuBLAS f32/bf16 GEMM)");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "gpu-check: cargo test --release --test it -- {}",
        TEST_FILTERS.join(" ")
    );
    let status = Command::new(&cargo)
        .current_dir(root)
        .env("RANKFOLD_GPU_CHECK", "1")
        .args(["test", "--release", "--test", "it", "--"])
        .args(TEST_FILTERS)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the kernel tests failed on CUDA ({status})");
    }
    let mut rows = Vec::new();
    for bench in BENCHES {
        if !root.join("benches").join(format!("{bench}.rs")).is_file() {
            eprintln!("gpu-check: benches/{bench}.rs does not exist yet; skipped");
            continue;
        }
        eprintln!("gpu-check: cargo bench --bench {bench} -- --quick '{BENCH_FILTER}'");
        let out = Command::new(&cargo)
            .current_dir(root)
            .env("RANKFOLD_GPU_CHECK", "1")
            .args(["bench", "--bench", bench, "--", "--quick", BENCH_FILTER])
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo bench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "benches/{bench}.rs failed on CUDA ({}):\n{stdout}",
                out.status
            );
        }
        rows.extend(criterion_times(&stdout));
    }
    println!("{}", time_table(&rows));
    eprintln!(
        "gpu-check: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Checks copies, memset and the library GEMM of `rt` against the host.
fn runtime_smoke(rt: &Arc<dyn GpuRuntime>) -> Result<()> {
    let mut rng = Lcg(0x5eed);
    let data: Vec<f32> = (0..1003).map(|_| rng.next()).collect();
    let a = GpuBuffer::from_slice(rt, &data)?;
    if a.to_vec::<f32>()? != data {
        bail!("host → device → host copy changed the data");
    }
    let b = GpuBuffer::zeroed(rt, a.len())?;
    // SAFETY: both buffers are live and `a.len()` bytes long.
    unsafe { rt.copy_d2d(b.ptr(), a.ptr(), a.len())? };
    if b.to_vec::<f32>()? != data {
        bail!("device → device copy changed the data");
    }
    // SAFETY: bytes 8..8+40 lie inside `b` (4012 bytes).
    unsafe { rt.memset(b.ptr().offset(8), 0xff, 40)? };
    let bytes = b.to_vec::<u8>()?;
    if bytes[8..48].iter().any(|&x| x != 0xff) || bytes[..8] != bytemuck_bytes(&data)[..8] {
        bail!("memset wrote outside or missed its range");
    }
    for dtype in [GemmDType::F32, GemmDType::Bf16] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            gemm_smoke(rt, &mut rng, dtype, trans_a, trans_b)?;
        }
    }
    Ok(())
}

/// One GEMM of awkward shape with padded row strides, compared to an f64 loop on the same (rounded) inputs.
fn gemm_smoke(
    rt: &Arc<dyn GpuRuntime>,
    rng: &mut Lcg,
    dtype: GemmDType,
    trans_a: bool,
    trans_b: bool,
) -> Result<()> {
    let (m, n, k) = (37, 29, 53);
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let (lda, ldb, ldc) = (a_cols + 3, b_cols + 1, n + 2);
    let round = |x: f32| {
        if dtype == GemmDType::Bf16 {
            bf16_to_f32(f32_to_bf16(x))
        } else {
            x
        }
    };
    let a: Vec<f32> = (0..a_rows * lda).map(|_| round(rng.next())).collect();
    let b: Vec<f32> = (0..b_rows * ldb).map(|_| round(rng.next())).collect();
    let c0: Vec<f32> = (0..m * ldc).map(|_| round(rng.next())).collect();
    let (alpha, beta) = (0.75f32, 0.5f32);
    let at = |i: usize, p: usize| {
        if trans_a {
            a[p * lda + i]
        } else {
            a[i * lda + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if trans_b {
            b[j * ldb + p]
        } else {
            b[p * ldb + j]
        }
    };
    let upload = |v: &[f32]| -> Result<GpuBuffer> {
        Ok(match dtype {
            GemmDType::F32 => GpuBuffer::from_slice(rt, v)?,
            GemmDType::Bf16 => {
                GpuBuffer::from_slice(rt, &v.iter().map(|&x| f32_to_bf16(x)).collect::<Vec<u16>>())?
            }
        })
    };
    let (da, db, dc) = (upload(&a)?, upload(&b)?, upload(&c0)?);
    let cfg = GemmConfig {
        dtype,
        m,
        n,
        k,
        a: da.ptr(),
        lda,
        trans_a,
        b: db.ptr(),
        ldb,
        trans_b,
        c: dc.ptr(),
        ldc,
        alpha,
        beta,
    };
    // SAFETY: the three buffers hold the matrices `cfg` describes (sizes from the same shapes and strides).
    unsafe { rt.gemm(&cfg)? };
    let got: Vec<f32> = match dtype {
        GemmDType::F32 => dc.to_vec::<f32>()?,
        GemmDType::Bf16 => dc.to_vec::<u16>()?.into_iter().map(bf16_to_f32).collect(),
    };
    let (mut err, mut norm) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..ldc {
            let want = if j < n {
                let dot: f64 = (0..k)
                    .map(|p| f64::from(at(i, p)) * f64::from(bt(p, j)))
                    .sum();
                f64::from(alpha) * dot + f64::from(beta) * f64::from(c0[i * ldc + j])
            } else {
                f64::from(c0[i * ldc + j])
            };
            err += (f64::from(got[i * ldc + j]) - want).powi(2);
            norm += want * want;
        }
    }
    let rel = (err / norm.max(1e-30)).sqrt();
    let tol = if dtype == GemmDType::Bf16 { 1e-2 } else { 1e-5 };
    if rel > tol {
        bail!("cuBLAS {dtype:?} GEMM (trans_a {trans_a}, trans_b {trans_b}): relative error {rel:.2e} > {tol:.0e}");
    }
    Ok(())
}

/// The bytes of an f32 slice (little-endian, as the device stores them).
fn bytemuck_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Rounds to the nearest bf16, ties to even (NaN is not produced by the inputs used here).
fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    ((bits + round) >> 16) as u16
}

fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// A small deterministic generator of values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// One criterion result: the bench id, its time estimate and, when the bench sets one, its throughput.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BenchRow {
    id: String,
    time: String,
    throughput: Option<String>,
}

/// The results in criterion's stdout: `ID  time: [low est high]` (a long id stands on its own line before
/// the `time:` line), optionally followed by `thrpt: [low est high]`.
fn criterion_times(stdout: &str) -> Vec<BenchRow> {
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut last_id = String::new();
    for line in stdout.lines() {
        if let Some((_, after)) = line.split_once("thrpt:") {
            if let Some(row) = rows.last_mut() {
                row.throughput = Some(middle_estimate(after));
            }
            continue;
        }
        let Some((before, after)) = line.split_once("time:") else {
            if !line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
                last_id = line.trim().to_string();
            }
            continue;
        };
        let id = if before.trim().is_empty() {
            last_id.clone()
        } else {
            before.trim().to_string()
        };
        rows.push(BenchRow {
            id,
            time: middle_estimate(after),
            throughput: None,
        });
    }
    rows
}

/// The point estimate of `[low est high]`, each a number and a unit; the whole text if it has another form.
fn middle_estimate(text: &str) -> String {
    let inside = text.trim().trim_start_matches('[').trim_end_matches(']');
    let words: Vec<&str> = inside.split_whitespace().collect();
    if words.len() == 6 {
        format!("{} {}", words[2], words[3])
    } else {
        inside.to_string()
    }
}

/// One line per bench: id, time and throughput.
fn time_table(rows: &[BenchRow]) -> String {
    if rows.is_empty() {
        return "gpu-check: no CUDA bench rows (no kernel bench id matched `cuda|cublas`)".into();
    }
    let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(0).max(5);
    let mut s = format!("{:<width$}  {:>12}  throughput\n", "bench", "time");
    for r in rows {
        let thrpt = r.throughput.as_deref().unwrap_or("");
        s.push_str(&format!("{:<width$}  {:>12}  {thrpt}\n", r.id, r.time));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_times_on_one_and_two_lines() {
        let out = "gemm/cuda_nt_bf16/1024x1000x512\n                        time:   [10.1 µs 10.2 µs 10.4 µs]\n\
                   \x20                       thrpt:  [1.0 TFLOP/s 1.1 TFLOP/s 1.2 TFLOP/s]\n\
                   gemm/cublas/256   time:   [1.00 ms 1.10 ms 1.20 ms]\n";
        let rows = criterion_times(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "gemm/cuda_nt_bf16/1024x1000x512");
        assert_eq!(rows[0].time, "10.2 µs");
        assert_eq!(rows[0].throughput.as_deref(), Some("1.1 TFLOP/s"));
        assert_eq!(
            (rows[1].id.as_str(), rows[1].time.as_str()),
            ("gemm/cublas/256", "1.10 ms")
        );
        assert_eq!(rows[1].throughput, None);
        assert!(time_table(&rows).contains("1.1 TFLOP/s"));
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        for x in [1.0f32, -2.5, 3.3, 1e-3, 65504.0] {
            let r = bf16_to_f32(f32_to_bf16(x));
            assert!(((r - x) / x).abs() <= 1.0 / 256.0, "{x} → {r}");
        }
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7; ties go to the even mantissa (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 4.0 / 256.0
        );
    }

    #[test]
    fn no_gpu_here_means_an_error() {
        // On a machine without a driver, gpu-check must fail (not skip) before running anything else.
        if let Err(e) = CudaRuntime::new(0) {
            let err =
                run(Path::new("/nonexistent"), &[]).expect_err("gpu-check without a GPU fails");
            assert!(
                err.to_string().contains("found none"),
                "{err}; the runtime said {e}"
            );
        }
    }
}
