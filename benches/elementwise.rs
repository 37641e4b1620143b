//! Criterion bench of the elementwise kernels (`kernels/elementwise.cu`): the CPU twin, the kernels on ptxsim,
//! and on a GPU a contiguous add, a broadcast (strided) add and a unary gelu in f32 and bf16.
//!
//! Throughput is the header's traffic: binary 3·s B/elem (a broadcast input read once counts its own size),
//! unary 2·s B/elem, which `cargo xtask bench` prints as GB/s. On ptxsim the throughput is the kernel's
//! thread-instructions, so the figure is the simulator's speed. GPU timings synchronize before the clock
//! stops and flush the L2 cache before each launch.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rankfold_kernels::elementwise::{self, cpu, BinaryOp, DeviceLayout, FloatType, UnaryOp};
use rankfold_kernels::{GpuBuffer, GpuRuntime};
use rankfold_ptxsim::SimRuntime;
use rankfold_tensor::Rng;

#[path = "common/gpu.rs"]
mod gpu;
use gpu::Gpu;

const CPU_ELEMS: usize = 1 << 18;
const SIM_ELEMS: usize = 1 << 14;
/// GPU output dims [rows, cols]; the broadcast case adds a [cols] row to every row.
const GPU_DIMS: [usize; 2] = [16384, 4096];

fn random_f32(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.uniform() * 8.0 - 4.0) as f32).collect()
}

/// A GPU case: its name, the bytes it moves, and the launch.
type Case<'a> = (&'static str, usize, Box<dyn Fn() + 'a>);

fn cpu_twin(c: &mut Criterion) {
    let x = random_f32(&mut Rng::new(1), CPU_ELEMS);
    let mut group = c.benchmark_group("elementwise");
    group.throughput(Throughput::Elements(CPU_ELEMS as u64));
    let dims = [CPU_ELEMS];
    group.bench_function(BenchmarkId::new("cpu_twin_gelu", CPU_ELEMS), |bench| {
        bench.iter(|| cpu::unary(UnaryOp::Gelu, &dims, &x, &[1]).expect("valid view"))
    });
    group.bench_function(BenchmarkId::new("cpu_twin_add", CPU_ELEMS), |bench| {
        bench.iter(|| cpu::binary(BinaryOp::Add, &dims, &x, &[1], &x, &[1]).expect("valid view"))
    });
    group.finish();
}

fn sim(c: &mut Criterion) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let x = GpuBuffer::from_slice(&rt, &random_f32(&mut Rng::new(2), SIM_ELEMS)).expect("simulated input");
    let y = GpuBuffer::zeroed(&rt, 4 * SIM_ELEMS).expect("simulated output");
    let layout = DeviceLayout::contiguous(&[SIM_ELEMS], 1).expect("layout");
    let run = || elementwise::unary(&rt, UnaryOp::Gelu, FloatType::F32, &x, &y, &layout).expect("simulated gelu");
    run();
    let insts = sim.last_counters().total_thread_insts();
    let mut group = c.benchmark_group("elementwise");
    group.sample_size(10);
    group.throughput(Throughput::Elements(insts));
    group.bench_function(BenchmarkId::new("ptxsim_thread_insts_gelu", SIM_ELEMS), |bench| bench.iter(run));
    group.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(gpu) = Gpu::new("elementwise") else {
        return;
    };
    let rt = gpu.rt.clone();
    let [rows, cols] = GPU_DIMS;
    let n = rows * cols;
    let x32 = random_f32(&mut Rng::new(3), n);
    let x16: Vec<bf16> = x32.iter().map(|&v| bf16::from_f32(v)).collect();
    let dense = DeviceLayout::contiguous(&GPU_DIMS, 2).expect("layout");
    let unary_layout = DeviceLayout::contiguous(&GPU_DIMS, 1).expect("layout");
    let broadcast = DeviceLayout::new(&rt, &GPU_DIMS, &[&[cols, 1], &[0, 1]]).expect("layout");
    let mut group = c.benchmark_group("elementwise");
    group.sample_size(10);
    for dtype in [FloatType::F32, FloatType::Bf16] {
        let s = dtype.size();
        let x = match dtype {
            FloatType::F32 => GpuBuffer::from_slice(&rt, &x32),
            FloatType::Bf16 => GpuBuffer::from_slice(&rt, &x16),
        }
        .expect("input");
        let y = GpuBuffer::zeroed(&rt, n * s).expect("output");
        let cases: [Case<'_>; 3] = [
            (
                "cuda_add",
                3 * n * s,
                Box::new(|| elementwise::binary(&rt, BinaryOp::Add, dtype, &x, &x, &y, &dense).expect("add")),
            ),
            (
                "cuda_add_broadcast_row",
                2 * n * s + cols * s,
                Box::new(|| elementwise::binary(&rt, BinaryOp::Add, dtype, &x, &x, &y, &broadcast).expect("add")),
            ),
            (
                "cuda_gelu",
                2 * n * s,
                Box::new(|| elementwise::unary(&rt, UnaryOp::Gelu, dtype, &x, &y, &unary_layout).expect("gelu")),
            ),
        ];
        for (name, bytes, run) in cases {
            group.throughput(Throughput::BytesDecimal(bytes as u64));
            gpu.bench(&mut group, BenchmarkId::new(name, format!("{dtype:?}/{rows}x{cols}")), &run);
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = gpu::criterion();
    targets = cpu_twin, sim, cuda
}
criterion_main!(benches);
