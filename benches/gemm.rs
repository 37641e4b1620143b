//! Criterion bench of the tiled bf16 GEMM (`kernels/gemm.cu`): its CPU twin, the kernel on ptxsim, and on a GPU
//! the kernel against cuBLAS (`GpuRuntime::gemm`) on the same operands.
//!
//! One product costs 2·m·n·k FLOPs (the header's FLOP line); criterion records that as elements, which
//! `cargo xtask bench` turns into FLOP/s. On ptxsim the throughput is the kernel's thread-instructions instead,
//! so the figure is the simulator's speed, not the kernel's. GPU timings synchronize before the clock stops and
//! flush the L2 cache (a 256 MiB memset) before each launch, outside the timed region.

use std::sync::Arc;

use anyhow::Result;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rankfold_kernels::elementwise::FloatType;
use rankfold_kernels::gemm::{self, cpu, GemmLayout, GemmParams};
use rankfold_kernels::{GemmConfig, GemmDType, GpuBuffer, GpuRuntime};
use rankfold_ptxsim::SimRuntime;
use rankfold_tensor::Rng;

#[path = "common/gpu.rs"]
mod gpu;
use gpu::Gpu;

/// GPU shapes (m, n, k): square, a Llama-like projection, and a tall-skinny LoRA-sized one.
const GPU_SHAPES: [(usize, usize, usize); 3] = [(4096, 4096, 4096), (8192, 2048, 2048), (4096, 576, 576)];
/// The CPU twin's shape (a triple loop: kept small).
const CPU_SHAPE: (usize, usize, usize) = (96, 96, 96);
/// The simulated shape: two CTAs along n, two k tiles.
const SIM_SHAPE: (usize, usize, usize) = (128, 256, 64);

fn random_bf16(rng: &mut Rng, n: usize) -> Vec<bf16> {
    (0..n).map(|_| bf16::from_f32((rng.uniform() * 2.0 - 1.0) as f32)).collect()
}

/// Device operands A [m, k], B [n, k] and C [m, n] bf16 for the "nt" layout.
fn operands(rt: &Arc<dyn GpuRuntime>, rng: &mut Rng, (m, n, k): (usize, usize, usize)) -> Result<[GpuBuffer; 3]> {
    Ok([
        GpuBuffer::from_slice(rt, &random_bf16(rng, m * k))?,
        GpuBuffer::from_slice(rt, &random_bf16(rng, n * k))?,
        GpuBuffer::zeroed(rt, 2 * m * n)?,
    ])
}

fn cpu_twin(c: &mut Criterion) {
    let (m, n, k) = CPU_SHAPE;
    let mut rng = Rng::new(1);
    let (a, b) = (random_bf16(&mut rng, m * k), random_bf16(&mut rng, n * k));
    let p = GemmParams::packed(GemmLayout::Nt, m, n, k);
    let mut out = vec![0.0f32; m * n];
    let mut group = c.benchmark_group("gemm");
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    group.bench_function(BenchmarkId::new("cpu_twin", format!("{m}x{n}x{k}")), |bench| {
        bench.iter(|| cpu::gemm(&p, &a, &b, &mut out).expect("valid shapes"))
    });
    group.finish();
}

fn sim(c: &mut Criterion) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let (m, n, k) = SIM_SHAPE;
    let [a, b, out] = operands(&rt, &mut Rng::new(2), SIM_SHAPE).expect("simulated operands");
    let p = GemmParams::packed(GemmLayout::Nt, m, n, k);
    // One counted launch gives the thread-instructions per launch that the throughput is quoted in.
    gemm::gemm(&rt, &p, FloatType::Bf16, &a, &b, &out).expect("simulated gemm");
    let insts = sim.last_counters().total_thread_insts();
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    group.throughput(Throughput::Elements(insts));
    group.bench_function(BenchmarkId::new("ptxsim_thread_insts", format!("{m}x{n}x{k}")), |bench| {
        bench.iter(|| gemm::gemm(&rt, &p, FloatType::Bf16, &a, &b, &out).expect("simulated gemm"))
    });
    group.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(gpu) = Gpu::new("gemm") else {
        return;
    };
    let rt = gpu.rt.clone();
    let mut rng = Rng::new(3);
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    for (m, n, k) in GPU_SHAPES {
        let [a, b, out] = operands(&rt, &mut rng, (m, n, k)).expect("device operands");
        let p = GemmParams::packed(GemmLayout::Nt, m, n, k);
        let blas = GemmConfig {
            dtype: GemmDType::Bf16,
            m,
            n,
            k,
            a: a.ptr(),
            lda: k,
            trans_a: false,
            b: b.ptr(),
            ldb: k,
            trans_b: true,
            c: out.ptr(),
            ldc: n,
            alpha: 1.0,
            beta: 0.0,
        };
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let ours = || gemm::gemm(&rt, &p, FloatType::Bf16, &a, &b, &out).expect("gemm kernel");
        // SAFETY: a, b and out were allocated for exactly these shapes and strides on this runtime.
        let cublas = || unsafe { rt.gemm(&blas) }.expect("cuBLAS gemm");
        let shape = format!("{m}x{n}x{k}");
        gpu.bench(&mut group, BenchmarkId::new("cuda_nt_bf16", &shape), &ours);
        gpu.bench(&mut group, BenchmarkId::new("cublas_bf16", &shape), &cublas);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = gpu::criterion();
    targets = cpu_twin, sim, cuda
}
criterion_main!(benches);
