//! `rankfold inspect` on the PEFT fixtures: every per-layer figure (rank, scaling, parameter count, ‖ΔW‖_F)
//! against plain f64 loops over the saved tensors.

use anyhow::{ensure, Context, Result};
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::Device;
use serde_json::Value;

use super::{fixture, fro, run_json, s, METHODS};

/// An f64 matrix [rows, cols] from a named tensor of a safetensors file.
struct Mat {
    rows: usize,
    cols: usize,
    v: Vec<f64>,
}

fn mat(st: &MmapedSafetensors, key: &str) -> Result<Mat> {
    let t = st.load(key, Device::Cpu).with_context(|| key.to_string())?;
    let d = t.dims().to_vec();
    let (rows, cols) = match d.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => anyhow::bail!("{key}: shape {d:?}"),
    };
    Ok(Mat {
        rows,
        cols,
        v: t.to_vec_f32()?.into_iter().map(f64::from).collect(),
    })
}

/// `a · b` by plain loops.
fn matmul(a: &Mat, b: &Mat) -> Mat {
    let mut v = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for k in 0..a.cols {
            for j in 0..b.cols {
                v[i * b.cols + j] += a.v[i * a.cols + k] * b.v[k * b.cols + j];
            }
        }
    }
    Mat {
        rows: a.rows,
        cols: b.cols,
        v,
    }
}

#[test]
fn inspect_figures_equal_plain_loops_over_the_saved_tensors() -> Result<()> {
    let base = MmapedSafetensors::open(fixture("untied/model.safetensors"))?;
    for method in METHODS {
        let dir = fixture(&format!("untied/{method}"));
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json"))?)?;
        let st = MmapedSafetensors::open(dir.join("adapter_model.safetensors"))?;
        let mut args = vec!["inspect", s(&dir)];
        let model = fixture("untied");
        if method == "glora" {
            args.extend(["--model", s(&model)]);
        }
        let v = run_json(&args)?;
        let layers = v["layers"].as_array().context("layers")?;
        ensure!(layers.len() == 14, "{method}: {} layers", layers.len());
        let mut total = 0;
        for l in layers {
            let module = l["module"].as_str().context("module")?;
            let key = |k: &str| format!("base_model.model.{module}.{k}");
            let (want_norm, want_params) = match method {
                "lora" | "rslora" => {
                    let (a, b) = (
                        mat(&st, &key("lora_A.weight"))?,
                        mat(&st, &key("lora_B.weight"))?,
                    );
                    let r = a.rows as f64;
                    let alpha = cfg["lora_alpha"].as_f64().context("lora_alpha")?;
                    let scale = if method == "rslora" {
                        alpha / r.sqrt()
                    } else {
                        alpha / r
                    };
                    ensure!(
                        l["rank"] == a.rows
                            && (l["scaling"].as_f64().context("scaling")? - scale).abs() < 1e-12
                    );
                    (
                        scale * fro(matmul(&b, &a).v.into_iter()),
                        a.v.len() + b.v.len(),
                    )
                }
                "adalora" => {
                    let (a, e, b) = (
                        mat(&st, &key("lora_A"))?,
                        mat(&st, &key("lora_E"))?,
                        mat(&st, &key("lora_B"))?,
                    );
                    let init_r = cfg["init_r"].as_f64().context("init_r")?;
                    let scale = cfg["lora_alpha"].as_f64().context("lora_alpha")? / (init_r + 1e-5);
                    // P · diag(λ) · Q, element by element.
                    let mut d = Vec::new();
                    for o in 0..b.rows {
                        for i in 0..a.cols {
                            d.push(
                                (0..a.rows)
                                    .map(|k| b.v[o * b.cols + k] * e.v[k] * a.v[k * a.cols + i])
                                    .sum::<f64>()
                                    * scale,
                            );
                        }
                    }
                    ensure!(
                        l["rank"] == a.rows
                            && l["effective_rank"] == e.v.iter().filter(|&&x| x != 0.0).count()
                    );
                    (fro(d.into_iter()), a.v.len() + b.v.len() + e.v.len())
                }
                _ => {
                    let w = mat(&base, &format!("{module}.weight"))?;
                    let low = |p: &str| -> Result<Mat> {
                        Ok(matmul(
                            &mat(&st, &key(&format!("{p}.Xd")))?,
                            &mat(&st, &key(&format!("{p}.Xu")))?,
                        ))
                    };
                    let (a, b) = (low("glora_A")?, low("glora_B")?);
                    ensure!((a.rows, a.cols) == (w.rows, w.cols));
                    let params = ["glora_A", "glora_B"]
                        .iter()
                        .map(|p| {
                            Ok(mat(&st, &key(&format!("{p}.Xd")))?.v.len()
                                + mat(&st, &key(&format!("{p}.Xu")))?.v.len())
                        })
                        .sum::<Result<usize>>()?;
                    ensure!(
                        l["support"] == "A=lora_3 B=lora_3 C=none D=none E=none",
                        "{l}"
                    );
                    (
                        fro((0..w.v.len()).map(|i| w.v[i] * a.v[i] + b.v[i])),
                        params,
                    )
                }
            };
            let got = l["delta_norm"].as_f64().context("delta_norm")?;
            ensure!(
                (got - want_norm).abs() <= 1e-9 * want_norm.max(1.0),
                "{method} {module}: ‖ΔW‖ {got} vs {want_norm}"
            );
            ensure!(
                l["params"] == want_params,
                "{method} {module}: params {} vs {want_params}",
                l["params"]
            );
            total += want_params;
        }
        ensure!(
            v["total_params"] == total && v["peft_type"] == cfg["peft_type"],
            "{method}: {v}"
        );
    }
    // Without the base, GLoRA reports ‖B‖ and no ‖ΔW‖; a safetensors file keeps the plain listing.
    let v = run_json(&["inspect", s(&fixture("untied/glora"))])?;
    ensure!(
        v["layers"][0]["delta_norm"].is_null()
            && v["layers"][0]["b_norm"].as_f64().is_some_and(|x| x > 0.0)
    );
    let v = run_json(&["inspect", s(&fixture("untied/model.safetensors"))])?;
    ensure!(v["tensors"] == 21, "{v}");
    Ok(())
}

/// Every PEFT reference case of `tests/fixtures/peft` (LoRA with rank/alpha patterns, rsLoRA, AdaLoRA with a layer
/// pruned to rank 0, GLoRA in twelve support-shape combinations): ‖ΔW‖_F equals ‖merged_weight − weight‖_F of
/// PyTorch's own merge, and the parameter count equals the elements of the saved tensors (GLoRA's `zeros` buffers
/// excluded).
#[test]
fn inspect_update_norms_equal_pytorch_merges_on_every_peft_case() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft");
    let mut cases = 0;
    for entry in std::fs::read_dir(&root)? {
        let case = entry?.path();
        let (adapter, io) = (case.join("adapter"), case.join("io.safetensors"));
        if !adapter.join("adapter_config.json").is_file() || !io.is_file() {
            continue;
        }
        let mut args = vec!["inspect", s(&adapter)];
        if case.to_string_lossy().contains("glora") {
            args.extend(["--model", s(&io)]);
        }
        let v = run_json(&args)?;
        let st = MmapedSafetensors::open(&io)?;
        let saved = MmapedSafetensors::open(adapter.join("adapter_model.safetensors"))?;
        for l in v["layers"].as_array().context("layers")? {
            let module = l["module"].as_str().context("module")?;
            let w = st
                .load(&format!("{module}.weight"), Device::Cpu)?
                .to_vec_f32()?;
            let m = st
                .load(&format!("{module}.merged_weight"), Device::Cpu)?
                .to_vec_f32()?;
            let want = fro(w.iter().zip(&m).map(|(&a, &b)| (b - a) as f64));
            let got = l["delta_norm"].as_f64().context("delta_norm")?;
            ensure!(
                (got - want).abs() <= 1e-5 * want.max(1.0),
                "{}: {module}: ‖ΔW‖ {got} vs PyTorch {want}",
                case.display()
            );
            let prefix = format!("base_model.model.{module}.");
            let params: usize = saved
                .names()
                .iter()
                .filter(|n| n.starts_with(&prefix) && !n.ends_with(".zeros"))
                .map(|n| Ok(saved.info(n)?.0.elem_count()))
                .sum::<Result<usize>>()?;
            ensure!(
                l["params"] == params,
                "{}: {module}: params {} vs {params}",
                case.display(),
                l["params"]
            );
        }
        cases += 1;
    }
    ensure!(cases >= 15, "only {cases} PEFT cases found");
    Ok(())
}

/// A checkpoint's `adapter/` folder is reported as LoRA-FA when the trainer_state.json beside it notes it (the
/// PEFT files alone cannot tell).
#[test]
fn inspect_reports_lora_fa_noted_by_a_checkpoint() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("rankfold-cli-lora-fa-{}", std::process::id()));
    let adapter = tmp.join("checkpoint-3").join("adapter");
    std::fs::create_dir_all(&adapter)?;
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("untied/lora").join(f), adapter.join(f))?;
    }
    let plain = run_json(&["inspect", s(&adapter)])?;
    ensure!(plain["lora_fa"] == false, "{plain}");
    std::fs::write(
        tmp.join("checkpoint-3/trainer_state.json"),
        r#"{"step": 3, "method": "lora_fa"}"#,
    )?;
    let noted = run_json(&["inspect", s(&adapter)])?;
    let _ = std::fs::remove_dir_all(&tmp);
    ensure!(
        noted["lora_fa"] == true
            && noted["method"]
                .as_str()
                .is_some_and(|m| m.starts_with("LoRA-FA")),
        "{noted}"
    );
    ensure!(
        noted["layers"] == plain["layers"],
        "the figures must not change"
    );
    Ok(())
}
