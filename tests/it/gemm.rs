//! `kernels/gemm.cu` on every runtime against its CPU twin: both B layouts, bf16 and f32 outputs, M/N not
//! multiples of the 128 tile, K not a multiple of 16 or 8, padded strides (aligned and not), alpha/beta, and
//! typed errors for bad shapes.

use std::sync::Arc;

use anyhow::Result;
use half::bf16;
use rankfold_kernels::elementwise::{Element, FloatType};
use rankfold_kernels::gemm::{self, cpu, GemmLayout, GemmParams};
use rankfold_kernels::{Error, GpuBuffer, GpuRuntime};
use rankfold_tensor::Rng;

use crate::gpu::{check_frobenius, random, runtimes, tol_of};

/// (m, n, k, extra elements per row of A and B, alpha, beta).
const CASES: [(usize, usize, usize, usize, f32, f32); 9] = [
    (1, 1, 1, 0, 1.0, 0.0),
    // K = 29: rows are not 16-byte aligned, so the scalar load path runs.
    (37, 45, 29, 0, 1.0, 0.0),
    // M and N cross the 128 tile; K = 40 is a multiple of 8 but not of 16 or 32 (zero-filled k tail).
    (130, 70, 40, 0, 1.0, 0.0),
    (64, 136, 64, 0, 0.5, 0.0),
    // Padded rows: lda = 45 + 11 = 56 keeps 16-byte alignment, and K = 45 ends inside a 16-byte chunk (cp.async
    // with a partial src-size); +3 is not aligned (scalar path).
    (33, 17, 45, 11, 1.0, 0.0),
    (20, 21, 22, 3, 1.0, 0.0),
    // Accumulate into C.
    (45, 130, 35, 0, 0.75, -1.25),
    // K = 0: no k tile at all, C = beta·C.
    (5, 7, 0, 0, 1.0, 0.5),
    // Seven k tiles through the three-stage pipeline, two n tiles, accumulating.
    (96, 136, 200, 0, 1.0, 0.5),
];

fn gemm_on<O: Element>(rt: &Arc<dyn GpuRuntime>, rt_name: &str, layout: GemmLayout, rng: &mut Rng) -> Result<()> {
    for (m, n, k, pad, alpha, beta) in CASES {
        let ldb = match layout {
            GemmLayout::Nt => k + pad,
            GemmLayout::Nn => n + pad,
        };
        let p = GemmParams { lda: k + pad, ldb, ldc: n + pad, alpha, beta, ..GemmParams::packed(layout, m, n, k) };
        let (na, nb, nc) = p.min_lens();
        let a: Vec<bf16> = random(rng, na, -1.0, 1.0);
        let b: Vec<bf16> = random(rng, nb, -1.0, 1.0);
        let c0: Vec<O> = random(rng, nc, -1.0, 1.0);
        let mut want = c0.clone();
        cpu::gemm(&p, &a, &b, &mut want)?;
        let (ga, gb, gc) =
            (GpuBuffer::from_slice(rt, &a)?, GpuBuffer::from_slice(rt, &b)?, GpuBuffer::from_slice(rt, &c0)?);
        gemm::gemm(rt, &p, O::TYPE, &ga, &gb, &gc)?;
        let got: Vec<O> = gc.to_vec()?;
        // bf16 output: kernel and twin accumulate in f32 and round each element to bf16 once, so they differ only
        // where the f32 sums straddle a rounding boundary (tol_of); f32 output differs only in summation order.
        let tol = tol_of::<O>();
        let what =
            format!("{rt_name} {layout:?} out {:?} m={m} n={n} k={k} pad={pad} alpha={alpha} beta={beta}", O::TYPE);
        check_frobenius(&got, &want, tol, &what)?;
    }
    Ok(())
}

#[test]
fn gemm_matches_the_cpu_twin() -> Result<()> {
    let mut rng = Rng::new(0x6E33);
    for (name, rt) in runtimes()? {
        for layout in [GemmLayout::Nt, GemmLayout::Nn] {
            gemm_on::<f32>(&rt, name, layout, &mut rng)?;
            gemm_on::<bf16>(&rt, name, layout, &mut rng)?;
        }
    }
    Ok(())
}

/// On ptxsim, the aligned path moves exactly the bytes the header's Traffic line predicts (each CTA reads its A
/// row block and B column block once per k tile; C is written once), issues one mma per fragment and k step,
/// and its swizzled shared-memory tiles see no bank conflicts.
#[test]
fn gemm_counters_match_the_header_on_ptxsim() -> Result<()> {
    let sim = Arc::new(rankfold_ptxsim::SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let mut rng = Rng::new(0xC0C0);
    let (m, n, k) = (256, 256, 96);
    for layout in [GemmLayout::Nt, GemmLayout::Nn] {
        let p = GemmParams::packed(layout, m, n, k);
        let a: Vec<bf16> = random(&mut rng, m * k, -1.0, 1.0);
        let b: Vec<bf16> = random(&mut rng, n * k, -1.0, 1.0);
        let (ga, gb, gc) =
            (GpuBuffer::from_slice(&rt, &a)?, GpuBuffer::from_slice(&rt, &b)?, GpuBuffer::zeroed(&rt, 2 * m * n)?);
        gemm::gemm(&rt, &p, FloatType::Bf16, &ga, &gb, &gc)?;
        let c = sim.last_counters();
        let (mt, nt, kt) = (m.div_ceil(128) as u64, n.div_ceil(128) as u64, k.div_ceil(32) as u64);
        let reads = 2 * k as u64 * (m as u64 * nt + n as u64 * mt);
        anyhow::ensure!(
            c.global_read_bytes == reads,
            "{layout:?}: read {} B, header says {reads}",
            c.global_read_bytes
        );
        anyhow::ensure!(c.global_write_bytes == 2 * (m * n) as u64, "{layout:?}: wrote {} B", c.global_write_bytes);
        // 8 warps × 16 fragments × 2 k steps per k tile and CTA.
        anyhow::ensure!(c.mma == mt * nt * kt * 256, "{layout:?}: {} mma", c.mma);
        anyhow::ensure!(c.bank_conflicts == 0, "{layout:?}: {} bank conflicts", c.bank_conflicts);
    }
    Ok(())
}

#[test]
fn bad_gemm_shapes_are_typed_errors() -> Result<()> {
    for (_, rt) in runtimes()? {
        let a = GpuBuffer::zeroed(&rt, 2 * 6 * 8)?;
        let b = GpuBuffer::zeroed(&rt, 2 * 5 * 8)?;
        let c = GpuBuffer::zeroed(&rt, 4 * 6 * 5)?;
        let ok = GemmParams::packed(GemmLayout::Nt, 6, 5, 8);
        gemm::gemm(&rt, &ok, FloatType::F32, &a, &b, &c)?;
        // lda shorter than a row of A.
        let r = gemm::gemm(&rt, &GemmParams { lda: 7, ..ok }, FloatType::F32, &a, &b, &c);
        assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
        // B too short for n = 6 rows.
        let r = gemm::gemm(&rt, &GemmParams { n: 6, ldc: 6, m: 5, ..ok }, FloatType::F32, &a, &b, &c);
        assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
        // C too short for f32 output of [6, 6] once B fits.
        let b6 = GpuBuffer::zeroed(&rt, 2 * 6 * 8)?;
        let r = gemm::gemm(&rt, &GemmParams { n: 6, ldc: 6, ..ok }, FloatType::F32, &a, &b6, &c);
        assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
        // A k past the kernel's signed 32-bit tile arithmetic is refused before any buffer check.
        let huge = GemmParams { k: gemm::MAX_DIM + 1, lda: gemm::MAX_DIM + 1, ldb: gemm::MAX_DIM + 1, ..ok };
        let r = gemm::gemm(&rt, &huge, FloatType::F32, &a, &b, &c);
        assert!(matches!(&r, Err(Error::Shape { msg, .. }) if msg.contains("exceed")), "{r:?}");
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 32, failure_persistence: None, ..Default::default()
    })]

    /// The twin gives the same C for B stored as [n, k] ("nt") and for its transpose stored as [k, n] ("nn"),
    /// and scaling alpha scales C (bf16 products are exact in f64, so both hold to the last f32 bit).
    #[test]
    fn twin_layouts_agree_and_alpha_scales(m in 1usize..9, n in 1usize..9, k in 0usize..20, seed in 0u64..1000) {
        let mut rng = Rng::new(seed);
        let a: Vec<bf16> = random(&mut rng, m * k, -1.0, 1.0);
        let bt: Vec<bf16> = random(&mut rng, n * k, -1.0, 1.0);
        let bn: Vec<bf16> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
        let (mut c1, mut c2, mut c3) = (vec![0.0f32; m * n], vec![0.0f32; m * n], vec![0.0f32; m * n]);
        cpu::gemm(&GemmParams::packed(GemmLayout::Nt, m, n, k), &a, &bt, &mut c1).expect("shapes");
        cpu::gemm(&GemmParams::packed(GemmLayout::Nn, m, n, k), &a, &bn, &mut c2).expect("shapes");
        let doubled = GemmParams { alpha: 2.0, ..GemmParams::packed(GemmLayout::Nt, m, n, k) };
        cpu::gemm(&doubled, &a, &bt, &mut c3).expect("shapes");
        proptest::prop_assert_eq!(&c1, &c2);
        for (x, y) in c1.iter().zip(&c3) {
            proptest::prop_assert_eq!(2.0 * x, *y);
        }
    }
}
