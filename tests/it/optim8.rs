//! AdamW8bit against bitsandbytes 0.50.2's CPU AdamW8bit, bit for bit, step by step: the committed
//! `tests/fixtures/optim/adamw8bit.json` (written by `tests/fixtures/optim_fixtures.py`) holds, for tensors below
//! and above `min_8bit_size`, multiples of 256 and not, an all-zero gradient block, f32 and bf16 parameters, with
//! and without weight decay, the sha256 of the parameters, codes and scales after each step. Inputs are rebuilt
//! from their seeds. Also: the dynamic maps, state bytes per parameter, save → load → the next step bit for bit,
//! and the non-finite-gradient policy through the optimizer.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use rankfold_kernels::blockwise8::DynamicMap;
use rankfold_tensor::optim::{AdamW8bit, AdamW8bitConfig, Optimizer};
use rankfold_tensor::{DType, Device, GradStore, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The fixture script's `values`: exact f32s from `seed`.
fn values(seed: u64, n: usize, shift: i32) -> Vec<f32> {
    (0..n as u64).map(|i| (crate::common::exact_draw(seed, i).0 as f64 * 2f64.powi(-shift)) as f32).collect()
}

/// The fixture script's `grad`: elements 256..512 are zero.
fn grad(seed: u64, step: u64, n: usize) -> Vec<f32> {
    let mut g = values(seed * 1000 + step, n, 18);
    g[256.min(n)..512.min(n)].fill(0.0);
    g
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The little-endian bytes of a tensor's elements in its own dtype.
fn bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::U8 => t.to_vec::<u8>()?,
        DType::F32 => t.to_vec::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec::<half::bf16>()?.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        d => anyhow::bail!("no byte view for {d}"),
    })
}

fn fixture() -> Result<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim/adamw8bit.json");
    Ok(serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)?)
}

fn f(v: &Value, k: &str) -> Result<f64> {
    v[k].as_f64().with_context(|| format!("field `{k}`"))
}

#[test]
fn the_dynamic_maps_are_bitsandbytes() -> Result<()> {
    let doc = fixture()?;
    for (key, map) in [("qmap1_bits", DynamicMap::signed()), ("qmap2_bits", DynamicMap::unsigned())] {
        let want: Vec<u32> = doc[key].as_array().context(key)?.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect();
        let got: Vec<u32> = map.code().iter().map(|c| c.to_bits()).collect();
        ensure!(got == want, "{key} differs from bitsandbytes' map");
    }
    Ok(())
}

#[test]
fn adamw8bit_matches_bitsandbytes_step_by_step() -> Result<()> {
    let doc = fixture()?;
    let cases = doc["cases"].as_array().context("cases")?;
    ensure!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().context("name")?;
        let n = case["elements"].as_u64().context("elements")? as usize;
        let seed = case["seed"].as_u64().context("seed")?;
        let dtype = match case["dtype"].as_str() {
            Some("bf16") => DType::BF16,
            _ => DType::F32,
        };
        let config = AdamW8bitConfig {
            lr: f(case, "lr")?,
            beta1: case["betas"][0].as_f64().context("betas")?,
            beta2: case["betas"][1].as_f64().context("betas")?,
            eps: f(case, "eps")?,
            weight_decay: f(case, "weight_decay")?,
            min_8bit_size: case["min_8bit_size"].as_u64().context("min_8bit_size")? as usize,
        };
        let p = Tensor::from_vec(values(seed, n, 22), n, Device::Cpu)?.to_dtype(dtype)?;
        let mut opt = AdamW8bit::new(vec![("p".into(), p.clone())], config)?;
        for row in case["steps"].as_array().context("steps")? {
            let step = row["step"].as_u64().context("step")?;
            let what = format!("{name} step {step}");
            let mut gs = GradStore::new();
            gs.insert(&p, Tensor::from_vec(grad(seed, step, n), n, Device::Cpu)?.to_dtype(dtype)?);
            opt.step(&gs)?;
            let head: Vec<u64> = p.to_vec_f32()?.iter().take(4).map(|x| x.to_bits() as u64).collect();
            let want_head: Vec<u64> = row["p_head_bits"].as_array().context("head")?.iter().filter_map(|v| v.as_i64()).map(|v| v as u32 as u64).collect();
            ensure!(head == want_head, "{what}: first parameters {head:?}, bitsandbytes {want_head:?}");
            ensure!(sha256(&bytes(&p)?) == row["p_sha256"], "{what}: parameters differ");
            let state: std::collections::HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
            for field in ["state1", "state2", "absmax1", "absmax2"] {
                let want = &row[format!("{field}_sha256")];
                match state.get(&format!("p.{field}")) {
                    Some(t) => ensure!(sha256(&bytes(t)?) == *want, "{what}: {field} differs"),
                    None => ensure!(want.is_null(), "{what}: no {field}, bitsandbytes has one"),
                }
            }
        }
        let eight = n >= config.min_8bit_size;
        ensure!(state_is_8bit(&opt)? == eight, "{name}: 8-bit state is {eight} for {n} elements");
    }
    Ok(())
}

fn state_is_8bit(opt: &AdamW8bit) -> Result<bool> {
    Ok(opt.state_tensors().iter().any(|(k, t)| k == "p.state1" && t.dtype() == DType::U8))
}

#[test]
fn state_costs_about_two_bytes_a_parameter_and_round_trips_bit_for_bit() -> Result<()> {
    let n = 70_001;
    let make = || -> Result<(Tensor, AdamW8bit)> {
        let p = Tensor::from_vec(values(5, n, 22), n, Device::Cpu)?;
        let opt = AdamW8bit::new(vec![("layer.w".into(), p.clone())], AdamW8bitConfig { lr: 1e-2, ..Default::default() })?;
        Ok((p, opt))
    };
    let grads = |p: &Tensor, step: u64| -> Result<GradStore> {
        let mut gs = GradStore::new();
        gs.insert(p, Tensor::from_vec(grad(5, step, n), n, Device::Cpu)?);
        Ok(gs)
    };
    let (pa, mut a) = make()?;
    for step in 1..=2 {
        a.step(&grads(&pa, step)?)?;
    }
    let per = a.state_bytes() as f64 / n as f64;
    ensure!(per <= 2.04 && per > 2.0, "{per} bytes of state per parameter");
    let path = std::env::temp_dir().join(format!("rankfold-adamw8bit-{}.safetensors", std::process::id()));
    a.save_state(&path)?;
    let (pb, mut b) = make()?;
    b.load_state(&path)?;
    std::fs::remove_file(&path)?;
    // b's parameters are the fresh ones: give it a's values, then both take step 3.
    let mut gs = GradStore::new();
    gs.insert(&pb, Tensor::zeros(n, DType::F32, Device::Cpu)?);
    let copy = Tensor::from_vec(pa.to_vec_f32()?, n, Device::Cpu)?;
    let mut c = AdamW8bit::new(vec![("layer.w".into(), copy.clone())], AdamW8bitConfig { lr: 1e-2, ..Default::default() })?;
    c.load_state_tensors(&b.state_tensors().into_iter().collect())?;
    a.step(&grads(&pa, 3)?)?;
    c.step(&grads(&copy, 3)?)?;
    ensure!(pa.to_vec_f32()? == copy.to_vec_f32()?, "the restored optimizer's step differs");
    ensure!(a.step_count("layer.w") == Some(3) && c.step_count("layer.w") == Some(3));
    // A state that does not fit the parameter is refused, naming the key.
    let mut bad: std::collections::HashMap<String, Tensor> = a.state_tensors().into_iter().collect();
    bad.insert("layer.w.absmax1".into(), Tensor::zeros(3, DType::F32, Device::Cpu)?);
    let e = c.load_state_tensors(&bad).err().context("a wrong absmax must be refused")?;
    ensure!(e.to_string().contains("layer.w.absmax1"), "{e}");
    Ok(())
}

#[test]
fn non_finite_gradients_skip_their_elements_and_never_reach_the_state() -> Result<()> {
    for n in [1000, 5000] {
        let p = Tensor::from_vec(values(9, n, 22), n, Device::Cpu)?;
        let mut opt = AdamW8bit::new(vec![("p".into(), p.clone())], AdamW8bitConfig::default())?;
        let mut g = grad(9, 1, n);
        g[3] = f32::NAN;
        g[700] = f32::INFINITY;
        g[999] = f32::NEG_INFINITY;
        let before = p.to_vec_f32()?;
        let mut gs = GradStore::new();
        gs.insert(&p, Tensor::from_vec(g, n, Device::Cpu)?);
        opt.step(&gs)?;
        let after = p.to_vec_f32()?;
        for i in [3, 700, 999] {
            ensure!(after[i] == before[i], "n {n}: element {i} moved");
        }
        ensure!(after.iter().all(|x| x.is_finite()) && after[4] != before[4], "n {n}");
        for (k, t) in opt.state_tensors() {
            if t.dtype() == DType::F32 {
                ensure!(t.to_vec_f32()?.iter().all(|x| x.is_finite()), "n {n}: {k} holds a non-finite value");
            }
        }
    }
    Ok(())
}
