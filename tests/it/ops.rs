//! Forward numerics against independent references: softmax and cross-entropy at extreme logits, reductions,
//! masks, RoPE conventions, casts, and what autograd keeps alive (memory accounting).

use anyhow::Result;
use rankfold_tensor::memory::MemoryScope;
use rankfold_tensor::{causal_mask, padding_mask, rope_tables, CrossEntropyOpts, DType, Device, RopeStyle, Rng, Tensor};

use crate::common::{assert_close, t64, uniform, Tol};

fn softmax_ref(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
    row.iter().map(|v| (v - m).exp() / s).collect()
}

#[test]
fn softmax_is_stable_at_large_logits() -> Result<()> {
    let row = [1e4, -1e4, 9999.0, 0.0, -3.0, 1e4 - 0.5];
    let x = Tensor::from_vec(row.iter().map(|&v| v as f32).collect::<Vec<_>>(), (1, 6), Device::Cpu)?;
    let want = softmax_ref(&row);
    let got: Vec<f64> = x.softmax(-1)?.to_vec()?;
    assert_close(&got, &want, Tol { rel: 1e-5, abs: 1e-7 }, "softmax")?;
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    let want_log: Vec<f64> = row.iter().map(|v| v - lse).collect();
    let got_log: Vec<f64> = x.log_softmax(-1)?.to_vec()?;
    // −2e4 stays finite in log space even though its probability underflows to 0.
    assert_close(&got_log, &want_log, Tol { rel: 1e-6, abs: 1e-3 }, "log_softmax")?;
    Ok(())
}

#[test]
fn cross_entropy_matches_formula_at_large_logits() -> Result<()> {
    let mut rng = Rng::new(5);
    let (n, c) = (7, 11);
    let mut v = uniform(&mut rng, n * c, -1e4, 1e4);
    v[3] = 1e4;
    let targets: Vec<i64> = vec![0, 3, -100, 10, 5, 5, 1];
    let eps = 0.1;
    let mut total = 0.0;
    let mut count = 0.0;
    for r in 0..n {
        if targets[r] == -100 {
            continue;
        }
        let row = &v[r * c..(r + 1) * c];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        let nll = lse - row[targets[r] as usize];
        let smooth = lse - row.iter().sum::<f64>() / c as f64;
        total += (1.0 - eps) * nll + eps * smooth;
        count += 1.0;
    }
    let want = total / count;
    let x = Tensor::from_vec(v.iter().map(|&f| f as f32).collect::<Vec<_>>(), (n, c), Device::Cpu)?;
    let t = Tensor::from_vec(targets, n, Device::Cpu)?;
    let got = x.cross_entropy(&t, CrossEntropyOpts { ignore_index: Some(-100), label_smoothing: eps })?.to_scalar()?;
    assert!(got.is_finite() && (got - want).abs() <= 1e-6 * want.abs() + 1e-3, "got {got}, want {want}");
    // A target outside the vocabulary is an error naming the op, not a panic.
    let bad = Tensor::from_vec(vec![0i64, 11, 0, 0, 0, 0, 0], n, Device::Cpu)?;
    let e = x.cross_entropy(&bad, CrossEntropyOpts::default()).unwrap_err().to_string();
    assert!(e.contains("cross_entropy") && e.contains("11"), "{e}");
    Ok(())
}

#[test]
fn reductions_match_loops() -> Result<()> {
    let mut rng = Rng::new(9);
    let (a, b, c) = (3, 5, 4);
    let v = uniform(&mut rng, a * b * c, -1.0, 1.0);
    let x = t64(v.clone(), &[a, b, c]);
    let at = |i: usize, j: usize, k: usize| v[(i * b + j) * c + k];
    let sum1: Vec<f64> = (0..a).flat_map(|i| (0..c).map(move |k| (0..b).map(|j| at(i, j, k)).sum())).collect();
    assert_close(&x.sum(&[1], false)?.to_vec()?, &sum1, Tol { rel: 1e-12, abs: 1e-12 }, "sum dim 1")?;
    let max02: Vec<f64> = (0..b).map(|j| (0..a).flat_map(|i| (0..c).map(move |k| (i, k))).map(|(i, k)| at(i, j, k)).fold(f64::MIN, f64::max)).collect();
    assert_close(&x.max(&[0, 2], false)?.to_vec()?, &max02, Tol { rel: 0.0, abs: 0.0 }, "max dims 0,2")?;
    let arg: Vec<u32> = x.argmax(-1, false)?.to_vec()?;
    for (r, &i) in arg.iter().enumerate() {
        let row = &v[r * c..(r + 1) * c];
        assert_eq!(row[i as usize], row.iter().cloned().fold(f64::MIN, f64::max));
    }
    let argmin_dim1: Vec<u32> = x.argmin(1, false)?.to_vec()?;
    for i in 0..a {
        for k in 0..c {
            let best = (0..b).min_by(|&p, &q| at(i, p, k).total_cmp(&at(i, q, k))).unwrap();
            assert_eq!(argmin_dim1[i * c + k] as usize, best);
        }
    }
    let mean_t: Vec<f64> = x.transpose(0, 2)?.mean(&[-1], false)?.to_vec()?;
    let want: Vec<f64> = (0..c).flat_map(|k| (0..b).map(move |j| (0..a).map(|i| at(i, j, k)).sum::<f64>() / a as f64)).collect();
    assert_close(&mean_t, &want, Tol { rel: 1e-12, abs: 1e-12 }, "mean of a transposed view")?;
    Ok(())
}

#[test]
fn masks_and_masked_softmax() -> Result<()> {
    let m: Vec<u8> = causal_mask(3, Device::Cpu)?.to_vec()?;
    assert_eq!(m, vec![1, 0, 0, 1, 1, 0, 1, 1, 1]);
    let p: Vec<u8> = padding_mask(&[2, 0, 3], 3, Device::Cpu)?.to_vec()?;
    assert_eq!(p, vec![1, 1, 0, 0, 0, 0, 1, 1, 1]);
    let scores = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6., 7., 8., 9.], (3, 3), Device::Cpu)?;
    let blocked = causal_mask(3, Device::Cpu)?.eq(&Tensor::zeros((), DType::U8, Device::Cpu)?)?;
    let probs: Vec<f64> = scores.masked_fill(&blocked, f64::NEG_INFINITY)?.softmax(-1)?.to_vec()?;
    let mut want = vec![1.0, 0.0, 0.0];
    want.extend(softmax_ref(&[4.0, 5.0]).into_iter().chain([0.0]));
    want.extend(softmax_ref(&[7.0, 8.0, 9.0]));
    assert_close(&probs, &want, Tol { rel: 1e-6, abs: 1e-7 }, "causal softmax")?;
    Ok(())
}

#[test]
fn rope_conventions_agree_up_to_a_permutation() -> Result<()> {
    let (t, d) = (5, 8);
    let mut rng = Rng::new(3);
    let x = t64(uniform(&mut rng, t * d, -1.0, 1.0), &[t, d]);
    let (cos, sin) = rope_tables(t, d, 10_000.0, DType::F64, Device::Cpu)?;
    // Interleaved on x equals rotate-half on x with pairs (2i, 2i+1) moved to (i, i + d/2), permuted back.
    let to_half: Vec<u32> = (0..d / 2).map(|i| 2 * i as u32).chain((0..d / 2).map(|i| 2 * i as u32 + 1)).collect();
    let perm = Tensor::from_vec(to_half.clone(), d, Device::Cpu)?;
    let mut back = vec![0u32; d];
    to_half.iter().enumerate().for_each(|(i, &p)| back[p as usize] = i as u32);
    let inv = Tensor::from_vec(back, d, Device::Cpu)?;
    let a: Vec<f64> = x.rope(&cos, &sin, RopeStyle::Interleaved)?.to_vec()?;
    let b: Vec<f64> = x.index_select(&perm, 1)?.rope(&cos, &sin, RopeStyle::RotateHalf)?.index_select(&inv, 1)?.to_vec()?;
    assert_close(&a, &b, Tol { rel: 1e-12, abs: 1e-12 }, "rope conventions")?;
    // A rotation keeps each pair's norm, and position 0 is the identity.
    let xv: Vec<f64> = x.to_vec()?;
    assert_close(&a[..d], &xv[..d], Tol { rel: 0.0, abs: 1e-15 }, "position 0")?;
    let pos1 = &a[d..2 * d];
    let angle = 1.0f64; // θ⁰ for the first pair at position 1.
    let want0 = xv[d] * angle.cos() - xv[d + 1] * angle.sin();
    assert!((pos1[0] - want0).abs() < 1e-12);
    Ok(())
}

#[test]
fn casts_round_to_nearest_even() -> Result<()> {
    let v = [1.0f32, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5e-3, 65504.0, 1e-8];
    let x = Tensor::from_vec(v.to_vec(), 6, Device::Cpu)?;
    let b: Vec<f32> = x.to_dtype(DType::BF16)?.to_vec()?;
    let want: Vec<f32> = v.iter().map(|&f| half::bf16::from_f32(f).to_f32()).collect();
    assert_eq!(b, want);
    assert_eq!(b[1], 1.0, "halfway rounds to even");
    assert_eq!(b[2], 1.0 + 4.0 / 256.0);
    let h: Vec<f32> = x.to_dtype(DType::F16)?.to_vec()?;
    assert_eq!(h[4], 65504.0);
    let i: Vec<i64> = Tensor::from_vec(vec![2.7f32, -2.7], 2, Device::Cpu)?.to_dtype(DType::I64)?.to_vec()?;
    assert_eq!(i, vec![2, -2]);
    Ok(())
}

#[test]
fn frozen_weight_does_not_keep_the_activation() -> Result<()> {
    let mut rng = Rng::new(1);
    let (rows, din, dout) = (64, 48, 16);
    let run = |trainable: bool, rng: &mut Rng| -> Result<usize> {
        let x = rng.uniform_tensor(-1.0, 1.0, (rows, din), DType::F32, Device::Cpu)?.with_requires_grad(true);
        let w = rng.uniform_tensor(-1.0, 1.0, (dout, din), DType::F32, Device::Cpu)?.with_requires_grad(trainable);
        let scope = MemoryScope::new(Device::Cpu);
        let h = x.add(&x)?; // [rows, din], saved by nothing but a matmul that needs it.
        let y = h.matmul(&w.t()?)?;
        drop(h);
        let loss = y.sum_all()?;
        let live = scope.stats().live_bytes;
        let grads = loss.backward()?;
        assert_eq!(grads.get(&w).is_some(), trainable);
        assert!(grads.get(&x).is_some());
        Ok(live)
    };
    let frozen = run(false, &mut rng)?;
    let trained = run(true, &mut rng)?;
    assert_eq!(trained - frozen, rows * din * 4, "only the trainable weight's gradient needs h");
    Ok(())
}

#[test]
fn errors_are_typed_not_panics() -> Result<()> {
    let x = Tensor::zeros((2, 3), DType::F32, Device::Cpu)?;
    assert!(x.reshape((4, 2)).unwrap_err().to_string().contains("reshape"));
    assert!(x.narrow(1, 2, 2).unwrap_err().to_string().contains("narrow"));
    assert!(x.add(&Tensor::zeros(4, DType::F32, Device::Cpu)?).unwrap_err().to_string().contains("add"));
    assert!(x.softmax(2).unwrap_err().to_string().contains("softmax"));
    let ids = Tensor::from_vec(vec![0u32, 5], 2, Device::Cpu)?;
    assert!(x.index_select(&ids, 1).unwrap_err().to_string().contains("index_select"));
    assert!(Tensor::zeros(2, DType::F32, Device::Sim).unwrap_err().to_string().contains("Sim"));
    assert!(x.sum_all()?.backward().unwrap_err().to_string().contains("backward"));
    Ok(())
}

#[test]
fn gradients_accumulate_across_steps() -> Result<()> {
    let mut rng = Rng::new(21);
    let w = rng.uniform_tensor(-1.0, 1.0, (3, 4), DType::F64, Device::Cpu)?.with_requires_grad(true);
    let xs: Vec<Tensor> = (0..2).map(|_| rng.uniform_tensor(-1.0, 1.0, (5, 4), DType::F64, Device::Cpu)).collect::<rankfold_tensor::Result<_>>()?;
    let loss = |x: &Tensor| -> rankfold_tensor::Result<Tensor> { x.matmul(&w.t()?)?.tanh()?.sum_all() };
    let mut acc = rankfold_tensor::GradStore::new();
    for x in &xs {
        loss(x)?.backward_into(&mut acc)?;
    }
    let (g0, g1) = (loss(&xs[0])?.backward()?, loss(&xs[1])?.backward()?);
    let want: Vec<f64> = g0.get(&w).unwrap().add(g1.get(&w).unwrap())?.to_vec()?;
    assert_close(&acc.get(&w).unwrap().to_vec()?, &want, Tol { rel: 1e-14, abs: 1e-14 }, "accumulated gradient")?;
    // A graph is used once: its saved tensors are released by the first backward pass.
    let l = loss(&xs[0])?;
    l.backward()?;
    assert!(l.backward().unwrap_err().to_string().contains("already"));
    Ok(())
}

/// index_select reads contiguous views in place (with their offset) and copies strided ones: every case equals a
/// gather written out from the flat values.
#[test]
fn index_select_on_offset_and_strided_views_matches_a_plain_gather() -> Result<()> {
    let mut rng = Rng::new(77);
    let (rows, cols) = (13, 7);
    let base = rng.normal_tensor(0.0, 1.0, vec![rows, cols], DType::F32, Device::Cpu)?;
    let values = base.to_vec_f32()?;
    let flat = &values;
    let ids = vec![4u32, 0, 8, 8, 2];
    let idt = Tensor::from_vec(ids.clone(), ids.len(), Device::Cpu)?;
    // Rows 3..12: contiguous with a non-zero offset.
    let got = base.narrow(0, 3, 9)?.index_select(&idt, 0)?.to_vec_f32()?;
    let want: Vec<f32> =
        ids.iter().flat_map(|&j| (0..cols).map(move |c| flat[(3 + j as usize) * cols + c])).collect();
    assert_eq!(got, want, "offset rows");
    // The transpose: strided, so copied first; selecting its rows picks columns of the base.
    let ids = vec![6u32, 1, 1, 3];
    let idt = Tensor::from_vec(ids.clone(), ids.len(), Device::Cpu)?;
    let got = base.t()?.index_select(&idt, 0)?.to_vec_f32()?;
    let want: Vec<f32> = ids.iter().flat_map(|&j| (0..rows).map(move |r| flat[r * cols + j as usize])).collect();
    assert_eq!(got, want, "strided columns");
    Ok(())
}
