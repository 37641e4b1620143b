//! Criterion bench of the PTX interpreter itself: a loop-heavy kernel (`sim_loop` in tests/it/ptxsim/kernels.cu)
//! and the coalesced copy, with throughput in thread-instructions, so the figure is the simulator's speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rankfold_kernels::{Dim3, GpuBuffer, GpuRuntime, KernelArg, LaunchConfig};
use rankfold_ptxsim::SimRuntime;

const KERNELS: &str = include_str!("../tests/it/ptxsim/kernels.ptx");

fn bench_sim(c: &mut Criterion) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let mut g = c.benchmark_group("ptxsim");
    g.sample_size(10);
    let (n, k) = (4096usize, 64i32);
    let out = GpuBuffer::zeroed(&rt, 4 * n).expect("allocation on the simulator");
    let x = GpuBuffer::from_slice(&rt, &vec![1f32; n]).expect("allocation on the simulator");
    let config = LaunchConfig {
        grid: Dim3::x(n as u32 / 128),
        block: Dim3::x(128),
        shared_bytes: 0,
    };
    let cases: [(&str, Vec<KernelArg>); 2] = [
        (
            "sim_loop",
            vec![
                KernelArg::Ptr(out.ptr()),
                KernelArg::I32(n as i32),
                KernelArg::I32(k),
            ],
        ),
        (
            "sim_copy",
            vec![
                KernelArg::Ptr(x.ptr()),
                KernelArg::Ptr(out.ptr()),
                KernelArg::I32(n as i32),
            ],
        ),
    ];
    for (entry, args) in cases {
        let launch = || {
            sim.launch_ptx("kernels.ptx", KERNELS, entry, config, &args)
                .expect("the bench kernel runs")
        };
        launch();
        let insts = sim.last_counters().total_thread_insts();
        g.throughput(Throughput::Elements(insts));
        g.bench_function(format!("{entry} n={n} (thread-instructions)"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    launch();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_sim);
criterion_main!(benches);
