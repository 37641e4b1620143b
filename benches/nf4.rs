//! Criterion bench of the NF4 CPU fast path against a same-size memcpy measured in the same run.
//!
//! Group `nf4`, ids `<op>/<dtype>/<n>`: `memcpy` copies `n` f32 (the yardstick, two threads like the NF4 path);
//! `dequantize` writes `n` values of `<dtype>` from `n/2` packed bytes; `quantize` reads `n` values of `<dtype>`.
//! Throughput is the bytes of the unpacked side (`n·size_of(dtype)`), so a row's GB/s divided by the memcpy
//! row's GB/s is the fraction of copy speed (targets: ≥ 50 % for dequantize to f32, ≥ 25 % for quantize).
//! `gemv` multiplies an NF4 [4096, 4096] weight by a vector (throughput: packed weight bytes read).
//! Traffic (from kernels/nf4.cu's header): dequantize reads n/2 + n/16 B and writes 4n B; quantize reads 4n B
//! and writes n/2 + n/16 B. 16 M elements (64 MB of f32) is far beyond the caches, so no flush is needed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rankfold_kernels::nf4::{fast, GemvShape, Nf4Element};
use rayon::prelude::*;

#[path = "common/config.rs"]
mod config;

const N: usize = 1 << 24;
const BLOCKSIZE: usize = 64;

fn data<T: Nf4Element>(n: usize) -> Vec<T> {
    // A cheap deterministic spread of values (xorshift), not all the same magnitude.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0)
        })
        .collect()
}

fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

fn bench_dtype<T: Nf4Element>(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let x: Vec<T> = data(N);
    let q = fast::quantize(&x, BLOCKSIZE).expect("quantize");
    let mut out = vec![T::from_f32(0.0); N];
    let shape = format!("{}/{N}", T::NAME);
    g.throughput(Throughput::Bytes((N * std::mem::size_of::<T>()) as u64));
    g.bench_function(BenchmarkId::new("dequantize", &shape), |b| {
        b.iter_custom(|it| timed(it, || fast::dequantize(black_box(q.view()), &mut out).expect("dequantize")))
    });
    let (mut packed, mut absmax) = (vec![0u8; N / 2], vec![0f32; N / BLOCKSIZE]);
    g.bench_function(BenchmarkId::new("quantize", &shape), |b| {
        b.iter_custom(|it| {
            timed(it, || fast::quantize_into(black_box(&x), BLOCKSIZE, &mut packed, &mut absmax).expect("quantize"))
        })
    });
}

fn nf4(c: &mut Criterion) {
    let mut g = c.benchmark_group("nf4");
    let src: Vec<f32> = data(N);
    let mut dst = vec![0f32; N];
    g.throughput(Throughput::Bytes((N * 4) as u64));
    g.bench_function(BenchmarkId::new("memcpy", format!("f32/{N}")), |b| {
        b.iter_custom(|it| {
            timed(it, || {
                dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s))
            })
        })
    });
    drop((src, dst));
    bench_dtype::<f32>(&mut g);
    bench_dtype::<bf16>(&mut g);

    let (rows, cols) = (4096, 4096);
    let w = fast::quantize(&data::<f32>(rows * cols), BLOCKSIZE).expect("quantize");
    let (x, mut y) = (data::<f32>(cols), vec![0f32; rows]);
    g.throughput(Throughput::Bytes((rows * cols / 2) as u64));
    g.bench_function(BenchmarkId::new("gemv", format!("f32/{rows}x{cols}")), |b| {
        b.iter_custom(|it| {
            timed(it, || fast::gemv(w.view(), GemvShape { rows, cols }, black_box(&x), &mut y).expect("gemv"))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config::criterion();
    targets = nf4
}
criterion_main!(benches);
