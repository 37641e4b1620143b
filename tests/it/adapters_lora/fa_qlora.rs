//! LoRA-FA and QLoRA specifics: LoRA-FA's graph memory against the bytes predicted from the shapes, its
//! gradient correction, QLoRA over NF4 bases against the dequantized twin, the QLoRA step's peak memory, and the
//! trainable counts of LoRA / LoRA-FA / QLoRA on one model shape.

use rankfold_adapters::layer::AdapterLayer;
use rankfold_adapters::lora::{quantize_base, LoraConfig, LoraLayer};
use rankfold_adapters::testing::{assert_close, PathModel, TestModel, TestModelConfig};
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_tensor::memory::MemoryScope;
use rankfold_tensor::nn::{Linear, LinearModel, LinearSlot, Nf4Linear};
use rankfold_tensor::{DType, Device, Nf4Tensor, Rng, Tensor};

use super::{lora, randn};

/// The values of a tensor as f64.
fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).and_then(|t| t.to_vec::<f64>()).expect("a float tensor converts to f64")
}

/// A stack of square layers with SiLU between them, each a `LinearSlot` at `layers.<i>.proj`.
#[derive(Debug)]
struct Stack(Vec<LinearSlot>);

impl LinearModel for Stack {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        self.0
            .iter_mut()
            .enumerate()
            .map(|(i, s)| (format!("layers.{i}.proj"), s))
            .collect()
    }
}

/// Peak and after-forward live bytes of one training step (forward, loss, backward) through the stack.
fn step_memory(
    fa: bool,
    layers: usize,
    d: usize,
    tokens: usize,
    r: usize,
) -> (usize, usize, usize) {
    let mut rng = Rng::new(30);
    let stack = Stack(
        (0..layers)
            .map(|_| {
                LinearSlot::new(
                    Linear::new(d, d, false, &mut rng, DType::F32, Device::Cpu)
                        .unwrap()
                        .freeze(),
                )
            })
            .collect(),
    );
    let mut pm = PeftModel::new(stack, 31);
    pm.add_adapter(
        "default",
        Box::new(lora(TargetModules::AllLinear, r, 8.0).with_lora_fa(fa)),
    )
    .unwrap();
    let x = randn(&mut rng, &[tokens, d]);
    let n_params = pm.parameters().len();
    let scope = MemoryScope::new(Device::Cpu);
    let mut h = x.clone();
    for (i, s) in pm.model().0.iter().enumerate() {
        h = s.forward(&h).unwrap();
        if i + 1 < layers {
            h = h.silu().unwrap();
        }
    }
    let loss = h.sqr().unwrap().sum_all().unwrap();
    drop(h);
    let after_forward = scope.stats().live_bytes;
    let grads = loss.backward().unwrap();
    assert_eq!(
        grads.len(),
        n_params,
        "every trainable tensor gets a gradient"
    );
    let peak = scope.stats().peak_bytes;
    (peak, after_forward, n_params)
}

#[test]
fn lora_fa_keeps_only_a_x_for_the_adapter() {
    let (layers, d, tokens, r) = (4, 48, 256, 4);
    let (peak_lora, live_lora, np_lora) = step_memory(false, layers, d, tokens, r);
    let (peak_fa, live_fa, np_fa) = step_memory(true, layers, d, tokens, r);
    assert_eq!(
        (np_lora, np_fa),
        (2 * layers, layers),
        "LoRA trains A and B, LoRA-FA only B"
    );
    // LoRA keeps each layer's input x [tokens, d] for A's gradient. The first input is the data (allocated
    // before the scope); the other layers' inputs are SiLU outputs that nothing else keeps (SiLU keeps its
    // own input, the frozen base keeps nothing, LoRA-FA's frozen-A matmul keeps nothing).
    let predicted = (layers - 1) * tokens * d * 4;
    println!("LoRA vs LoRA-FA, {layers} layers d={d} tokens={tokens} r={r}: after forward {live_lora} vs {live_fa} B, peak of the step {peak_lora} vs {peak_fa} B, predicted difference {predicted} B");
    // What the LoRA-FA graph keeps, from the shapes: SiLU's inputs z [tokens, d] (all layers but the last), each
    // adapter's u = s·(x Aᵀ) [tokens, r], the output that the square keeps [tokens, d], and the f32 loss.
    let fa_graph = (layers - 1) * tokens * d * 4 + layers * tokens * r * 4 + tokens * d * 4 + 4;
    assert_eq!(
        live_fa, fa_graph,
        "LoRA-FA graph memory after the forward pass"
    );
    assert_eq!(
        live_lora - live_fa,
        predicted,
        "LoRA keeps exactly the layer inputs on top"
    );
    // The peaks fall at different points of the backward pass (LoRA frees each kept input once its layer is
    // done), so the peak difference lies between the inputs of all layers but one and all of them, plus A's
    // gradients ([r, d] each) that only LoRA computes.
    let x_bytes = tokens * d * 4;
    let grads_a = layers * r * d * 4;
    let diff = peak_lora - peak_fa;
    assert!(
        diff >= predicted - x_bytes && diff <= predicted + grads_a,
        "peak difference {diff} vs predicted {predicted}"
    );
}

/// The LoRA layer at `path` among a model's linear slots.
fn lora_at<'a>(slots: &'a [(String, &mut LinearSlot)], path: &str) -> &'a LoraLayer {
    slots
        .iter()
        .find(|(p, _)| p == path)
        .expect("a linear module at the path")
        .1
        .downcast_ref::<LoraLayer>()
        .expect("a LoRA layer")
}

#[test]
fn qlora_runs_lora_and_lora_fa_over_nf4_bases() {
    let mut rng = Rng::new(40);
    let model = TestModel::new(TestModelConfig::default(), 41).unwrap();
    let mut pm = PeftModel::new(model, 42);
    let quantized = quantize_base(pm.model_mut(), &TargetModules::AllLinear, 64, true).unwrap();
    assert_eq!(quantized.len(), 12, "every linear layer but lm_head");
    assert!(pm.model().lm_head.downcast_ref::<Linear>().is_some());
    // The same model with the dequantized weights as dense layers: the independent reference.
    let weights: Vec<(Tensor, Option<Tensor>)> = pm
        .model_mut()
        .linear_slots()
        .iter()
        .map(|(_, s)| (s.layer().dense_weight().unwrap(), s.layer().bias()))
        .collect();
    let twin = || {
        let mut m = TestModel::new(TestModelConfig::default(), 41).unwrap();
        for ((_, slot), (w, b)) in m.linear_slots().into_iter().zip(&weights) {
            *slot = LinearSlot::new(Linear::from_weights(w.clone(), b.clone()).unwrap().freeze());
        }
        m
    };
    let targets = TargetModules::list(&["q_proj", "up_proj", "down_proj"]);
    for fa in [false, true] {
        let name = if fa { "fa" } else { "lora" };
        let c = lora(targets.clone(), 4, 8.0).with_lora_fa(fa);
        pm.add_adapter(name, Box::new(c.clone())).unwrap();
        pm.set_active(name).unwrap();
        // Draw the same adapter weights: same seed, same adapters in the same order.
        let mut dm = PeftModel::new(twin(), 42);
        dm.add_adapter("lora", Box::new(lora(targets.clone(), 4, 8.0)))
            .unwrap();
        if fa {
            dm.add_adapter(name, Box::new(c)).unwrap();
        }
        dm.set_active(name).unwrap();
        let x = randn(&mut rng, &[3, 13]);
        let (yq, yd) = (
            pm.model().forward(&x).unwrap(),
            dm.model().forward(&x).unwrap(),
        );
        assert_close(
            &yq,
            &yd,
            1e-4,
            1e-4,
            "NF4 base vs its dequantized dense twin",
        );
        let (gq, gd) = (
            yq.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
            yd.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
        );
        let (pq, pd) = (pm.parameters(), dm.parameters());
        assert_eq!(pq.len(), if fa { 6 } else { 12 });
        for ((nq, tq), (nd, td)) in pq.iter().zip(&pd) {
            assert_eq!(nq, nd);
            assert_close(gq.get(tq).unwrap(), gd.get(td).unwrap(), 1e-4, 1e-3, nq);
        }
    }
    // Merging into NF4 requantizes: the merged weight is quantize(dequantize(W) + ΔW), bit for bit.
    pm.set_active("lora").unwrap();
    let path = "model.layers.0.mlp.up_proj";
    let (w_before, delta) = {
        let slots = pm.model_mut().linear_slots();
        let l = lora_at(&slots, path);
        (
            l.base().dense_weight().unwrap(),
            l.merged_weight_delta("lora").unwrap().0,
        )
    };
    pm.merge().unwrap();
    let slots = pm.model_mut().linear_slots();
    let l = lora_at(&slots, path);
    let q = l.base().as_any().downcast_ref::<Nf4Linear>().unwrap();
    let want = Nf4Tensor::quantize(&w_before.add(&delta).unwrap(), 64, true).unwrap();
    assert_eq!(q.weight().packed(), want.packed());
}

#[test]
fn lora_fa_gradient_correction_through_the_model() {
    let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 80).unwrap(), 81);
    let targets = TargetModules::list(&["q_proj", "down_proj"]);
    pm.add_adapter("fa", Box::new(lora(targets, 3, 6.0).with_lora_fa(true)))
        .unwrap();
    let x = randn(&mut Rng::new(82), &[4, 13]);
    let mut grads = pm
        .model()
        .forward(&x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let params = pm.parameters();
    let before: Vec<Tensor> = params
        .iter()
        .map(|(_, t)| grads.get(t).unwrap().clone())
        .collect();
    assert_eq!(
        rankfold_adapters::lora_fa::correct_lora_fa_grads(&mut pm, &mut grads).unwrap(),
        4
    );
    let mut slots = pm.model_mut().linear_slots();
    let mut i = 0;
    for (_, s) in slots.iter_mut() {
        let Some(l) = s.downcast_ref::<LoraLayer>() else {
            continue;
        };
        let (a, b) = l.lora_tensors("fa").unwrap();
        let want = rankfold_adapters::lora_fa::corrected_grad_b(&before[i], &a, 2.0).unwrap();
        assert_close(
            grads.get(&b).unwrap(),
            &want,
            0.0,
            0.0,
            "corrected B gradient",
        );
        i += 1;
    }
}

/// The trainable-parameter counts of LoRA, LoRA-FA and QLoRA on one model shape (TestModel's default: hidden
/// 13, ffn 21, 2 blocks, vocab 11; all-linear, r = 4), against r·(in + out) (LoRA) and r·out (LoRA-FA) per module.
#[test]
fn trainable_counts_per_method() {
    let cfg = TestModelConfig::default();
    let (d, f) = (cfg.hidden, cfg.ffn);
    let r = 4;
    // Per block: four d→d attention projections, up d→f, down f→d.
    let lora_count = cfg.layers * (4 * r * (d + d) + r * (d + f) + r * (f + d));
    let fa_count = cfg.layers * (4 * r * d + r * f + r * d);
    for (name, fa, nf4, want) in [
        ("LoRA", false, false, lora_count),
        ("LoRA-FA", true, false, fa_count),
        ("QLoRA", false, true, lora_count),
    ] {
        let mut pm = PeftModel::new(TestModel::new(cfg, 90).unwrap(), 91);
        let base = pm.model().base_parameter_count();
        if nf4 {
            quantize_base(pm.model_mut(), &TargetModules::AllLinear, 64, true).unwrap();
        }
        pm.add_adapter(
            "default",
            Box::new(
                LoraConfig::new(TargetModules::AllLinear)
                    .with_rank(r, 8.0)
                    .with_lora_fa(fa),
            ),
        )
        .unwrap();
        let rep = pm.trainable_report();
        println!("{name:8} r={r} all-linear on TestModel {cfg:?}: {rep}");
        assert_eq!(rep.trainable, want, "{name}");
        assert_eq!(
            rep.total,
            base + lora_count,
            "{name}: base + every adapter tensor (A and B)"
        );
    }
}

/// QLoRA keeps no full-precision copy of an NF4 weight across a step: the whole step's peak stays far below
/// the bytes of one dense weight.
#[test]
fn qlora_step_never_holds_a_dense_weight() {
    let (inf, out, tokens) = (512, 384, 4);
    let mut rng = Rng::new(110);
    let lin = Linear::new(inf, out, true, &mut rng, DType::F32, Device::Cpu)
        .unwrap()
        .freeze();
    let mut pm = PeftModel::new(PathModel::default(), 111);
    pm.model_mut()
        .push("blk.proj", Nf4Linear::quantize(&lin, 64, true).unwrap());
    pm.add_adapter("default", Box::new(lora(TargetModules::AllLinear, 8, 16.0)))
        .unwrap();
    let x = randn(&mut rng, &[tokens, inf]).with_requires_grad(true);
    let scope = MemoryScope::new(Device::Cpu);
    let y = pm.model().slot("blk.proj").unwrap().forward(&x).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let peak = scope.stats().peak_bytes;
    assert_eq!(grads.len(), 3, "A, B and x get gradients");
    let dense = inf * out * 4;
    println!("QLoRA step on a {out}x{inf} NF4 layer, {tokens} tokens: peak {peak} B vs {dense} B for a dense f32 weight");
    assert!(peak < dense / 8, "peak {peak} B");
}

/// PiSSA over an NF4 base: A and B come from the dequantized weight's SVD and the residual is requantized, so
/// at init the layer equals the NF4 layer up to one more NF4 rounding of the residual.
#[test]
fn pissa_over_nf4_requantizes_the_residual() {
    let mut rng = Rng::new(130);
    let lin = Linear::new(96, 40, true, &mut rng, DType::F32, Device::Cpu)
        .unwrap()
        .freeze();
    let q = Nf4Linear::quantize(&lin, 64, true).unwrap();
    let mut pm = PeftModel::new(PathModel::default(), 131);
    pm.model_mut().push("blk.proj", q.clone());
    let mut c = LoraConfig::new(TargetModules::AllLinear).with_rank(4, 8.0);
    c.init_lora_weights = rankfold_adapters::lora::LoraInit::Pissa { niter: None };
    pm.add_adapter("default", Box::new(c)).unwrap();
    let l = pm
        .model()
        .slot("blk.proj")
        .unwrap()
        .downcast_ref::<LoraLayer>()
        .unwrap();
    let residual = l
        .base()
        .as_any()
        .downcast_ref::<Nf4Linear>()
        .expect("the residual stays NF4");
    // The residual is exactly quantize(dequantize(W) − s·B·A).
    let w = q.weight().dequantize(DType::F32).unwrap();
    let delta = l.merged_weight_delta("default").unwrap().0;
    let want = Nf4Tensor::quantize(&w.sub(&delta).unwrap(), 64, true).unwrap();
    assert_eq!(residual.weight().packed(), want.packed());
    let x = randn(&mut rng, &[5, 96]);
    let y = pm.model().slot("blk.proj").unwrap().forward(&x).unwrap();
    let y_nf4 = rankfold_tensor::nn::LinearLayer::forward(&q, &x).unwrap();
    // One NF4 rounding of the residual: |Δw| ≤ absmax/2 per block gap; the outputs stay close in norm.
    let (a, b) = (y.to_vec::<f64>().unwrap(), y_nf4.to_vec::<f64>().unwrap());
    let err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = b.iter().map(|q| q * q).sum::<f64>().sqrt();
    assert!(err < 0.1 * norm, "relative output change {}", err / norm);
}

/// QLoRA in bf16 (the paper's compute dtype): the NF4 weight stands for a bf16 weight, the adapter is bf16, and
/// a step runs end to end, close to the same step in f32.
#[test]
fn qlora_in_bf16_tracks_f32() {
    let mut rng = Rng::new(150);
    let lin = Linear::new(70, 33, true, &mut rng, DType::F32, Device::Cpu)
        .unwrap()
        .freeze();
    let lin16 = Linear::from_weights(
        lin.weight().to_dtype(DType::BF16).unwrap(),
        lin.bias().map(|b| b.to_dtype(DType::BF16).unwrap()),
    )
    .unwrap();
    let x = randn(&mut rng, &[6, 70]);
    let mut outs = Vec::new();
    let mut f32_parts = None;
    for (l, dt) in [
        (lin16, DType::BF16),
        (
            Linear::from_weights(
                lin.weight()
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
                lin.bias().cloned(),
            )
            .unwrap(),
            DType::F32,
        ),
    ] {
        let mut pm = PeftModel::new(PathModel::default(), 151);
        pm.model_mut()
            .push("blk.proj", Nf4Linear::quantize(&l, 64, true).unwrap());
        pm.add_adapter("default", Box::new(lora(TargetModules::AllLinear, 4, 8.0)))
            .unwrap();
        let params = pm.parameters();
        assert!(
            params.iter().all(|(_, t)| t.dtype() == dt),
            "the adapter takes the base's dtype"
        );
        let y = pm
            .model()
            .slot("blk.proj")
            .unwrap()
            .forward(&x.to_dtype(dt).unwrap())
            .unwrap();
        assert_eq!(y.dtype(), dt);
        let grads = y
            .to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(grads.len(), 2);
        outs.push(y.to_dtype(DType::F32).unwrap());
        if dt == DType::F32 {
            let p = pm.parameters();
            let get = |k: &str| p.iter().find(|(n, _)| n.contains(k)).map(|(_, t)| f64s(t)).unwrap();
            f32_parts = Some((get("lora_A"), get("lora_B")));
        }
    }
    // bf16 keeps 8 bits of mantissa: agree to a few parts in a hundred of the output scale.
    // The bound of the bf16 arithmetic, per output element: every operand (x, the dequantized weight, A, B), the
    // intermediate x·Aᵀ and each output (base product, branch, their sum) is rounded to bf16 once, each rounding a
    // relative error of at most u = 2⁻⁸; the f32 path rounds nothing that large. So |y16 − y32| ≤ 6u·(Σ|x||Ŵ| + |b|
    // + s·Σ_r (Σ_k|x||A|)·|B|) + 2u·|y32|, which a dropped bias or adapter term exceeds.
    let (a, b) = f32_parts.unwrap();
    let w = f64s(&Nf4Tensor::quantize(&lin.weight().to_dtype(DType::BF16).unwrap(), 64, true)
        .unwrap()
        .dequantize(DType::F32)
        .unwrap());
    let bias = f64s(lin.bias().unwrap());
    let (xv, y16, y32) = (f64s(&x), f64s(&outs[0]), f64s(&outs[1]));
    let (u, s, r) = (1.0 / 256.0, 8.0 / 4.0, 4);
    for i in 0..6 {
        for j in 0..33 {
            let base: f64 = (0..70).map(|k| (xv[i * 70 + k] * w[j * 70 + k]).abs()).sum::<f64>() + bias[j].abs();
            let branch: f64 = (0..r)
                .map(|q| (0..70).map(|k| (xv[i * 70 + k] * a[q * 70 + k]).abs()).sum::<f64>() * b[j * r + q].abs())
                .sum();
            let (got, want) = (y16[i * 33 + j], y32[i * 33 + j]);
            let bound = 6.0 * u * (base + s * branch) + 2.0 * u * want.abs();
            assert!((got - want).abs() <= bound, "bf16 vs f32 QLoRA y[{i},{j}]: {got} vs {want}, bound {bound}");
        }
    }
}
