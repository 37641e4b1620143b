//! Criterion benches of the memory-bound row ops on the CPU: softmax and rms_norm over the last dimension.
//!
//! Both read x [rows, d] once and write y once, so one call moves 2·4·rows·d bytes of f32 (the rms_norm weight,
//! d floats, is left out); that is the throughput criterion records and `cargo xtask bench` turns into GB/s.
//!
//! Each iteration takes the next of several input copies, so that the copies together exceed the last-level
//! cache and every call reads its input from memory.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use rankfold_tensor::{DType, Device, Rng, Tensor};

#[path = "common/config.rs"]
mod config;

/// The benchmarked input shape, [rows, d].
const SHAPE: (usize, usize) = (4096, 1024);

/// The working set that the rotating input copies must reach: twice a 32 MiB last-level cache.
const ROTATE_BYTES: usize = 64 << 20;

/// Random f32 inputs of `SHAPE`, enough of them to cover `ROTATE_BYTES`.
fn inputs(rng: &mut Rng) -> Result<Vec<Tensor>> {
    let (rows, d) = SHAPE;
    let copies = ROTATE_BYTES.div_ceil(4 * rows * d).clamp(1, 64);
    (0..copies).map(|_| Ok(rng.uniform_tensor(-4.0, 4.0, SHAPE, DType::F32, Device::Cpu)?)).collect()
}

/// Benchmarks `op` over the rotating `xs` as `f32/<rows>x<d>` in `group`, timing only the op itself.
fn bench_row_op(group: &mut BenchmarkGroup<'_, WallTime>, xs: &[Tensor], op: impl Fn(&Tensor) -> Tensor) {
    let (rows, d) = SHAPE;
    group.throughput(Throughput::BytesDecimal(2 * 4 * (rows * d) as u64));
    group.bench_function(BenchmarkId::new("f32", format!("{rows}x{d}")), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters as usize {
                let x = &xs[i % xs.len()];
                let start = Instant::now();
                let y = op(x);
                total += start.elapsed();
                // The output is freed outside the timed region; its allocation stays inside.
                drop(black_box(y));
            }
            total
        })
    });
}

fn softmax(c: &mut Criterion) {
    let xs = inputs(&mut Rng::new(0x736f_6674)).expect("random inputs");
    let mut group = c.benchmark_group("softmax");
    bench_row_op(&mut group, &xs, |x| x.softmax(-1).expect("softmax"));
    group.finish();
}

fn rms_norm(c: &mut Criterion) {
    let mut rng = Rng::new(0x726d_736e);
    let xs = inputs(&mut rng).expect("random inputs");
    let w = rng.uniform_tensor(0.5, 1.5, SHAPE.1, DType::F32, Device::Cpu).expect("random weight");
    let mut group = c.benchmark_group("rms_norm");
    bench_row_op(&mut group, &xs, |x| x.rms_norm(Some(&w), 1e-5).expect("rms_norm"));
    group.finish();
}

criterion_group! {
    name = benches;
    config = config::criterion();
    targets = softmax, rms_norm
}
criterion_main!(benches);
