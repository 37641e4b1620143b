//! GLoRA: every support shape against a plain-loop reference of the paper's formulas, both forward strategies,
//! merge/unmerge, f64 finite-difference gradients, PEFT's own files (tests/fixtures/peft/glora_*), save→load,
//! an NF4 base; the weight-sharing supernet and the evolutionary search are in [`supernet`].

mod supernet;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use rankfold_adapters::glora::{GloraConfig, GloraLayer, LayerChoice, Support};
use rankfold_adapters::testing::{TestModel, TestModelConfig};
use rankfold_adapters::{AdapterLayer, PeftModel, TargetModules};
use rankfold_tensor::nn::{Linear, LinearLayer, LinearModel, LinearSlot, Nf4Linear};
use rankfold_tensor::{no_grad, DType, Device, Rng, Tensor};

use crate::common::{assert_close, Tol};
use crate::peft_fixtures::FixtureModel;

const AB: [Support; 4] = [
    Support::LowRank(3),
    Support::Vector,
    Support::Scalar,
    Support::None,
];
const C: [Support; 3] = [Support::LowRank(2), Support::Vector, Support::None];
const DE: [Support; 3] = [Support::Vector, Support::Scalar, Support::None];

pub(super) fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().expect("readable tensor")
}

fn base(in_f: usize, out_f: usize, bias: bool, dtype: DType, rng: &mut Rng) -> Result<Linear> {
    Ok(Linear::new(in_f, out_f, bias, rng, dtype, Device::Cpu)?.freeze())
}

/// `y = x·W'ᵀ + b'` by plain f64 loops from the layer's PEFT tensors and the base weights: the paper's
/// `W' = W0 + W0⊙A + B`, `b' = b0 + b0⊙D + E + W0·C`, with PEFT's broadcasting of each path's shape.
fn reference(
    tensors: &[(String, Tensor)],
    w0: &Tensor,
    b0: Option<&Tensor>,
    x: &[f64],
    rows: usize,
) -> Vec<f64> {
    let t: HashMap<&str, (Vec<usize>, Vec<f64>)> = tensors
        .iter()
        .map(|(k, v)| (k.as_str(), (v.dims().to_vec(), f64s(v))))
        .collect();
    let (out_f, in_f) = (w0.dims()[0], w0.dims()[1]);
    let w = f64s(w0);
    // The value of path p at (row, col) of its full (broadcast) shape.
    let val = |p: &str, row: usize, col: usize| -> f64 {
        if let (Some((dd, xd)), Some((du, xu))) = (
            t.get(format!("{p}.Xd").as_str()),
            t.get(format!("{p}.Xu").as_str()),
        ) {
            let (r, n) = (dd[1], du[1]);
            return (0..r).map(|k| xd[row * r + k] * xu[k * n + col]).sum();
        }
        match t.get(format!("{p}.X").as_str()) {
            Some((_, x)) if x.len() == 1 => x[0],
            Some((_, x)) => x[row],
            None => 0.0,
        }
    };
    let mut wp = vec![0.0; out_f * in_f];
    for o in 0..out_f {
        for i in 0..in_f {
            wp[o * in_f + i] =
                w[o * in_f + i] * (1.0 + val("glora_A", o, i)) + val("glora_B", o, i);
        }
    }
    let bp: Vec<f64> = match b0 {
        Some(b) => {
            let b = f64s(b);
            (0..out_f)
                .map(|o| {
                    b[o] * (1.0 + val("glora_D", o, 0))
                        + val("glora_E", o, 0)
                        + (0..in_f)
                            .map(|i| w[o * in_f + i] * val("glora_C", i, 0))
                            .sum::<f64>()
                })
                .collect()
        }
        None => vec![0.0; out_f],
    };
    let mut y = vec![0.0; rows * out_f];
    for m in 0..rows {
        for o in 0..out_f {
            y[m * out_f + o] = bp[o]
                + (0..in_f)
                    .map(|i| x[m * in_f + i] * wp[o * in_f + i])
                    .sum::<f64>();
        }
    }
    y
}

#[test]
fn every_support_shape_matches_the_formulas_on_both_forward_paths() -> Result<()> {
    let mut rng = Rng::new(51);
    let (in_f, out_f) = (7, 5);
    let x = rng.normal_tensor(0.0, 1.0, (2, 3, in_f), DType::F32, Device::Cpu)?;
    let xv = f64s(&x);
    let mut n = 0;
    for has_bias in [true, false] {
        for (a, b, c, d, e) in itertools_5() {
            let choice = LayerChoice { a, b, c, d, e };
            let lin = base(in_f, out_f, has_bias, DType::F32, &mut rng)?;
            let (w0, b0) = (lin.weight().clone(), lin.bias().cloned());
            let mut layer = GloraLayer::new(Box::new(lin), "default", choice, false, &mut rng)?;
            ensure!(
                layer.choice("default")? == choice.effective(has_bias),
                "{choice}: bias paths must be off without a bias"
            );
            let want = reference(&layer.peft_tensors("default")?, &w0, b0.as_ref(), &xv, 6);
            for factorized in [false, true] {
                layer.factorized = factorized;
                let y = layer.forward(&x)?;
                ensure!(
                    y.dims() == [2, 3, out_f],
                    "{choice}: output dims {:?}",
                    y.dims()
                );
                assert_close(
                    &f64s(&y),
                    &want,
                    Tol {
                        rel: 1e-5,
                        abs: 1e-5,
                    },
                    &format!("{choice} bias={has_bias} factorized={factorized}"),
                )?;
            }
            n += 1;
        }
    }
    ensure!(n == 2 * 4 * 4 * 3 * 3 * 3);
    Ok(())
}

#[test]
fn peft_default_init_is_a_no_op_for_every_shape() -> Result<()> {
    let mut rng = Rng::new(57);
    let x = rng.normal_tensor(0.0, 1.0, (3, 9), DType::F32, Device::Cpu)?;
    for (i, (a, b, c, d, e)) in itertools_5()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 7 == 0)
    {
        let lin = base(9, 4, i % 2 == 0, DType::F32, &mut rng)?;
        let y0 = lin.forward(&x)?;
        let layer = GloraLayer::new(
            Box::new(lin),
            "default",
            LayerChoice { a, b, c, d, e },
            true,
            &mut rng,
        )?;
        ensure!(
            f64s(&layer.forward(&x)?) == f64s(&y0),
            "case {i}: init_weights=true must leave the output unchanged"
        );
    }
    Ok(())
}

/// Every (A, B, C, D, E) combination of the support shapes each path allows.
fn itertools_5() -> Vec<(Support, Support, Support, Support, Support)> {
    let mut v = Vec::new();
    for a in AB {
        for b in AB {
            for c in C {
                for d in DE {
                    for e in DE {
                        v.push((a, b, c, d, e));
                    }
                }
            }
        }
    }
    v
}

fn random_choice(rng: &mut Rng) -> LayerChoice {
    let pick = |o: &[Support], rng: &mut Rng| o[rng.below(o.len() as u64) as usize];
    LayerChoice {
        a: pick(&AB, rng),
        b: pick(&AB, rng),
        c: pick(&C, rng),
        d: pick(&DE, rng),
        e: pick(&DE, rng),
    }
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores_the_base_bit_for_bit() -> Result<()> {
    let mut rng = Rng::new(52);
    for trial in 0..40 {
        let has_bias = trial % 2 == 0;
        let (in_f, out_f) = (3 + rng.below(20) as usize, 2 + rng.below(20) as usize);
        let lin = base(in_f, out_f, has_bias, DType::F32, &mut rng)?;
        let (w0, b0) = (f64s(lin.weight()), lin.bias().map(f64s));
        let choice = random_choice(&mut rng);
        let mut layer = GloraLayer::new(Box::new(lin), "default", choice, false, &mut rng)?;
        let x = rng.normal_tensor(0.0, 1.0, (4, in_f), DType::F32, Device::Cpu)?;
        let y = layer.forward(&x)?;
        layer.merge("default")?;
        ensure!(layer.merged() == ["default"]);
        let ym = layer.forward(&x)?;
        assert_close(
            &f64s(&ym),
            &f64s(&y),
            Tol {
                rel: 1e-5,
                abs: 1e-5,
            },
            &format!("merged {choice}"),
        )?;
        // The merged weight is W0 + ΔW.
        let (dw, _) = layer.merged_weight_delta("default")?;
        let want: Vec<f64> = w0.iter().zip(f64s(&dw)).map(|(a, b)| a + b).collect();
        assert_close(
            &f64s(&layer.dense_weight()?),
            &want,
            Tol {
                rel: 1e-6,
                abs: 1e-6,
            },
            "merged weight",
        )?;
        layer.unmerge()?;
        ensure!(
            f64s(&layer.dense_weight()?) == w0,
            "unmerge must restore W0 exactly"
        );
        ensure!(
            layer.bias().map(|b| f64s(&b)) == b0,
            "unmerge must restore b0 exactly"
        );
        ensure!(
            f64s(&layer.forward(&x)?) == f64s(&y),
            "unmerged output must equal the first one bit for bit"
        );
    }
    Ok(())
}

/// Checks every trainable tensor's gradient against f64 central differences of `sum(y ⊙ R)`.
fn check_layer_grads(layer: &GloraLayer, x: &Tensor, what: &str) -> Result<()> {
    let y = layer.forward(x)?;
    let mut rng = Rng::new(7);
    let r = rng.normal_tensor(0.0, 1.0, y.dims().to_vec(), DType::F64, Device::Cpu)?;
    let grads = y.mul(&r)?.sum_all()?.backward()?;
    let loss = || -> Result<f64> {
        Ok(no_grad(|| {
            layer.forward(x)?.mul(&r)?.sum_all()?.to_scalar()
        })?)
    };
    let params = layer.trainable_parameters();
    ensure!(
        !params.is_empty() || layer.choice("default")? == LayerChoice::NONE,
        "{what}: no trainable tensors"
    );
    for (name, p) in params {
        let analytic = grads
            .get(&p)
            .map(f64s)
            .unwrap_or_else(|| vec![0.0; p.elem_count()]);
        let vals = f64s(&p);
        let h = 1e-6;
        for j in 0..vals.len() {
            let mut v = vals.clone();
            v[j] = vals[j] + h;
            p.assign(&Tensor::from_vec(
                v.clone(),
                p.dims().to_vec(),
                Device::Cpu,
            )?)?;
            let up = loss()?;
            v[j] = vals[j] - h;
            p.assign(&Tensor::from_vec(v, p.dims().to_vec(), Device::Cpu)?)?;
            let down = loss()?;
            p.assign(&Tensor::from_vec(
                vals.clone(),
                p.dims().to_vec(),
                Device::Cpu,
            )?)?;
            let num = (up - down) / (2.0 * h);
            ensure!(
                (analytic[j] - num).abs() <= 1e-6 + 1e-5 * num.abs(),
                "{what}: {name}[{j}]: analytic {}, numeric {num}",
                analytic[j]
            );
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences_for_every_path_kind() -> Result<()> {
    let mut rng = Rng::new(53);
    let choices = [
        LayerChoice {
            a: Support::LowRank(2),
            b: Support::Vector,
            c: Support::LowRank(2),
            d: Support::Scalar,
            e: Support::Vector,
        },
        LayerChoice {
            a: Support::Vector,
            b: Support::LowRank(3),
            c: Support::Vector,
            d: Support::Vector,
            e: Support::Scalar,
        },
        LayerChoice {
            a: Support::Scalar,
            b: Support::Scalar,
            c: Support::None,
            d: Support::None,
            e: Support::None,
        },
    ];
    for (i, choice) in choices.into_iter().enumerate() {
        for has_bias in [true, false] {
            let lin = base(6, 5, has_bias, DType::F64, &mut rng)?;
            let mut layer = GloraLayer::new(Box::new(lin), "default", choice, false, &mut rng)?;
            let x = rng.normal_tensor(0.0, 1.0, (3, 6), DType::F64, Device::Cpu)?;
            for factorized in [false, true] {
                layer.factorized = factorized;
                check_layer_grads(
                    &layer,
                    &x,
                    &format!("choice {i} bias={has_bias} factorized={factorized}"),
                )?;
            }
        }
    }
    Ok(())
}

const FIXTURE_PATHS: [&str; 2] = ["layers.0.self_attn.q_proj", "layers.0.mlp.down_proj"];

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(case)
}

fn fixture_model(io: &HashMap<String, Tensor>) -> Result<FixtureModel> {
    let mut slots = Vec::new();
    for p in FIXTURE_PATHS {
        let w = io
            .get(&format!("{p}.weight"))
            .with_context(|| format!("{p}.weight"))?
            .clone();
        let b = io.get(&format!("{p}.bias")).cloned();
        slots.push((p.to_string(), LinearSlot::new(Linear::from_weights(w, b)?)));
    }
    Ok(FixtureModel { slots })
}

fn glora_cases() -> Result<Vec<String>> {
    let mut v: Vec<String> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("glora_"))
            .collect();
    v.sort();
    Ok(v)
}

#[test]
fn peft_glora_files_load_run_merge_and_save_like_peft() -> Result<()> {
    let cases = glora_cases()?;
    ensure!(
        cases.len() == 12,
        "expected the 12 GLoRA fixture cases, found {cases:?}"
    );
    for case in cases {
        let dir = fixture_dir(&case);
        let io = rankfold_tensor::safetensors::load(dir.join("io.safetensors"), Device::Cpu)?;
        let mut pm = PeftModel::new(fixture_model(&io)?, 1);
        pm.load(dir.join("adapter"), "default")
            .with_context(|| case.clone())?;
        let x = &io["x"];
        for (path, slot) in pm.model_mut().linear_slots() {
            let y = slot.forward(x)?;
            assert_close(
                &f64s(&y),
                &f64s(&io[&format!("{path}.y")]),
                Tol {
                    rel: 1e-5,
                    abs: 1e-5,
                },
                &format!("{case} {path} y"),
            )?;
        }
        // Save → the same keys and bit-identical tensors as PEFT's file.
        let out =
            std::env::temp_dir().join(format!("rankfold-glora-{}-{case}", std::process::id()));
        pm.save_pretrained(&out, "default")?;
        let theirs = rankfold_tensor::safetensors::load(
            dir.join("adapter/adapter_model.safetensors"),
            Device::Cpu,
        )?;
        let ours =
            rankfold_tensor::safetensors::load(out.join("adapter_model.safetensors"), Device::Cpu)?;
        let mut keys: Vec<&String> = theirs.keys().collect();
        keys.sort();
        let mut our_keys: Vec<&String> = ours.keys().collect();
        our_keys.sort();
        ensure!(
            keys == our_keys,
            "{case}: saved keys {our_keys:?}, PEFT's {keys:?}"
        );
        for k in keys {
            ensure!(
                theirs[k].dims() == ours[k].dims() && f64s(&theirs[k]) == f64s(&ours[k]),
                "{case}: {k} differs after save"
            );
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json"))?)?;
        ensure!(
            cfg["peft_type"] == "GLORA" && cfg.get("layer_configs").is_none(),
            "{case}: config {cfg}"
        );
        std::fs::remove_dir_all(&out)?;
        // Merge → PEFT's merged weights and biases.
        pm.merge()?;
        for (path, slot) in pm.model_mut().linear_slots() {
            let l = slot.layer();
            assert_close(
                &f64s(&l.dense_weight()?),
                &f64s(&io[&format!("{path}.merged_weight")]),
                Tol {
                    rel: 1e-5,
                    abs: 1e-5,
                },
                &format!("{case} {path} merged W"),
            )?;
            if let Some(b) = l.bias() {
                assert_close(
                    &f64s(&b),
                    &f64s(&io[&format!("{path}.merged_bias")]),
                    Tol {
                        rel: 1e-5,
                        abs: 1e-5,
                    },
                    &format!("{case} {path} merged b"),
                )?;
            }
            assert_close(
                &f64s(&slot.forward(x)?),
                &f64s(&io[&format!("{path}.y")]),
                Tol {
                    rel: 1e-5,
                    abs: 1e-5,
                },
                &format!("{case} {path} merged y"),
            )?;
        }
    }
    Ok(())
}

#[test]
fn loading_names_the_missing_or_misshapen_key() -> Result<()> {
    let dir = fixture_dir("glora_lora_lora_vector");
    let io = rankfold_tensor::safetensors::load(dir.join("io.safetensors"), Device::Cpu)?;
    // A config that expects vector A/B where the file holds low-rank ones: the missing key is named.
    let tmp = std::env::temp_dir().join(format!("rankfold-glora-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(
        dir.join("adapter/adapter_model.safetensors"),
        tmp.join("adapter_model.safetensors"),
    )?;
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("adapter/adapter_config.json"),
    )?)?;
    cfg["config_A_B"] = "vector".into();
    std::fs::write(tmp.join("adapter_config.json"), cfg.to_string())?;
    let mut pm = PeftModel::new(fixture_model(&io)?, 1);
    let e = pm.load(&tmp, "default").unwrap_err().to_string();
    ensure!(
        e.contains("glora_A.X") && e.contains("missing"),
        "error: {e}"
    );
    // The rank in the config differs from the file's: the shape error names the key.
    cfg["config_A_B"] = "lora".into();
    cfg["r"] = 2.into();
    std::fs::write(tmp.join("adapter_config.json"), cfg.to_string())?;
    let mut pm = PeftModel::new(fixture_model(&io)?, 1);
    let e = pm.load(&tmp, "default").unwrap_err().to_string();
    ensure!(
        e.contains("glora_A.Xd") && e.contains("shape"),
        "error: {e}"
    );
    // A bad support value is refused naming the field.
    cfg["config_D_E"] = "lora".into();
    let e = GloraConfig::from_peft_json(&cfg).unwrap_err().to_string();
    ensure!(e.contains("config_D_E"), "error: {e}");
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

#[test]
fn save_load_round_trip_is_bit_identical_on_the_test_model() -> Result<()> {
    let x = Rng::new(9).normal_tensor(0.0, 1.0, (3, 13), DType::F32, Device::Cpu)?;
    let mut cfg = GloraConfig::new(
        TargetModules::AllLinear,
        4,
        Support::LowRank(4),
        Support::Vector,
        Support::Scalar,
    );
    cfg.glora.init_weights = false;
    let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 5)?, 11);
    let paths = pm.add_adapter("default", Box::new(cfg))?;
    ensure!(
        paths.len() == 12 && !paths.iter().any(|p| p == "lm_head"),
        "all-linear picks {paths:?}"
    );
    let y = pm.model().forward(&x)?;
    let dir = std::env::temp_dir().join(format!("rankfold-glora-rt-{}", std::process::id()));
    pm.save_pretrained(&dir, "default")?;
    let mut pm2 = PeftModel::new(TestModel::new(TestModelConfig::default(), 5)?, 99);
    pm2.load(&dir, "default")?;
    ensure!(
        f64s(&pm2.model().forward(&x)?) == f64s(&y),
        "reloaded output differs"
    );
    let a: Vec<(String, Tensor)> = pm.parameters();
    let b: Vec<(String, Tensor)> = pm2.parameters();
    ensure!(
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|((n1, t1), (n2, t2))| n1 == n2 && f64s(t1) == f64s(t2)),
        "parameters differ"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn glora_runs_on_an_nf4_base_without_a_dense_weight() -> Result<()> {
    let mut rng = Rng::new(54);
    let lin = base(70, 23, true, DType::F32, &mut rng)?;
    let q = Nf4Linear::quantize(&lin, 64, true)?;
    let deq = Linear::from_weights(q.dense_weight()?, lin.bias().cloned())?;
    let choice = LayerChoice {
        a: Support::LowRank(3),
        b: Support::LowRank(2),
        c: Support::LowRank(2),
        d: Support::Vector,
        e: Support::Scalar,
    };
    let mut on_nf4 = GloraLayer::new(Box::new(q), "default", choice, false, &mut Rng::new(5))?;
    let on_dense = GloraLayer::new(Box::new(deq), "default", choice, false, &mut Rng::new(5))?;
    let x = rng.normal_tensor(0.0, 1.0, (4, 70), DType::F32, Device::Cpu)?;
    let (y_q, y_d) = (on_nf4.forward(&x)?, on_dense.forward(&x)?);
    assert_close(
        &f64s(&y_q),
        &f64s(&y_d),
        Tol {
            rel: 1e-4,
            abs: 1e-4,
        },
        "NF4 vs dequantized base",
    )?;
    // Gradients reach every adapter tensor and agree with the dense twin.
    let gq = y_q.sqr()?.sum_all()?.backward()?;
    let gd = y_d.sqr()?.sum_all()?.backward()?;
    for ((n, tq), (_, td)) in on_nf4
        .trainable_parameters()
        .iter()
        .zip(on_dense.trainable_parameters())
    {
        let (a, b) = (
            gq.get(tq).with_context(|| n.clone())?,
            gd.get(&td).with_context(|| n.clone())?,
        );
        assert_close(
            &f64s(a),
            &f64s(b),
            Tol {
                rel: 1e-3,
                abs: 1e-3,
            },
            &format!("grad {n}"),
        )?;
    }
    // Merging requantizes (lossy, within NF4's rounding); unmerging restores the NF4 base exactly.
    on_nf4.merge("default")?;
    ensure!(
        on_nf4.live_base().as_any().is::<Nf4Linear>(),
        "the merged base stays NF4"
    );
    let ym = on_nf4.forward(&x)?;
    let scale = f64s(&y_q).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert_close(
        &f64s(&ym),
        &f64s(&y_q),
        Tol {
            rel: 0.0,
            abs: 0.1 * scale,
        },
        "merged NF4",
    )?;
    on_nf4.unmerge()?;
    ensure!(
        f64s(&on_nf4.forward(&x)?) == f64s(&y_q),
        "unmerge restores the NF4 base"
    );
    Ok(())
}
