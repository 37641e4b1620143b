//! Criterion bench of the NF4 kernels (`kernels/nf4.cu`): on a GPU, quantize and dequantize in GB/s of the
//! header's minimum traffic and the GEMV in GB/s of weight bytes streamed (codes + f32 or double-quantized
//! scales); without one, the same kernels on ptxsim, quoted in thread-instructions per second (the simulator's
//! speed, not the kernel's). GPU timings flush the L2 cache (a 256 MiB memset) before each launch, outside the
//! timed region, and synchronize before the clock stops.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rankfold_kernels::nf4::launch::{self, GemvConfig, GemvScales, Nf4Type};
use rankfold_kernels::nf4::{self, cpu};
use rankfold_kernels::{GpuBuffer, GpuRuntime};
use rankfold_ptxsim::SimRuntime;
use rankfold_tensor::Rng;

#[path = "common/gpu.rs"]
mod gpu;
use gpu::Gpu;

/// The bench group (`nf4` is the CPU bench's group in benches/nf4.rs).
const GROUP: &str = "nf4_kernel";
/// GPU quantize / dequantize sizes: one 4096×4096 weight and a 32 Mi-element tensor, blocksize 64.
const GPU_LENS: [usize; 2] = [4096 * 4096, 32 << 20];
/// GPU GEMV shapes (m, n, k): a Llama-7B projection and MLP weight at decode batch 1, 4 and 16.
const GPU_GEMV: [(usize, usize, usize); 4] = [(1, 4096, 4096), (1, 11008, 4096), (4, 4096, 4096), (16, 4096, 4096)];
/// Simulated sizes, kept small: the quantize/dequantize length and the GEMV shape.
const SIM_LEN: usize = 16_384;
const SIM_GEMV: (usize, usize, usize) = (4, 64, 1024);
const BLOCKSIZE: usize = 64;

fn normal_bf16(rng: &mut Rng, n: usize) -> Vec<bf16> {
    (0..n).map(|_| bf16::from_f32(rng.normal() as f32)).collect()
}

/// Device buffers of one quantized weight: bf16 source, codes, f32 scales, double-quantized scales.
struct Weight {
    x: GpuBuffer,
    packed: GpuBuffer,
    absmax: GpuBuffer,
    codes: GpuBuffer,
    nested: GpuBuffer,
    offset: f32,
    n: usize,
}

fn weight(rt: &Arc<dyn GpuRuntime>, rng: &mut Rng, n: usize) -> Weight {
    let host = normal_bf16(rng, n);
    let q = cpu::quantize(&host, BLOCKSIZE).expect("valid blocksize");
    let dq = nf4::double_quantize(&q.absmax);
    Weight {
        x: GpuBuffer::from_slice(rt, &host).expect("device x"),
        packed: GpuBuffer::from_slice(rt, &q.packed).expect("device codes"),
        absmax: GpuBuffer::from_slice(rt, &q.absmax).expect("device scales"),
        codes: GpuBuffer::from_slice(rt, &dq.codes).expect("device nested codes"),
        nested: GpuBuffer::from_slice(rt, &dq.nested_absmax).expect("device nested scales"),
        offset: dq.offset,
        n,
    }
}

/// Minimum traffic of quantize / dequantize with bf16 on the wide side: 2n + n/2 + 4n/blocksize bytes.
fn quant_bytes(n: usize) -> u64 {
    (2 * n + n.div_ceil(2) + 4 * n.div_ceil(BLOCKSIZE)) as u64
}

/// Weight bytes a GEMV streams: the codes and the scales (f32, or one byte plus a share of the nested f32).
fn gemv_bytes(n: usize, k: usize, double: bool) -> u64 {
    let blocks = (n * k).div_ceil(BLOCKSIZE);
    let scales = if double {
        blocks + 4 * blocks.div_ceil(256)
    } else {
        4 * blocks
    };
    ((n * k).div_ceil(2) + scales) as u64
}

/// The runs of one runtime, each a closure that launches once, with its name, shape and throughput.
type Case<'a> = (&'static str, String, Throughput, Box<dyn Fn() + 'a>);

fn cases<'a>(rt: &'a Arc<dyn GpuRuntime>, w: &'a Weight, out: &'a GpuBuffer, gemv: &'a [Gemv]) -> Vec<Case<'a>> {
    let n = w.n;
    let mut all: Vec<Case<'a>> = vec![
        (
            "quantize_bf16",
            format!("{n}/bs{BLOCKSIZE}"),
            Throughput::Bytes(quant_bytes(n)),
            Box::new(move || {
                launch::quantize(rt, Nf4Type::Bf16, n, BLOCKSIZE, &w.x, &w.packed, &w.absmax).expect("quantize")
            }),
        ),
        (
            "dequantize_bf16",
            format!("{n}/bs{BLOCKSIZE}"),
            Throughput::Bytes(quant_bytes(n)),
            Box::new(move || {
                launch::dequantize(rt, Nf4Type::Bf16, n, BLOCKSIZE, &w.packed, &w.absmax, out).expect("dequantize")
            }),
        ),
    ];
    for g in gemv {
        for double in [false, true] {
            let (m, nn, k) = (g.cfg.m, g.cfg.n, g.cfg.k);
            all.push((
                if double { "gemv_dq_bf16" } else { "gemv_bf16" },
                format!("{m}x{nn}x{k}"),
                Throughput::Bytes(gemv_bytes(nn, k, double)),
                Box::new(move || {
                    let w = &g.w;
                    let scales = if double {
                        GemvScales::Double {
                            codes: &w.codes,
                            nested: &w.nested,
                            offset: w.offset,
                        }
                    } else {
                        GemvScales::F32(&w.absmax)
                    };
                    launch::gemv(rt, g.cfg, &g.x, &w.packed, scales, &g.y).expect("gemv")
                }),
            ));
        }
    }
    all
}

/// One GEMV's operands.
struct Gemv {
    cfg: GemvConfig,
    w: Weight,
    x: GpuBuffer,
    y: GpuBuffer,
}

fn gemv_operands(rt: &Arc<dyn GpuRuntime>, rng: &mut Rng, (m, n, k): (usize, usize, usize)) -> Gemv {
    Gemv {
        cfg: GemvConfig {
            m,
            n,
            k,
            blocksize: BLOCKSIZE,
        },
        w: weight(rt, rng, n * k),
        x: GpuBuffer::from_slice(rt, &normal_bf16(rng, m * k)).expect("device x"),
        y: GpuBuffer::zeroed(rt, 2 * m * n).expect("device y"),
    }
}

fn sim(c: &mut Criterion) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let mut rng = Rng::new(1);
    let w = weight(&rt, &mut rng, SIM_LEN);
    let out = GpuBuffer::zeroed(&rt, 2 * SIM_LEN).expect("simulated out");
    let gemv = [gemv_operands(&rt, &mut rng, SIM_GEMV)];
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    for (name, shape, _, run) in cases(&rt, &w, &out, &gemv) {
        // One counted launch gives the thread-instructions per launch that the throughput is quoted in.
        run();
        group.throughput(Throughput::Elements(sim.last_counters().total_thread_insts()));
        group.bench_function(BenchmarkId::new(format!("ptxsim_{name}_thread_insts"), shape), |b| {
            b.iter(&run)
        });
    }
    group.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(gpu) = Gpu::new("nf4_kernel") else {
        return;
    };
    let rt = gpu.rt.clone();
    let mut rng = Rng::new(2);
    let gemv: Vec<Gemv> = GPU_GEMV.iter().map(|&s| gemv_operands(&rt, &mut rng, s)).collect();
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    for (i, &n) in GPU_LENS.iter().enumerate() {
        let w = weight(&rt, &mut rng, n);
        let out = GpuBuffer::zeroed(&rt, 2 * n).expect("device out");
        // The GEMV rows run once, with the first size.
        let g: &[Gemv] = if i == 0 { &gemv } else { &[] };
        for (name, shape, throughput, run) in cases(&rt, &w, &out, g) {
            group.throughput(throughput);
            gpu.bench(&mut group, BenchmarkId::new(format!("cuda_{name}"), shape), &run);
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = gpu::criterion();
    targets = sim, cuda
}
criterion_main!(benches);
