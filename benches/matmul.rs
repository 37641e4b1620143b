//! Criterion bench of f32 matmul on the CPU: two square-ish GEMMs and the two LoRA adapter products.
//!
//! A shape named `MxNxK` is the product of `a` [m, k] and `b` [k, n]; one product costs 2·m·n·k FLOPs, which
//! is the throughput criterion records (as elements) and `cargo xtask bench` turns into GFLOP/s.
//!
//! Each iteration takes the next of several input copies, so that the copies together exceed the last-level
//! cache and every product reads its operands from memory, as it would in a training step.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rankfold_tensor::{DType, Device, Rng, Tensor};

#[path = "common/config.rs"]
mod config;

/// The benchmarked shapes as (m, n, k).
const SHAPES: [(usize, usize, usize); 4] = [
    (1024, 1024, 1024),
    (4096, 4096, 1024),
    // The LoRA down projection: x [1024, 576] · A [576, 8].
    (1024, 8, 576),
    // The LoRA up projection: h [1024, 8] · B [8, 576].
    (1024, 576, 8),
];

/// The working set that the rotating input copies must reach: twice a 32 MiB last-level cache.
const ROTATE_BYTES: usize = 64 << 20;

/// Random f32 operand pairs for one shape, enough of them to cover `ROTATE_BYTES`.
fn operands(m: usize, n: usize, k: usize, rng: &mut Rng) -> Result<Vec<(Tensor, Tensor)>> {
    let pair_bytes = 4 * (m * k + k * n);
    let copies = ROTATE_BYTES.div_ceil(pair_bytes).clamp(1, 64);
    (0..copies)
        .map(|_| {
            let a = rng.uniform_tensor(-1.0, 1.0, (m, k), DType::F32, Device::Cpu)?;
            let b = rng.uniform_tensor(-1.0, 1.0, (k, n), DType::F32, Device::Cpu)?;
            Ok((a, b))
        })
        .collect()
}

fn matmul(c: &mut Criterion) {
    let mut rng = Rng::new(0x6d61_746d);
    let mut group = c.benchmark_group("matmul");
    for (m, n, k) in SHAPES {
        let inputs = operands(m, n, k, &mut rng).expect("random operands");
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(BenchmarkId::new("f32", format!("{m}x{n}x{k}")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters as usize {
                    let (x, w) = &inputs[i % inputs.len()];
                    let start = Instant::now();
                    let y = x.matmul(w).expect("matmul");
                    total += start.elapsed();
                    // The output is freed outside the timed region; its allocation stays inside.
                    drop(black_box(y));
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config::criterion();
    targets = matmul
}
criterion_main!(benches);
