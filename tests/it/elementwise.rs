//! `kernels/elementwise.cu` on every runtime against its CPU twin: all ops, f32 and bf16, contiguous, strided,
//! broadcast, rank-6, one-element and empty views; bad layouts give typed errors.

use std::sync::Arc;

use anyhow::Result;
use half::bf16;
use rankfold_kernels::elementwise::{self, cpu, BinaryOp, DeviceLayout, Element, UnaryOp};
use rankfold_kernels::{Error, GpuBuffer, GpuRuntime};
use rankfold_tensor::Rng;

use crate::gpu::{check_frobenius, random, runtimes, tol_of};

/// One test layout: output dims and, per input, its element strides and the length of its buffer.
struct Case {
    name: &'static str,
    dims: Vec<usize>,
    inputs: Vec<(Vec<usize>, usize)>,
}

/// Contiguous strides and the exact buffer length of a view of `dims`.
fn dense(dims: &[usize]) -> (Vec<usize>, usize) {
    (elementwise::contiguous_strides(dims), dims.iter().product())
}

/// The layouts each op runs on (`inputs` entries: 1 for unary, 2 for binary).
fn cases(inputs: usize) -> Vec<Case> {
    let two = |a: (Vec<usize>, usize), b: (Vec<usize>, usize)| {
        if inputs == 2 {
            vec![a, b]
        } else {
            vec![a]
        }
    };
    vec![
        // 703 elements: not a multiple of the 256-thread block.
        Case { name: "contiguous 37x19", dims: vec![37, 19], inputs: two(dense(&[37, 19]), dense(&[37, 19])) },
        Case { name: "one element", dims: vec![1], inputs: two(dense(&[1]), dense(&[1])) },
        // a is the transpose of a [33, 7] buffer; b is a [7] row broadcast over dims 0 and 2 (stride 0).
        Case {
            name: "transposed and broadcast 7x33x3",
            dims: vec![7, 33, 3],
            inputs: two((vec![1, 21, 7], 7 * 33 * 3), (vec![1, 0, 0], 7)),
        },
        // Rank 6 with size-1 dims, a scalar broadcast for b, and padded rows (stride 13 over 5 columns) for a.
        Case {
            name: "rank 6 padded and scalar",
            dims: vec![2, 1, 3, 2, 1, 5],
            inputs: two((vec![78, 78, 26, 13, 5, 1], 2 * 78), (vec![0; 6], 1)),
        },
    ]
}

/// Inputs that stay inside the op's domain: positive where it takes a log or a root or divides.
fn domain(op: Option<UnaryOp>) -> (f64, f64) {
    match op {
        Some(UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip) => (0.05, 6.0),
        Some(UnaryOp::Exp) => (-20.0, 20.0),
        _ => (-6.0, 6.0),
    }
}

fn binary_on<T: Element>(rt: &Arc<dyn GpuRuntime>, rt_name: &str, rng: &mut Rng) -> Result<()> {
    for case in cases(2) {
        let layout = DeviceLayout::new(rt, &case.dims, &[&case.inputs[0].0, &case.inputs[1].0])?;
        for op in BinaryOp::ALL {
            let a: Vec<T> = random(rng, case.inputs[0].1, -4.0, 4.0);
            // Divisors keep away from zero; the sign still varies.
            let b: Vec<T> = random::<T>(rng, case.inputs[1].1, 0.25, 4.0)
                .into_iter()
                .map(|v| if rng.uniform() < 0.5 { T::from_f32(-v.to_f32()) } else { v })
                .collect();
            let want = cpu::binary(op, &case.dims, &a, &case.inputs[0].0, &b, &case.inputs[1].0)?;
            let (ga, gb) = (GpuBuffer::from_slice(rt, &a)?, GpuBuffer::from_slice(rt, &b)?);
            let gy = GpuBuffer::zeroed(rt, want.len() * std::mem::size_of::<T>())?;
            elementwise::binary(rt, op, T::TYPE, &ga, &gb, &gy, &layout)?;
            let got: Vec<T> = gy.to_vec()?;
            let what = format!("{rt_name} {op:?} {:?} {}", T::TYPE, case.name);
            check_frobenius(&got, &want, tol_of::<T>(), &what)?;
        }
    }
    Ok(())
}

fn unary_on<T: Element>(rt: &Arc<dyn GpuRuntime>, rt_name: &str, rng: &mut Rng) -> Result<()> {
    for case in cases(1) {
        let layout = DeviceLayout::new(rt, &case.dims, &[&case.inputs[0].0])?;
        for op in UnaryOp::ALL {
            let (lo, hi) = domain(Some(op));
            let x: Vec<T> = random(rng, case.inputs[0].1, lo, hi);
            let want = cpu::unary(op, &case.dims, &x, &case.inputs[0].0)?;
            let gx = GpuBuffer::from_slice(rt, &x)?;
            let gy = GpuBuffer::zeroed(rt, want.len() * std::mem::size_of::<T>())?;
            elementwise::unary(rt, op, T::TYPE, &gx, &gy, &layout)?;
            let got: Vec<T> = gy.to_vec()?;
            let what = format!("{rt_name} {op:?} {:?} {}", T::TYPE, case.name);
            check_frobenius(&got, &want, tol_of::<T>(), &what)?;
        }
    }
    Ok(())
}

#[test]
fn binary_ops_match_the_cpu_twin() -> Result<()> {
    let mut rng = Rng::new(0xE1E7);
    for (name, rt) in runtimes()? {
        binary_on::<f32>(&rt, name, &mut rng)?;
        binary_on::<bf16>(&rt, name, &mut rng)?;
    }
    Ok(())
}

#[test]
fn unary_ops_match_the_cpu_twin() -> Result<()> {
    let mut rng = Rng::new(0x0E1E);
    for (name, rt) in runtimes()? {
        unary_on::<f32>(&rt, name, &mut rng)?;
        unary_on::<bf16>(&rt, name, &mut rng)?;
    }
    Ok(())
}

#[test]
fn size_one_dims_keep_the_fast_path() -> Result<()> {
    let mut rng = Rng::new(0x1D1D);
    for (name, rt) in runtimes()? {
        // Dims of size 1 carry arbitrary strides; the views are still dense, so nothing is uploaded.
        let (dims, strides) = ([1usize, 37, 1, 5], [999usize, 5, 3, 1]);
        let layout = DeviceLayout::new(&rt, &dims, &[&strides, &strides])?;
        anyhow::ensure!(layout.is_contiguous(), "{name}: size-1 dims forced the strided path");
        let a: Vec<f32> = random(&mut rng, 185, -2.0, 2.0);
        let b: Vec<f32> = random(&mut rng, 185, 0.5, 2.0);
        let want = cpu::binary(BinaryOp::Div, &dims, &a, &strides, &b, &strides)?;
        let (ga, gb, gy) =
            (GpuBuffer::from_slice(&rt, &a)?, GpuBuffer::from_slice(&rt, &b)?, GpuBuffer::zeroed(&rt, 185 * 4)?);
        elementwise::binary(&rt, BinaryOp::Div, elementwise::FloatType::F32, &ga, &gb, &gy, &layout)?;
        check_frobenius(&gy.to_vec::<f32>()?, &want, 1e-5, &format!("{name} size-1 dims"))?;
    }
    Ok(())
}

#[test]
fn empty_outputs_launch_nothing() -> Result<()> {
    for (_, rt) in runtimes()? {
        let layout = DeviceLayout::new(&rt, &[0, 4], &[&[4, 1]])?;
        let x = GpuBuffer::zeroed(&rt, 0)?;
        let y = GpuBuffer::zeroed(&rt, 0)?;
        elementwise::unary(&rt, UnaryOp::Exp, elementwise::FloatType::F32, &x, &y, &layout)?;
    }
    Ok(())
}

#[test]
fn bad_layouts_and_buffers_are_typed_errors() -> Result<()> {
    use elementwise::FloatType::F32;
    for (_, rt) in runtimes()? {
        // Rank 7, and strides that do not match the rank.
        let seven = [1usize; 7];
        assert!(matches!(DeviceLayout::new(&rt, &seven, &[&seven]), Err(Error::Shape { .. })));
        assert!(matches!(DeviceLayout::new(&rt, &[2, 3], &[&[3]]), Err(Error::Shape { .. })));
        // A view that reaches past its buffer: [4, 5] padded to 6 columns needs 23 elements, the buffer has 20.
        let layout = DeviceLayout::new(&rt, &[4, 5], &[&[6, 1]])?;
        let x = GpuBuffer::from_slice(&rt, &[0.0f32; 20])?;
        let y = GpuBuffer::zeroed(&rt, 20 * 4)?;
        assert!(matches!(elementwise::unary(&rt, UnaryOp::Neg, F32, &x, &y, &layout), Err(Error::Shape { .. })));
        // An output one element short.
        let layout = DeviceLayout::contiguous(&[4, 5], 2)?;
        let a = GpuBuffer::from_slice(&rt, &[0.0f32; 20])?;
        let short = GpuBuffer::zeroed(&rt, 19 * 4)?;
        let r = elementwise::binary(&rt, BinaryOp::Add, F32, &a, &a, &short, &layout);
        assert!(matches!(r, Err(Error::BufferTooSmall { name: "y", .. })), "{r:?}");
        // A unary op handed a two-input layout.
        assert!(matches!(elementwise::unary(&rt, UnaryOp::Neg, F32, &a, &y, &layout), Err(Error::Shape { .. })));
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 32, failure_persistence: None, ..Default::default()
    })]

    /// The twin on a broadcast view equals the twin on that view materialized by explicit index loops.
    #[test]
    fn twin_broadcast_equals_materialized(
        dims in proptest::collection::vec(1usize..5, 1..5), mask in 0u32..16, seed in 0u64..1000,
    ) {
        let rank = dims.len();
        // b has size 1 (stride 0) in the dims whose bit is set in `mask`, and is dense over the rest.
        let bdims: Vec<usize> = (0..rank).map(|d| if mask >> d & 1 == 1 { 1 } else { dims[d] }).collect();
        let bdense = elementwise::contiguous_strides(&bdims);
        let bstrides: Vec<usize> = (0..rank).map(|d| if bdims[d] == 1 { 0 } else { bdense[d] }).collect();
        let n: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let a: Vec<f32> = random(&mut rng, n, -3.0, 3.0);
        let b: Vec<f32> = random(&mut rng, bdims.iter().product(), -3.0, 3.0);
        // Materialize b over dims: walk the output index as a mixed-radix counter.
        let mut full = Vec::with_capacity(n);
        let mut idx = vec![0usize; rank];
        for _ in 0..n {
            let off: usize = (0..rank).map(|d| if bdims[d] == 1 { 0 } else { idx[d] * bdense[d] }).sum();
            full.push(b[off]);
            for d in (0..rank).rev() {
                idx[d] += 1;
                if idx[d] < dims[d] { break; }
                idx[d] = 0;
            }
        }
        let dense = elementwise::contiguous_strides(&dims);
        let got = cpu::binary(BinaryOp::Sub, &dims, &a, &dense, &b, &bstrides).expect("views");
        let want = cpu::binary(BinaryOp::Sub, &dims, &a, &dense, &full, &dense).expect("views");
        proptest::prop_assert_eq!(got, want);
    }
}
