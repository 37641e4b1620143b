//! `cargo xtask profile KERNEL [--shape S]`: runs one kernel on ptxsim with random inputs, prints its counters
//! beside the traffic and FLOPs the workload needs at minimum, and a roofline estimate for an H200; on a machine
//! with a CUDA GPU it also times the same launch with CUDA events.
//!
//! Workloads by family (the shape flag's form in brackets, defaults in parentheses):
//! - `gemm_*` `MxNxK` (256x256x256): A, B bf16, C bf16 or f32 per the kernel; minimum traffic
//!   `2(mk + nk) + s_c·mn`, FLOPs `2mnk`, against the bf16 tensor-core peak.
//! - `softmax_*` `ROWSxCOLS` (4096x1024, or x4096 for the `_long` kernels): minimum `2·rows·cols·s` forward,
//!   `3·rows·cols·s` backward; FLOPs as counted by the simulator; f32 peak.
//! - `elementwise_*` `N` (1048576): contiguous inputs; minimum `(inputs + 1)·n·s`.
//! - `nf4_*`: see `profile_nf4.rs` (the GEMV report adds a line for its weight stream alone).
//!
//! The simulator counts every global load, so a tiled kernel's re-reads of an operand (which a GPU mostly serves
//! from L2) show up as traffic above the minimum; the report prints that ratio, and the roofline uses the minimum
//! (DRAM) bytes.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use half::bf16;
use rankfold_kernels::elementwise::{self, BinaryOp, DeviceLayout, FloatType, UnaryOp};
use rankfold_kernels::gemm::{self, GemmLayout, GemmParams};
use rankfold_kernels::softmax::{self, SoftmaxShape};
use rankfold_kernels::{CudaRuntime, GpuBuffer, GpuRuntime, KernelId, Launch, PtxModule};
use rankfold_ptxsim::{Counters, SimRuntime};

/// H200 figures the roofline uses (docs/reference.md, "Performance anchors"): HBM3e bandwidth and dense peaks.
const H200_BYTES_PER_S: f64 = 4.3e12;
const H200_BF16_FLOPS: f64 = 790e12;
const H200_F32_FLOPS: f64 = 67e12;

/// The options of `cargo xtask profile`.
#[derive(Debug)]
pub(crate) struct Options {
    kernel: String,
    shape: Option<String>,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Self> {
        let mut kernel = None;
        let mut shape = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--shape" => shape = Some(crate::flag_value("--shape", &mut it)?),
                flag if flag.starts_with('-') => bail!("profile: unknown flag `{flag}`"),
                name if kernel.is_none() => kernel = Some(name.to_string()),
                extra => bail!("profile: unexpected argument `{extra}`"),
            }
        }
        let kernel = kernel.context("profile needs a kernel name (e.g. gemm_nt_bf16); see `cargo xtask help`")?;
        Ok(Self { kernel, shape })
    }
}

/// What one profiled launch needs at minimum, and the peak it is measured against.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) kernel: KernelId,
    pub(crate) shape: String,
    /// Bytes the workload must read and write at least (each input once, each output once).
    pub(crate) min_bytes: u64,
    /// FLOPs by the workload's formula, when it has one (else the simulator's count is used).
    pub(crate) flops: Option<u64>,
    /// The dense peak it runs against (bf16 tensor cores or f32).
    pub(crate) peak_flops: f64,
}

/// A profile: the workload, the simulated counters, and the CUDA time when a GPU was there.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) work: Workload,
    pub(crate) counters: Counters,
    pub(crate) launch: Launch,
    pub(crate) cuda_ms: Option<f64>,
}

impl Report {
    /// Simulated global bytes (read + written) over the minimum.
    pub(crate) fn traffic_ratio(&self) -> f64 {
        let sim = self.counters.global_read_bytes + self.counters.global_write_bytes;
        sim as f64 / self.work.min_bytes.max(1) as f64
    }

    fn flops(&self) -> u64 {
        self.work.flops.unwrap_or(self.counters.flops)
    }
}

pub(crate) fn run(opts: Options) -> Result<()> {
    let kernel = find_kernel(&opts.kernel)?;
    let sim = Arc::new(SimRuntime::new());
    let mut report = profile(&sim, kernel, opts.shape.as_deref())?;
    match CudaRuntime::new(0) {
        Ok(cuda) => {
            let cuda = Arc::new(cuda);
            let dyn_cuda: Arc<dyn GpuRuntime> = cuda.clone();
            // The same workload on the GPU: the launch is rebuilt there with the GPU's own buffers.
            let (launch, _buffers) = build(&dyn_cuda, kernel, &report.work.shape)?;
            // SAFETY: `build` made the launch through the family's validated launcher, whose checks keep every
            // access inside the buffers, which `_buffers` keeps alive until after the timing.
            let ms = unsafe { cuda.time_launch(&launch, 20)? };
            report.cuda_ms = Some(ms);
        }
        Err(e) => eprintln!("profile: no CUDA timing ({e})"),
    }
    print!("{}", render(&report));
    Ok(())
}

/// Runs the kernel once on ptxsim and gathers its counters.
pub(crate) fn profile(sim: &Arc<SimRuntime>, kernel: KernelId, shape: Option<&str>) -> Result<Report> {
    let shape = shape.map(str::to_string).unwrap_or_else(|| default_shape(kernel).to_string());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let (launch, buffers) = build(&rt, kernel, &shape)?;
    sim.reset_counters();
    // SAFETY: `build` made the launch through the family's validated launcher, whose checks keep every access
    // inside the buffers, which stay alive until after the launch.
    unsafe { rt.launch(&launch)? };
    rt.synchronize()?;
    drop(buffers);
    let counters = sim.last_counters();
    let work = workload(kernel, &shape)?;
    Ok(Report { work, counters, launch, cuda_ms: None })
}

/// The kernel named `name`: an exact `KernelId` name, or a family stem (its first kernel).
pub(crate) fn find_kernel(name: &str) -> Result<KernelId> {
    if let Some(&k) = KernelId::ALL.iter().find(|k| k.name() == name) {
        return Ok(k);
    }
    let aliases = [("gemm", KernelId::GemmNtBf16), ("gemm_bf16", KernelId::GemmNtBf16)];
    if let Some(&(_, k)) = aliases.iter().find(|(a, _)| *a == name) {
        return Ok(k);
    }
    if let Some(&k) = KernelId::ALL.iter().find(|k| k.module().stem() == name) {
        return Ok(k);
    }
    let mut names: Vec<&str> = KernelId::ALL.iter().map(|k| k.name()).filter(|n| n.contains(name)).collect();
    if names.is_empty() {
        names = KernelId::ALL.iter().map(|k| k.name()).collect();
    }
    bail!("no kernel named `{name}`; candidates: {}", names.join(", "))
}

fn default_shape(kernel: KernelId) -> &'static str {
    match kernel.module() {
        PtxModule::Gemm => "256x256x256",
        PtxModule::Softmax if kernel.name().contains("long") => "512x4096",
        PtxModule::Softmax => "4096x1024",
        PtxModule::Nf4 => crate::profile_nf4::default_shape(kernel),
        _ => "1048576",
    }
}

/// Parses `AxBx…` into exactly `n` positive numbers.
pub(crate) fn dims(shape: &str, n: usize, form: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = shape
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("shape `{shape}` is not of the form {form}"))?;
    if v.len() != n || v.contains(&0) {
        bail!("shape `{shape}` is not of the form {form} with positive numbers");
    }
    Ok(v)
}

fn gemm_of(kernel: KernelId) -> Result<(GemmLayout, FloatType)> {
    for layout in [GemmLayout::Nt, GemmLayout::Nn] {
        for out in [FloatType::Bf16, FloatType::F32] {
            if gemm::kernel(layout, out) == kernel {
                return Ok((layout, out));
            }
        }
    }
    bail!("{} is not a GEMM kernel", kernel.name())
}

/// Which softmax kernel: its dtype and whether it is the backward one.
fn softmax_of(kernel: KernelId) -> Result<(FloatType, bool)> {
    for dtype in [FloatType::F32, FloatType::Bf16] {
        for cols in [1, softmax::LONG_ROW + 1] {
            if softmax::forward_kernel(dtype, cols) == kernel {
                return Ok((dtype, false));
            }
            if softmax::backward_kernel(dtype, cols) == kernel {
                return Ok((dtype, true));
            }
        }
    }
    bail!("{} is not a softmax kernel", kernel.name())
}

enum Elementwise {
    Binary(BinaryOp),
    Unary(UnaryOp),
}

fn elementwise_of(kernel: KernelId) -> Result<(Elementwise, FloatType)> {
    for dtype in [FloatType::F32, FloatType::Bf16] {
        if let Some(&op) = BinaryOp::ALL.iter().find(|op| op.kernel(dtype) == kernel) {
            return Ok((Elementwise::Binary(op), dtype));
        }
        if let Some(&op) = UnaryOp::ALL.iter().find(|op| op.kernel(dtype) == kernel) {
            return Ok((Elementwise::Unary(op), dtype));
        }
    }
    bail!("{} is not an elementwise kernel", kernel.name())
}

/// The workload's minimum traffic and FLOPs.
pub(crate) fn workload(kernel: KernelId, shape: &str) -> Result<Workload> {
    let (min_bytes, flops, peak_flops) = match kernel.module() {
        PtxModule::Gemm => {
            let (_, out) = gemm_of(kernel)?;
            let d = dims(shape, 3, "MxNxK")?;
            let (m, n, k) = (d[0] as u64, d[1] as u64, d[2] as u64);
            (2 * (m * k + n * k) + out.size() as u64 * m * n, Some(2 * m * n * k), H200_BF16_FLOPS)
        }
        PtxModule::Softmax => {
            let (dtype, backward) = softmax_of(kernel)?;
            let d = dims(shape, 2, "ROWSxCOLS")?;
            let tensors = if backward { 3 } else { 2 };
            (tensors * (d[0] * d[1] * dtype.size()) as u64, None, H200_F32_FLOPS)
        }
        PtxModule::Elementwise => {
            let (op, dtype) = elementwise_of(kernel)?;
            let n = dims(shape, 1, "N")?[0] as u64;
            let tensors = match op {
                Elementwise::Binary(_) => 3,
                Elementwise::Unary(_) => 2,
            };
            (tensors * n * dtype.size() as u64, None, H200_F32_FLOPS)
        }
        PtxModule::Nf4 => {
            let (bytes, flops) = crate::profile_nf4::workload(kernel, shape)?;
            (bytes, flops, H200_F32_FLOPS)
        }
        #[allow(unreachable_patterns)]
        other => bail!("profile has no workload for the {} family yet", other.stem()),
    };
    Ok(Workload { kernel, shape: shape.to_string(), min_bytes, flops, peak_flops })
}

/// Random bf16 or f32 contents for `n` elements of `dtype`, from a fixed seed.
fn random_buffer(rt: &Arc<dyn GpuRuntime>, dtype: FloatType, n: usize, seed: u64) -> Result<GpuBuffer> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    Ok(match dtype {
        FloatType::F32 => GpuBuffer::from_slice(rt, &(0..n).map(|_| next()).collect::<Vec<f32>>())?,
        FloatType::Bf16 => GpuBuffer::from_slice(rt, &(0..n).map(|_| bf16::from_f32(next())).collect::<Vec<bf16>>())?,
    })
}

/// Allocates random inputs for the workload on `rt` and builds its launch through the family's launcher.
/// The returned buffers must outlive the launch.
fn build(rt: &Arc<dyn GpuRuntime>, kernel: KernelId, shape: &str) -> Result<(Launch, Vec<GpuBuffer>)> {
    match kernel.module() {
        PtxModule::Gemm => {
            let (layout, out) = gemm_of(kernel)?;
            let d = dims(shape, 3, "MxNxK")?;
            let p = GemmParams::packed(layout, d[0], d[1], d[2]);
            let a = random_buffer(rt, FloatType::Bf16, d[0] * d[2], 1)?;
            let b = random_buffer(rt, FloatType::Bf16, d[1] * d[2], 2)?;
            let c = GpuBuffer::zeroed(rt, d[0] * d[1] * out.size())?;
            let launch = gemm::launch::gemm_launch(rt, &p, out, &a, &b, &c)?;
            Ok((launch, vec![a, b, c]))
        }
        PtxModule::Softmax => {
            let (dtype, backward) = softmax_of(kernel)?;
            let d = dims(shape, 2, "ROWSxCOLS")?;
            let s = SoftmaxShape { rows: d[0], cols: d[1] };
            if softmax::forward_kernel(dtype, s.cols) != kernel && softmax::backward_kernel(dtype, s.cols) != kernel {
                bail!("{} does not handle rows of {} (the launcher picks by length)", kernel.name(), s.cols);
            }
            let n = s.rows * s.cols;
            let x = random_buffer(rt, dtype, n, 3)?;
            let y = random_buffer(rt, dtype, n, 4)?;
            if backward {
                let dx = GpuBuffer::zeroed(rt, n * dtype.size())?;
                let launch = softmax::launch::backward_launch(rt, dtype, s, &y, &x, &dx)?;
                Ok((launch, vec![x, y, dx]))
            } else {
                let launch = softmax::launch::forward_launch(rt, dtype, s, &x, &y)?;
                Ok((launch, vec![x, y]))
            }
        }
        PtxModule::Elementwise => {
            let (op, dtype) = elementwise_of(kernel)?;
            let n = dims(shape, 1, "N")?[0];
            let y = GpuBuffer::zeroed(rt, n * dtype.size())?;
            // Positive inputs keep log/sqrt/rsqrt on their domain.
            let a = random_buffer(rt, dtype, n, 5)?;
            match op {
                Elementwise::Binary(op) => {
                    let b = random_buffer(rt, dtype, n, 6)?;
                    let layout = DeviceLayout::contiguous(&[n], 2)?;
                    let launch = elementwise::launch::binary_launch(rt, op, dtype, &a, &b, &y, &layout)?;
                    Ok((launch, vec![a, b, y]))
                }
                Elementwise::Unary(op) => {
                    let layout = DeviceLayout::contiguous(&[n], 1)?;
                    let launch = elementwise::launch::unary_launch(rt, op, dtype, &a, &y, &layout)?;
                    Ok((launch, vec![a, y]))
                }
            }
        }
        PtxModule::Nf4 => crate::profile_nf4::build(rt, kernel, shape),
        #[allow(unreachable_patterns)]
        other => bail!("profile has no workload for the {} family yet", other.stem()),
    }
}

fn human_bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The printed report.
pub(crate) fn render(r: &Report) -> String {
    let c = &r.counters;
    let cfg = r.launch.config;
    let mut s = String::new();
    let _ = writeln!(s, "kernel {}  shape {}  (ptxsim)", r.work.kernel.name(), r.work.shape);
    let _ = writeln!(
        s,
        "launch grid ({}, {}, {})  block ({}, {}, {})  dynamic shared {} B\n",
        cfg.grid.x, cfg.grid.y, cfg.grid.z, cfg.block.x, cfg.block.y, cfg.block.z, cfg.shared_bytes
    );
    let _ = writeln!(s, "{c}\n");
    let sim_bytes = (c.global_read_bytes + c.global_write_bytes) as f64;
    let min = r.work.min_bytes as f64;
    let sector_bytes = c.global_sectors as f64 * 32.0;
    let _ = writeln!(
        s,
        "traffic   minimum {} | simulated {} = {:.2}× minimum (re-reads a GPU serves from L2 count here)",
        human_bytes(min),
        human_bytes(sim_bytes),
        r.traffic_ratio()
    );
    if c.global_sectors > 0 {
        let _ = writeln!(
            s,
            "sectors   {} × 32 B = {} → {:.0}% of the fetched bytes are used (coalescing)",
            c.global_sectors,
            human_bytes(sector_bytes),
            100.0 * sim_bytes / sector_bytes
        );
    }
    if let Some(line) = crate::profile_nf4::weight_stream_line(r.work.kernel, &r.work.shape, c) {
        s.push_str(&line);
    }
    let flops = r.flops() as f64;
    let t_mem = min / H200_BYTES_PER_S;
    let t_flop = flops / r.work.peak_flops;
    let bound = if t_mem >= t_flop { "memory-bound" } else { "compute-bound" };
    let _ = writeln!(
        s,
        "roofline  H200: {} / 4.3 TB/s = {:.2} µs; {:.3e} FLOP / {:.0} TFLOP/s = {:.2} µs → {bound}, ≥ {:.2} µs; \
         intensity {:.1} FLOP/B (ridge {:.0})",
        human_bytes(min),
        t_mem * 1e6,
        flops,
        r.work.peak_flops / 1e12,
        t_flop * 1e6,
        t_mem.max(t_flop) * 1e6,
        flops / min.max(1.0),
        r.work.peak_flops / H200_BYTES_PER_S
    );
    if let Some(ms) = r.cuda_ms {
        let _ = writeln!(
            s,
            "cuda      {:.2} µs per launch (CUDA events, mean of 20): {:.0} GB/s of the minimum, {:.1} TFLOP/s, \
             {:.0}% of the roofline bound",
            ms * 1e3,
            min / (ms * 1e-3) / 1e9,
            flops / (ms * 1e-3) / 1e12,
            100.0 * t_mem.max(t_flop) / (ms * 1e-3)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GEMM's simulated traffic must sit within a small factor of the minimum: each 128×128 CTA tile reads its
    /// A rows once per n-tile and its B rows once per m-tile, so at 256³ (2×2 tiles) the inputs are read twice
    /// and the output written once: (2·2·(mk + nk) + 2mn) / (2(mk + nk) + 2mn) = 5/3.
    #[test]
    fn gemm_traffic_is_near_the_minimum() -> Result<()> {
        let rt = Arc::new(SimRuntime::new());
        let r = profile(&rt, find_kernel("gemm_bf16")?, Some("256x256x256"))?;
        let ratio = r.traffic_ratio();
        assert!((ratio - 5.0 / 3.0).abs() < 1e-9, "traffic ratio {ratio:.3}:\n{}", render(&r));
        assert_eq!(r.counters.mma, 256 * 256 * 256 / (16 * 8 * 16), "one mma per 16×8×16 block of the product");
        assert_eq!(r.work.flops, Some(2 * 256 * 256 * 256));
        // Loads are whole 16-byte cp.async chunks (fully used sectors); the epilogue stores each accumulator
        // fragment row as 16 bytes of a 32-byte sector (bf16 C), so at 256³ the sectors are used to
        // (512 KiB + 128 KiB) / (512 KiB + 256 KiB) = 5/6.
        let used = (r.counters.global_read_bytes + r.counters.global_write_bytes) as f64;
        let efficiency = used / (r.counters.global_sectors as f64 * 32.0);
        assert!((efficiency - 5.0 / 6.0).abs() < 1e-9, "sector efficiency {efficiency}:\n{}", render(&r));
        Ok(())
    }

    /// A unary elementwise kernel moves exactly its input and output once.
    #[test]
    fn elementwise_traffic_is_the_minimum() -> Result<()> {
        let rt = Arc::new(SimRuntime::new());
        let r = profile(&rt, KernelId::ElementwiseExpF32, Some("10007"))?;
        assert_eq!(r.counters.global_read_bytes + r.counters.global_write_bytes, r.work.min_bytes);
        Ok(())
    }

    #[test]
    fn unknown_kernel_lists_candidates() {
        let err = find_kernel("softmax_nonexistent").unwrap_err().to_string();
        assert!(err.contains("softmax_forward_f32"), "{err}");
    }
}
