//! Criterion bench of row softmax (`kernels/softmax.cu`), forward and backward: the CPU twin, the kernel on
//! ptxsim, and on a GPU the kernel in f32 and bf16.
//!
//! Throughput is the header's minimum traffic: forward 2·s B/elem, backward 3·s B/elem (s = element size),
//! which `cargo xtask bench` prints as GB/s. On ptxsim the throughput is the kernel's thread-instructions, so
//! the figure is the simulator's speed. GPU timings synchronize before the clock stops and flush the L2 cache.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rankfold_kernels::elementwise::FloatType;
use rankfold_kernels::softmax::{self, cpu, SoftmaxShape};
use rankfold_kernels::{GpuBuffer, GpuRuntime};
use rankfold_ptxsim::SimRuntime;
use rankfold_tensor::Rng;

#[path = "common/gpu.rs"]
mod gpu;
use gpu::Gpu;

const CPU_SHAPE: SoftmaxShape = SoftmaxShape { rows: 256, cols: 1024 };
const SIM_SHAPE: SoftmaxShape = SoftmaxShape { rows: 64, cols: 512 };
/// Attention-like rows (Llama-sized context) and vocabulary-sized rows.
const GPU_SHAPES: [SoftmaxShape; 2] =
    [SoftmaxShape { rows: 65536, cols: 2048 }, SoftmaxShape { rows: 2048, cols: 32768 }];

fn random_f32(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.uniform() * 8.0 - 4.0) as f32).collect()
}

/// A GPU pass: its name, the bytes it moves per element byte, and the launch.
type Pass<'a> = (&'static str, u64, Box<dyn Fn() + 'a>);

fn cpu_twin(c: &mut Criterion) {
    let s = CPU_SHAPE;
    let x = random_f32(&mut Rng::new(1), s.rows * s.cols);
    let mut group = c.benchmark_group("softmax_kernel");
    group.throughput(Throughput::Elements((s.rows * s.cols) as u64));
    group.bench_function(BenchmarkId::new("cpu_twin_forward", format!("{}x{}", s.rows, s.cols)), |bench| {
        bench.iter(|| cpu::forward(s, &x).expect("valid shape"))
    });
    group.finish();
}

fn sim(c: &mut Criterion) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let s = SIM_SHAPE;
    let x = GpuBuffer::from_slice(&rt, &random_f32(&mut Rng::new(2), s.rows * s.cols)).expect("simulated input");
    let y = GpuBuffer::zeroed(&rt, 4 * s.rows * s.cols).expect("simulated output");
    softmax::forward(&rt, FloatType::F32, s, &x, &y).expect("simulated softmax");
    let insts = sim.last_counters().total_thread_insts();
    let mut group = c.benchmark_group("softmax_kernel");
    group.sample_size(10);
    group.throughput(Throughput::Elements(insts));
    group.bench_function(BenchmarkId::new("ptxsim_thread_insts", format!("{}x{}", s.rows, s.cols)), |bench| {
        bench.iter(|| softmax::forward(&rt, FloatType::F32, s, &x, &y).expect("simulated softmax"))
    });
    group.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(gpu) = Gpu::new("softmax") else {
        return;
    };
    let rt = gpu.rt.clone();
    let mut rng = Rng::new(3);
    let mut group = c.benchmark_group("softmax_kernel");
    group.sample_size(10);
    for s in GPU_SHAPES {
        let n = s.rows * s.cols;
        let x32 = random_f32(&mut rng, n);
        let x16: Vec<bf16> = x32.iter().map(|&v| bf16::from_f32(v)).collect();
        for (dtype, x) in [
            (FloatType::F32, GpuBuffer::from_slice(&rt, &x32).expect("input")),
            (FloatType::Bf16, GpuBuffer::from_slice(&rt, &x16).expect("input")),
        ] {
            let y = GpuBuffer::zeroed(&rt, n * dtype.size()).expect("output");
            let dx = GpuBuffer::zeroed(&rt, n * dtype.size()).expect("output");
            let shape = format!("{dtype:?}/{}x{}", s.rows, s.cols);
            let passes: [Pass<'_>; 2] = [
                ("cuda_forward", 2, Box::new(|| softmax::forward(&rt, dtype, s, &x, &y).expect("forward"))),
                ("cuda_backward", 3, Box::new(|| softmax::backward(&rt, dtype, s, &y, &x, &dx).expect("backward"))),
            ];
            for (name, per_elem, run) in passes {
                group.throughput(Throughput::BytesDecimal(per_elem * (n * dtype.size()) as u64));
                gpu.bench(&mut group, BenchmarkId::new(name, &shape), &run);
            }
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
