//! `kernels/nf4.cu` on every runtime against the CPU twin (`nf4::cpu`, `nf4::double_quantize_with_offset`):
//! quantize from f32/f16/bf16 bit for bit at every blocksize with odd lengths, short last blocks and all-zero
//! blocks; dequantize to each dtype bit for bit; double quantization and its inverse bit for bit; the GEMV within
//! a stated bf16 tolerance; 16-byte coalesced weight loads (ptxsim counters); typed errors for bad shapes.

use std::sync::Arc;

use anyhow::{ensure, Result};
use half::{bf16, f16};
use rankfold_kernels::nf4::launch::{self, GemvConfig, GemvScales, Nf4Type};
use rankfold_kernels::nf4::{self, cpu, Nf4Element, Nf4Quantized};
use rankfold_kernels::{Error, GpuBuffer, GpuRuntime};
use rankfold_ptxsim::SimRuntime;
use rankfold_tensor::Rng;

use crate::gpu::runtimes;

/// Every blocksize class bitsandbytes accepts.
const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The storage element types with their kernel dtype.
trait Elem: Nf4Element + bytemuck::Pod {
    const TYPE: Nf4Type;
}
impl Elem for f32 {
    const TYPE: Nf4Type = Nf4Type::F32;
}
impl Elem for f16 {
    const TYPE: Nf4Type = Nf4Type::F16;
}
impl Elem for bf16 {
    const TYPE: Nf4Type = Nf4Type::Bf16;
}

/// Normal values of a random scale per block, with block 1 all zero (a full zero block), and, when `zero_tail`,
/// the short last block all zero too (the twin then stores the 1e-38 floor).
fn sample<T: Elem>(rng: &mut Rng, n: usize, blocksize: usize, zero_tail: bool) -> Vec<T> {
    let mut v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    for block in v.chunks_mut(blocksize) {
        let scale = (0.01 + 10.0 * rng.uniform()) as f32;
        block.iter_mut().for_each(|x| *x *= scale);
    }
    if n >= 3 * blocksize {
        v[blocksize..2 * blocksize].fill(0.0);
    }
    if zero_tail && n % blocksize != 0 {
        let start = n - n % blocksize;
        v[start..].fill(0.0);
    }
    v.into_iter().map(T::from_f32).collect()
}

/// Equal bits, or both NaN (a NaN absmax's payload depends on which NaN a reduction meets first).
fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Quantizes `x` on `rt` and checks packed bytes and scales against the twin, then dequantizes the twin's result
/// to every dtype and checks the bits.
fn quantize_round_trip<T: Elem>(rt: &Arc<dyn GpuRuntime>, what: &str, x: &[T], blocksize: usize) -> Result<()> {
    let n = x.len();
    let want = cpu::quantize(x, blocksize)?;
    let gx = GpuBuffer::from_slice(rt, x)?;
    let gp = GpuBuffer::zeroed(rt, n.div_ceil(2))?;
    let ga = GpuBuffer::zeroed(rt, n.div_ceil(blocksize) * 4)?;
    launch::quantize(rt, T::TYPE, n, blocksize, &gx, &gp, &ga)?;
    let (packed, absmax) = (gp.to_vec::<u8>()?, ga.to_vec::<f32>()?);
    if let Some(i) = (0..packed.len()).find(|&i| packed[i] != want.packed[i]) {
        anyhow::bail!(
            "{what}: packed byte {i} is {:#04x}, the twin's {:#04x}",
            packed[i],
            want.packed[i]
        );
    }
    if let Some(b) = (0..absmax.len()).find(|&b| !same_f32(absmax[b], want.absmax[b])) {
        anyhow::bail!(
            "{what}: absmax[{b}] is {:e}, the twin's {:e}",
            absmax[b],
            want.absmax[b]
        );
    }
    dequantize_matches::<f32>(rt, what, &want)?;
    dequantize_matches::<f16>(rt, what, &want)?;
    dequantize_matches::<bf16>(rt, what, &want)
}

fn dequantize_matches<T: Elem>(rt: &Arc<dyn GpuRuntime>, what: &str, q: &Nf4Quantized) -> Result<()> {
    let mut want = vec![T::from_f32(0.0); q.len];
    cpu::dequantize(q.view(), &mut want)?;
    let gp = GpuBuffer::from_slice(rt, &q.packed)?;
    let ga = GpuBuffer::from_slice(rt, &q.absmax)?;
    let go = GpuBuffer::zeroed(rt, q.len * T::TYPE.size())?;
    launch::dequantize(rt, T::TYPE, q.len, q.blocksize, &gp, &ga, &go)?;
    let got = go.to_vec::<T>()?;
    if let Some(i) = (0..q.len).find(|&i| !same_f32(got[i].to_f32(), want[i].to_f32())) {
        anyhow::bail!(
            "{what}: dequantize to {} element {i} is {:e}, the twin's {:e}",
            T::NAME,
            got[i].to_f32(),
            want[i].to_f32()
        );
    }
    Ok(())
}

/// Every blocksize with a short odd tail (a zero one every other time), an exact multiple, a single short block
/// and two random lengths; the f32 run also plants a NaN and an infinity.
fn quantize_all_blocksizes<T: Elem>(seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    for (name, rt) in runtimes()? {
        for (i, &bs) in BLOCKSIZES.iter().enumerate() {
            // Fewer blocks at the large sizes keep the simulated run short; every case still has a short tail.
            let full = if bs >= 1024 { 1 } else { 3 };
            let random_n = [
                1 + rng.below(2 * bs as u64) as usize,
                1 + rng.below(2 * bs as u64) as usize,
            ];
            let fixed = [
                (full * bs + 2 * i + 1, i % 2 == 0),
                (2 * bs, false),
                (bs / 2 + 3, false),
            ];
            for (n, zero_tail) in fixed.into_iter().chain(random_n.map(|n| (n, n % 3 == 0))) {
                let mut x = sample::<T>(&mut rng, n, bs, zero_tail);
                if T::TYPE == Nf4Type::F32 && n > bs {
                    x[n - 2] = T::from_f32(f32::NAN);
                    x[3] = T::from_f32(f32::INFINITY);
                }
                quantize_round_trip(&rt, &format!("{name} {} n={n} bs={bs}", T::NAME), &x, bs)?;
            }
        }
    }
    Ok(())
}

#[test]
fn nf4_quantize_f32_matches_the_twin() -> Result<()> {
    quantize_all_blocksizes::<f32>(0x4F32)
}

#[test]
fn nf4_quantize_f16_matches_the_twin() -> Result<()> {
    quantize_all_blocksizes::<f16>(0x4F16)
}

#[test]
fn nf4_quantize_bf16_matches_the_twin() -> Result<()> {
    quantize_all_blocksizes::<bf16>(0x4B16)
}

#[test]
fn nf4_double_quantization_matches_the_twin() -> Result<()> {
    let mut rng = Rng::new(0xD0_0B1E);
    for (name, rt) in runtimes()? {
        // One scale, one group, a full group, a group and one, three groups with a short last one, a constant
        // group (all d = 0: codes 0, nested 0), and scales with a NaN.
        for (n, kind) in [(1, 0), (255, 0), (256, 0), (257, 0), (700, 0), (300, 1), (513, 2)] {
            let mut absmax: Vec<f32> = (0..n)
                .map(|_| (0.05 + 3.0 * rng.uniform() * rng.uniform()) as f32)
                .collect();
            if kind == 1 {
                absmax.fill(0.375);
            }
            if kind == 2 {
                absmax[300] = f32::NAN;
            }
            let offset = nf4::mean_offset(&absmax);
            let want = nf4::double_quantize_with_offset(&absmax, offset);
            let ga = GpuBuffer::from_slice(&rt, &absmax)?;
            let gc = GpuBuffer::zeroed(&rt, n)?;
            let gn = GpuBuffer::zeroed(&rt, n.div_ceil(256) * 4)?;
            let got_offset = launch::double_quantize(&rt, n, &ga, &gc, &gn)?;
            let what = format!("{name} double quantize of {n} scales");
            ensure!(
                got_offset.to_bits() == offset.to_bits(),
                "{what}: offset {got_offset:e} vs {offset:e}"
            );
            let codes = gc.to_vec::<u8>()?;
            if let Some(i) = (0..n).find(|&i| codes[i] != want.codes[i]) {
                anyhow::bail!("{what}: code {i} is {}, the twin's {}", codes[i], want.codes[i]);
            }
            let nested = gn.to_vec::<f32>()?;
            ensure!(
                nested.iter().zip(&want.nested_absmax).all(|(a, b)| same_f32(*a, *b)),
                "{what}: nested {nested:?} vs {:?}",
                want.nested_absmax
            );

            let mut back = vec![0f32; n];
            nf4::double_dequantize(&want, &mut back)?;
            let gc = GpuBuffer::from_slice(&rt, &want.codes)?;
            let gn = GpuBuffer::from_slice(&rt, &want.nested_absmax)?;
            let gout = GpuBuffer::zeroed(&rt, n * 4)?;
            launch::double_dequantize(&rt, n, &gc, &gn, offset, &gout)?;
            let got = gout.to_vec::<f32>()?;
            if let Some(i) = (0..n).find(|&i| !same_f32(got[i], back[i])) {
                anyhow::bail!(
                    "{what}: dequantized scale {i} is {:e}, the twin's {:e}",
                    got[i],
                    back[i]
                );
            }
        }
    }
    Ok(())
}

/// The GEMV against `x · Ŵᵀ` in f64 over the twin's dequantized weight. Tolerance per output:
/// `|y − y_ref| ≤ 2⁻⁸·|y_ref| + K·2⁻²⁴·Σ_k |ŵ x|`: the bf16 rounding of y (half an ulp is 2⁻⁹, doubled for the
/// reference's own rounding position) plus the classical worst-case bound of a K-term f32 sum.
fn gemv_case(rt: &Arc<dyn GpuRuntime>, rng: &mut Rng, cfg: GemvConfig, double: bool) -> Result<()> {
    let GemvConfig { m, n, k, blocksize } = cfg;
    let what = format!("{} gemv {cfg:?} double={double}", rt.name());
    let w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
    let q = cpu::quantize(&w, blocksize)?;
    let x: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(rng.normal() as f32)).collect();
    let dq = nf4::double_quantize(&q.absmax);
    // The weight the kernel sees: with double quantization, the scales it reconstructs.
    let mut absmax = q.absmax.clone();
    if double {
        nf4::double_dequantize(&dq, &mut absmax)?;
    }
    let wq = nf4::Nf4Ref {
        packed: &q.packed,
        absmax: &absmax,
        len: n * k,
        blocksize,
    };
    let mut wd = vec![0f32; n * k];
    cpu::dequantize(wq, &mut wd)?;

    let gx = GpuBuffer::from_slice(rt, &x)?;
    let gp = GpuBuffer::from_slice(rt, &q.packed)?;
    let gy = GpuBuffer::zeroed(rt, m * n * 2)?;
    let (ga, gc, gn) = (
        GpuBuffer::from_slice(rt, &q.absmax)?,
        GpuBuffer::from_slice(rt, &dq.codes)?,
        GpuBuffer::from_slice(rt, &dq.nested_absmax)?,
    );
    let scales = if double {
        GemvScales::Double {
            codes: &gc,
            nested: &gn,
            offset: dq.offset,
        }
    } else {
        GemvScales::F32(&ga)
    };
    launch::gemv(rt, cfg, &gx, &gp, scales, &gy)?;
    let y = gy.to_vec::<bf16>()?;
    for r in 0..m {
        for c in 0..n {
            let (mut dot, mut abs) = (0f64, 0f64);
            for kk in 0..k {
                let p = wd[c * k + kk] as f64 * x[r * k + kk].to_f64();
                dot += p;
                abs += p.abs();
            }
            let got = y[r * n + c].to_f64();
            let tol = dot.abs() / 256.0 + k as f64 * abs / (1u64 << 24) as f64;
            ensure!(
                (got - dot).abs() <= tol,
                "{what}: y[{r}, {c}] = {got}, want {dot} ± {tol:e}"
            );
        }
    }
    Ok(())
}

#[test]
fn nf4_gemv_matches_dequantize_then_matmul() -> Result<()> {
    let mut rng = Rng::new(0x6E_3F);
    // (m, n, k, blocksize): aligned rows; odd K (rows start mid-byte, blocks straddle rows); M = 16 with K not a
    // multiple of the block; one block spanning every row with a partial last 16-byte chunk; M = 3 over long rows.
    let shapes = [
        (1, 37, 96, 64),
        (3, 19, 333, 32),
        (16, 9, 1000, 128),
        (1, 5, 7, 4096),
        (4, 33, 64, 32),
        (3, 6, 2050, 256),
    ];
    for (_, rt) in runtimes()? {
        for (i, &(m, n, k, blocksize)) in shapes.iter().enumerate() {
            gemv_case(&rt, &mut rng, GemvConfig { m, n, k, blocksize }, i % 2 == 1)?;
            gemv_case(&rt, &mut rng, GemvConfig { m, n, k, blocksize }, i % 2 == 0)?;
        }
    }
    Ok(())
}

/// On ptxsim, the weight stream of the GEMV moves in 16-byte loads that fill whole sectors. Shape: M = 1,
/// N = 16 rows, K = 4096 (rows aligned to 16-byte chunks), blocksize 64. The other global traffic is modelled
/// from the kernel: per lane-iteration (one 32-code chunk) one f32 scale load (a warp touches 16 consecutive
/// scales: 2 sectors) and four 16-byte loads of x (lane stride 64 B: 32 sectors each), one 2-byte store of y
/// per row, and per CTA one read of the 16-value codebook from constant memory (64 B, 2 sectors: ptxsim counts
/// it with global traffic). What is left must be exactly weight_bytes / 512 requests (32 lanes × 16 B) touching
/// weight_bytes / 32 sectors, the minimum (factor 1.0; byte loads would need 16× the requests).
#[test]
fn nf4_gemv_weight_loads_are_16_byte_and_coalesced() -> Result<()> {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let (m, n, k, blocksize) = (1usize, 16usize, 4096usize, 64usize);
    let mut rng = Rng::new(0xC0A1);
    let w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
    let q = cpu::quantize(&w, blocksize)?;
    let x: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(rng.normal() as f32)).collect();
    let (gx, gp, ga) = (
        GpuBuffer::from_slice(&rt, &x)?,
        GpuBuffer::from_slice(&rt, &q.packed)?,
        GpuBuffer::from_slice(&rt, &q.absmax)?,
    );
    let gy = GpuBuffer::zeroed(&rt, m * n * 2)?;
    launch::gemv(
        &rt,
        GemvConfig { m, n, k, blocksize },
        &gx,
        &gp,
        GemvScales::F32(&ga),
        &gy,
    )?;
    let c = sim.last_counters();

    let weight_bytes = (n * k / 2) as u64;
    let iterations = (n * k / 32 / 32) as u64; // Warp-level iterations: 32 chunks of 32 codes each.
    let x_bytes = (n * m * k * 2) as u64; // Every row's warp reads all of x.
    let scale_bytes = iterations * 32 * 4;
    let ctas = n.div_ceil(8) as u64;
    ensure!(
        c.global_read_bytes == weight_bytes + x_bytes + scale_bytes + 64 * ctas
            && c.global_write_bytes == (m * n * 2) as u64,
        "bytes: want {weight_bytes} weights + {x_bytes} x + {scale_bytes} scales:\n{c}"
    );
    let other_requests = iterations * (1 + 4 * m as u64) + (m * n) as u64 + ctas;
    let other_sectors = iterations * (2 + 4 * 32 * m as u64) + (m * n) as u64 + 2 * ctas;
    let (weight_requests, weight_sectors) = (c.global_requests - other_requests, c.global_sectors - other_sectors);
    ensure!(
        weight_requests == weight_bytes / 512 && weight_sectors == weight_bytes / 32,
        "weight stream: {weight_requests} requests / {weight_sectors} sectors, want {} / {} (16-byte coalesced):\n{c}",
        weight_bytes / 512,
        weight_bytes / 32
    );
    Ok(())
}

#[test]
fn bad_nf4_shapes_are_typed_errors() -> Result<()> {
    for (_, rt) in runtimes()? {
        let small = GpuBuffer::zeroed(&rt, 8)?;
        // Zero elements are valid and launch nothing.
        launch::quantize(&rt, Nf4Type::Bf16, 0, 64, &small, &small, &small)?;
        launch::dequantize(&rt, Nf4Type::F16, 0, 64, &small, &small, &small)?;
        let big = GpuBuffer::zeroed(&rt, 1 << 16)?;
        let bad_block = launch::quantize(&rt, Nf4Type::F32, 100, 48, &big, &big, &big);
        ensure!(
            matches!(bad_block, Err(Error::Shape { .. })),
            "blocksize 48: {bad_block:?}"
        );
        let short = launch::dequantize(&rt, Nf4Type::Bf16, 100, 64, &big, &big, &small);
        ensure!(
            matches!(short, Err(Error::BufferTooSmall { name: "out", .. })),
            "short out: {short:?}"
        );
        let cfg = GemvConfig {
            m: 17,
            n: 4,
            k: 64,
            blocksize: 64,
        };
        let m17 = launch::gemv(&rt, cfg, &big, &big, GemvScales::F32(&big), &big);
        ensure!(matches!(m17, Err(Error::Shape { .. })), "m = 17: {m17:?}");
        let cfg = GemvConfig {
            m: 2,
            n: 64,
            k: 64,
            blocksize: 64,
        };
        let no_scales = launch::gemv(&rt, cfg, &big, &big, GemvScales::F32(&small), &big);
        ensure!(
            matches!(no_scales, Err(Error::BufferTooSmall { name: "absmax", .. })),
            "short absmax: {no_scales:?}"
        );
    }
    Ok(())
}
