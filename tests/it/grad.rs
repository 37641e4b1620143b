//! Backward of every differentiable op against f64 central finite differences, on random inputs of random
//! awkward shapes, including broadcasting and non-contiguous views.

use proptest::prelude::*;
use rankfold_tensor::{CrossEntropyOpts, Device, RopeStyle, Rng, Tensor};

use crate::common::{check_grads, uniform};

fn run(r: anyhow::Result<()>) -> Result<(), TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{e:#}")))
}

/// Values in [lo, hi) kept at least `gap` away from `avoid`, for ops with a kink or pole there.
fn away(rng: &mut Rng, n: usize, lo: f64, hi: f64, avoid: f64, gap: f64) -> Vec<f64> {
    uniform(rng, n, lo, hi).into_iter().map(|v| if (v - avoid).abs() < gap { avoid + gap.copysign(v - avoid + 1e-300) } else { v }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unary_ops(seed in any::<u64>(), a in 1usize..5, b in 1usize..6) {
        let mut rng = Rng::new(seed);
        let n = a * b;
        let any = uniform(&mut rng, n, -2.0, 2.0);
        let pos = uniform(&mut rng, n, 0.3, 3.0);
        let kinked = away(&mut rng, n, -2.0, 2.0, 0.0, 0.05);
        let d = vec![a, b];
        type F = fn(&Tensor) -> rankfold_tensor::Result<Tensor>;
        let smooth: [F; 9] = [Tensor::neg, Tensor::sqr, Tensor::exp, Tensor::tanh, Tensor::sigmoid, Tensor::gelu, Tensor::gelu_erf, Tensor::silu, |x| x.affine(-1.5, 0.25)];
        for f in smooth {
            run(check_grads(&[(d.clone(), any.clone())], |x| f(&x[0])))?;
        }
        let positive: [F; 5] = [Tensor::sqrt, Tensor::rsqrt, Tensor::recip, Tensor::log, |x| x.powf(1.7)];
        for f in positive {
            run(check_grads(&[(d.clone(), pos.clone())], |x| f(&x[0])))?;
        }
        let at_kink: [F; 2] = [Tensor::abs, Tensor::relu];
        for f in at_kink {
            run(check_grads(&[(d.clone(), kinked.clone())], |x| f(&x[0])))?;
        }
        // On a transposed (non-contiguous) view.
        run(check_grads(&[(d.clone(), any.clone())], |x| x[0].t()?.gelu()?.exp()))?;
    }

    #[test]
    fn binary_ops_broadcast(seed in any::<u64>(), a in 1usize..4, b in 1usize..4, c in 1usize..5) {
        let mut rng = Rng::new(seed);
        let l = (vec![a, b, c], uniform(&mut rng, a * b * c, -2.0, 2.0));
        let r = (vec![b, 1], away(&mut rng, b, -2.0, 2.0, 0.0, 0.3));
        let r2 = (vec![c], uniform(&mut rng, c, -2.0, 2.0));
        for op in 0..4 {
            run(check_grads(&[l.clone(), r.clone()], |x| match op {
                0 => x[0].add(&x[1]),
                1 => x[1].sub(&x[0]),
                2 => x[0].mul(&x[1]),
                _ => x[0].div(&x[1]),
            }))?;
        }
        // Maximum/minimum away from ties: shift rhs so no element is within 0.05 of the lhs values.
        let lv = l.1.clone();
        let rv: Vec<f64> = r2.1.iter().enumerate().map(|(i, &v)| if lv.iter().skip(i).step_by(c).any(|&u| (u - v).abs() < 0.05) { v + 0.11 } else { v }).collect();
        let r3 = (vec![c], rv);
        if l.1.iter().enumerate().all(|(k, &u)| (u - r3.1[k % c]).abs() > 0.01) {
            run(check_grads(&[l.clone(), r3.clone()], |x| x[0].maximum(&x[1])))?;
            run(check_grads(&[l.clone(), r3.clone()], |x| x[1].minimum(&x[0])))?;
        }
        // Same tensor on both sides, and a permuted lhs.
        run(check_grads(&[l.clone()], |x| x[0].mul(&x[0])))?;
        run(check_grads(&[l.clone(), r2.clone()], |x| x[0].permute(&[2, 0, 1])?.contiguous()?.permute(&[1, 2, 0])?.mul(&x[1])))?;
    }

    #[test]
    fn reductions(seed in any::<u64>(), a in 1usize..4, b in 1usize..5, c in 1usize..5) {
        let mut rng = Rng::new(seed);
        // Distinct values so max/min have no ties.
        let mut v: Vec<f64> = (0..a * b * c).map(|i| i as f64 * 0.37 - 1.0).collect();
        rng.shuffle(&mut v);
        let x = (vec![a, b, c], v);
        run(check_grads(&[x.clone()], |t| t[0].sum(&[1], false)))?;
        run(check_grads(&[x.clone()], |t| t[0].sum(&[0, 2], true)))?;
        run(check_grads(&[x.clone()], |t| t[0].mean(&[-1], false)))?;
        run(check_grads(&[x.clone()], |t| t[0].max(&[1], true)))?;
        run(check_grads(&[x.clone()], |t| t[0].min(&[0, 2], false)))?;
        run(check_grads(&[x.clone()], |t| t[0].transpose(0, 2)?.max(&[-1], false)))?;
        run(check_grads(&[x.clone()], |t| t[0].mean_all()))?;
    }

    #[test]
    fn matmul_grads(seed in any::<u64>(), m in 1usize..5, k in 1usize..5, n in 1usize..5, b in 1usize..3) {
        let mut rng = Rng::new(seed);
        let l = (vec![b, m, k], uniform(&mut rng, b * m * k, -1.0, 1.0));
        let r = (vec![k, n], uniform(&mut rng, k * n, -1.0, 1.0));
        let rt = (vec![n, k], uniform(&mut rng, n * k, -1.0, 1.0));
        run(check_grads(&[l.clone(), r.clone()], |x| x[0].matmul(&x[1])))?;
        // Transposed rhs view (as a Linear layer does) and a transposed lhs.
        run(check_grads(&[l.clone(), rt.clone()], |x| x[0].matmul(&x[1].t()?)))?;
        run(check_grads(&[l.clone(), rt.clone()], |x| x[0].t()?.contiguous()?.t()?.matmul(&x[1].t()?)))?;
        // Batched rhs broadcast against a batch-1 lhs.
        let rb = (vec![b, k, n], uniform(&mut rng, b * k * n, -1.0, 1.0));
        let l1 = (vec![1, m, k], uniform(&mut rng, m * k, -1.0, 1.0));
        run(check_grads(&[l1, rb], |x| x[0].matmul(&x[1])))?;
    }

    #[test]
    fn views_and_joins(seed in any::<u64>(), a in 1usize..4, b in 2usize..5, c in 1usize..4) {
        let mut rng = Rng::new(seed);
        let x = (vec![a, b, c], uniform(&mut rng, a * b * c, -1.0, 1.0));
        let y = (vec![a, 1, c], uniform(&mut rng, a * c, -1.0, 1.0));
        run(check_grads(&[x.clone()], |t| t[0].reshape((a * b, c))?.sqr()))?;
        run(check_grads(&[x.clone()], |t| t[0].narrow(1, 1, b - 1)?.exp()))?;
        run(check_grads(&[x.clone()], |t| t[0].transpose(0, 1)?.narrow(0, 0, 1)?.contiguous()?.reshape(a * c)))?;
        run(check_grads(&[y.clone()], |t| t[0].broadcast_as((2, a, b, c))?.tanh()))?;
        run(check_grads(&[y.clone()], |t| t[0].squeeze(1)?.unsqueeze(0)?.sqr()))?;
        run(check_grads(&[x.clone(), y.clone()], |t| Tensor::cat(&[&t[0], &t[1].exp()?, &t[0]], 1)))?;
        run(check_grads(&[y.clone(), y.clone()], |t| Tensor::stack(&[&t[0], &t[1].sqr()?], 0)))?;
        run(check_grads(&[x.clone()], |t| {
            let parts = t[0].chunk(2, 1)?;
            parts[0].sum(&[1], true)?.mul(&parts[parts.len() - 1].sum(&[1], true)?)
        }))?;
        // where_cond and masked_fill route gradients by the mask.
        let mask = Tensor::from_vec((0..a * b * c).map(|i| (i % 3 == 0) as u8).collect::<Vec<_>>(), (a, b, c), Device::Cpu).unwrap();
        run(check_grads(&[x.clone(), y.clone()], |t| mask.where_cond(&t[0], &t[1])))?;
        run(check_grads(&[x.clone()], |t| t[0].masked_fill(&mask, -3.0)?.sqr()))?;
    }

    #[test]
    fn softmax_and_norms(seed in any::<u64>(), r in 1usize..4, d in 2usize..7) {
        let mut rng = Rng::new(seed);
        let x = (vec![r, 2, d], uniform(&mut rng, r * 2 * d, -3.0, 3.0));
        let w = (vec![d], uniform(&mut rng, d, 0.5, 1.5));
        let bias = (vec![d], uniform(&mut rng, d, -0.5, 0.5));
        run(check_grads(&[x.clone()], |t| t[0].softmax(-1)))?;
        run(check_grads(&[x.clone()], |t| t[0].softmax(0)))?;
        run(check_grads(&[x.clone()], |t| t[0].log_softmax(-1)))?;
        run(check_grads(&[x.clone()], |t| t[0].transpose(1, 2)?.log_softmax(1)))?;
        run(check_grads(&[x.clone(), w.clone(), bias.clone()], |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)))?;
        run(check_grads(&[x.clone()], |t| t[0].layer_norm(None, None, 1e-3)))?;
        run(check_grads(&[x.clone(), w.clone()], |t| t[0].rms_norm(Some(&t[1]), 1e-6)))?;
        run(check_grads(&[x.clone(), w.clone()], |t| t[0].t()?.contiguous()?.t()?.rms_norm(Some(&t[1]), 1e-6)))?;
    }

    #[test]
    fn indexing_and_losses(seed in any::<u64>(), n in 1usize..6, c in 2usize..6) {
        let mut rng = Rng::new(seed);
        let table = (vec![c, 3], uniform(&mut rng, c * 3, -1.0, 1.0));
        let ids: Vec<u32> = (0..n).map(|_| rng.below(c as u64) as u32).collect();
        let idt = Tensor::from_vec(ids.clone(), n, Device::Cpu).unwrap();
        run(check_grads(&[table.clone()], |t| t[0].embedding(&idt)))?;
        run(check_grads(&[table.clone()], |t| t[0].t()?.index_select(&idt, 1)))?;
        let gi: Vec<i64> = (0..3 * n).map(|_| rng.below(c as u64) as i64).collect();
        let git = Tensor::from_vec(gi, (n, 3), Device::Cpu).unwrap();
        let src = (vec![n, c], uniform(&mut rng, n * c, -1.0, 1.0));
        let gsrc = (vec![n, c], uniform(&mut rng, n * c, -1.0, 1.0));
        run(check_grads(&[gsrc.clone()], |t| t[0].gather(&git, 1)))?;
        run(check_grads(&[gsrc], |t| t[0].t()?.gather(&git.t()?, 0)))?;
        // Cross-entropy with an ignored target and label smoothing.
        let mut tg: Vec<i64> = (0..n).map(|_| rng.below(c as u64) as i64).collect();
        if n > 1 {
            tg[0] = -100;
        }
        let tt = Tensor::from_vec(tg, n, Device::Cpu).unwrap();
        for smoothing in [0.0, 0.1] {
            let opts = CrossEntropyOpts { ignore_index: Some(-100), label_smoothing: smoothing };
            run(check_grads(&[src.clone()], |t| t[0].cross_entropy(&tt, opts)))?;
        }
    }

    #[test]
    fn rope_and_dropout(seed in any::<u64>(), t in 1usize..5, h in 1usize..4) {
        let mut rng = Rng::new(seed);
        let d = 2 * h;
        let x = (vec![2, t, d], uniform(&mut rng, 2 * t * d, -1.0, 1.0));
        let (cos, sin) = rankfold_tensor::rope_tables(t, d, 10_000.0, rankfold_tensor::DType::F64, Device::Cpu).unwrap();
        for style in [RopeStyle::RotateHalf, RopeStyle::Interleaved] {
            run(check_grads(&[x.clone()], |v| v[0].rope(&cos, &sin, style)))?;
        }
        // A fixed dropout mask: the same seed for every evaluation.
        run(check_grads(&[x.clone()], |v| v[0].dropout(0.3, &mut Rng::new(seed))))?;
    }
}
