//! The GLoRA supernet (weight-sharing slices, per-step sampling through `PeftModel::on_step`) and the
//! evolutionary search on fitness computed from the model, then fix → save → load.

use anyhow::{ensure, Context, Result};
use rankfold_adapters::glora::{
    evolution_search, GloraConfig, GloraLayer, LayerChoice, SearchConfig, SearchSpace, Supernet,
    Support,
};
use rankfold_adapters::testing::{TestModel, TestModelConfig};
use rankfold_adapters::{AdapterLayer, PeftModel, TargetModules};
use rankfold_tensor::nn::LinearModel;
use rankfold_tensor::{no_grad, DType, Device, Rng};

use super::f64s;

#[test]
fn supernet_samples_share_weight_slices_and_the_search_fixes_a_config() -> Result<()> {
    let mut rng = Rng::new(55);
    let mut model = TestModel::new(TestModelConfig::default(), 6)?;
    let net = Supernet::attach(
        &mut model,
        "default",
        SearchSpace::paper(4, 2),
        |p| p.contains("layers.0"),
        false,
        &mut rng,
    )?;
    ensure!(net.paths.len() == 6, "paths {:?}", net.paths);
    let x = rng.normal_tensor(0.0, 1.0, (5, 13), DType::F32, Device::Cpu)?;
    // Each step's sample activates one choice per layer; the forward runs on it.
    for _ in 0..5 {
        let c = net.sample_step(&mut model, &mut rng)?;
        ensure!(c.len() == 6);
        model.forward(&x)?;
    }
    // Rank 2 of A uses the leading slice of the rank-4 tensors: rows 2..4 of Xu get no gradient.
    let mut pick = vec![LayerChoice::NONE; 6];
    pick[0] = LayerChoice {
        a: Support::LowRank(2),
        ..LayerChoice::NONE
    };
    net.apply(&mut model, &pick)?;
    let q = model.blocks[0]
        .q_proj
        .downcast_ref::<GloraLayer>()
        .context("q_proj is a GLoRA layer")?;
    let xu = q
        .adapter_parameters("default")?
        .into_iter()
        .find(|(n, _)| n == "glora_A.default.Xu")
        .context("Xu")?
        .1;
    let g = model.forward(&x)?.sqr()?.sum_all()?.backward()?;
    let gx = f64s(g.get(&xu).context("Xu has a gradient")?);
    ensure!(
        gx[..2 * 13].iter().any(|v| *v != 0.0) && gx[2 * 13..].iter().all(|v| *v == 0.0),
        "slice gradient {gx:?}"
    );
    // The search on a fitness computed from the model, under a parameter limit.
    let target = rng.normal_tensor(0.0, 1.0, (5, 11), DType::F32, Device::Cpu)?;
    let limit = 400;
    let cfg = SearchConfig {
        population: 12,
        select: 4,
        crossover: 6,
        mutation: 6,
        generations: 4,
        param_limit: Some(limit),
        ..SearchConfig::default()
    };
    let shapes = net.shapes.clone();
    let model_cell = std::cell::RefCell::new(&mut model);
    let res = evolution_search(&net.space, &shapes, &cfg, &mut Rng::new(3), |cand| {
        let mut m = model_cell.borrow_mut();
        net.apply(&mut **m, cand)?;
        let y = no_grad(|| m.forward(&x))?;
        Ok(-y.sub(&target)?.sqr()?.mean_all()?.to_scalar()?)
    })?;
    ensure!(res.best_params <= limit && net.param_count(&res.best) == res.best_params);
    ensure!(
        res.history.windows(2).all(|w| w[1] >= w[0]),
        "history {:?}",
        res.history
    );
    // Fixing cuts every layer to its choice; a PEFT config records the per-layer configuration.
    let layer_configs = net.fix(&mut model, &res.best)?;
    for (path, slot) in model.linear_slots() {
        if let Some(g) = slot.downcast_ref::<GloraLayer>() {
            let want = layer_configs[&path];
            ensure!(g.choice("default")? == want, "{path}");
            let n: usize = g
                .trainable_parameters()
                .iter()
                .map(|(_, t)| t.elem_count())
                .sum();
            ensure!(
                n == g.active_param_count("default")?,
                "{path}: {n} trainable values after fix"
            );
        }
    }
    let mut cfg = GloraConfig::new(
        TargetModules::Regex(r"model\.layers\.0\..*".into()),
        4,
        Support::None,
        Support::None,
        Support::None,
    );
    cfg.glora.layer_configs = layer_configs.clone();
    let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 6)?, 1);
    pm.add_adapter("default", Box::new(cfg))?;
    for (path, slot) in pm.model_mut().linear_slots() {
        if let Some(g) = slot.downcast_ref::<GloraLayer>() {
            ensure!(
                g.choice("default")? == layer_configs[&path],
                "{path}: the config's layer_configs apply"
            );
        }
    }
    Ok(())
}

#[test]
fn supernet_training_through_peft_model_then_search_fix_save_and_load() -> Result<()> {
    use rankfold_adapters::glora::SupernetMethod;
    use rankfold_tensor::optim::{AdamW, AdamWConfig, Optimizer};
    let mut rng = Rng::new(56);
    let x = rng.normal_tensor(0.0, 1.0, (6, 13), DType::F32, Device::Cpu)?;
    let target = rng.normal_tensor(0.0, 1.0, (6, 11), DType::F32, Device::Cpu)?;
    let targets = TargetModules::list(&["q_proj", "v_proj", "down_proj"]);
    let mut cfg = GloraConfig::new(
        targets.clone(),
        4,
        Support::LowRank(4),
        Support::LowRank(4),
        Support::Vector,
    );
    cfg.glora.init_weights = false;
    let space = SearchSpace::paper(4, 2);
    let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 8)?, 12);
    pm.add_adapter(
        "default",
        Box::new(SupernetMethod::new(cfg, space.clone(), 77)?),
    )?;
    let mut opt = AdamW::new(
        pm.parameters(),
        AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
    )?;
    let choices = |pm: &mut PeftModel<TestModel>| -> Result<Vec<LayerChoice>> {
        let mut v = Vec::new();
        for (_, slot) in pm.model_mut().linear_slots() {
            if let Some(g) = slot.downcast_ref::<GloraLayer>() {
                v.push(g.choice("default")?);
            }
        }
        Ok(v)
    };
    let mut seen = std::collections::HashSet::new();
    for step in 0..8 {
        seen.insert(choices(&mut pm)?);
        let loss = pm.model().forward(&x)?.sub(&target)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        // The trainer's hook draws the next step's sub-network.
        pm.on_step(step, &grads)?;
    }
    ensure!(seen.len() > 1, "the hook must sample new configurations");
    // Search on the trained supernet, fix, save: the config carries the per-layer choice.
    pm.set_training(false)?;
    let net = Supernet::find(pm.model_mut(), "default", space)?;
    ensure!(net.paths.len() == 6, "{:?}", net.paths);
    let scfg = SearchConfig {
        population: 10,
        select: 3,
        crossover: 4,
        mutation: 4,
        generations: 3,
        ..SearchConfig::default()
    };
    let cell = std::cell::RefCell::new(&mut pm);
    let res = evolution_search(&net.space, &net.shapes, &scfg, &mut Rng::new(4), |cand| {
        let mut pm = cell.borrow_mut();
        net.apply(pm.model_mut(), cand)?;
        let y = no_grad(|| pm.model().forward(&x))?;
        Ok(-y.sub(&target)?.sqr()?.mean_all()?.to_scalar()?)
    })?;
    net.fix(pm.model_mut(), &res.best)?;
    let y = pm.model().forward(&x)?;
    ensure!(
        (-y.sub(&target)?.sqr()?.mean_all()?.to_scalar()? - res.best_fitness).abs() < 1e-9,
        "the fixed model scores as searched"
    );
    let dir = std::env::temp_dir().join(format!("rankfold-glora-super-{}", std::process::id()));
    pm.save_pretrained(&dir, "default")?;
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json"))?)?;
    ensure!(saved["peft_type"] == "GLORA", "{saved}");
    let mut pm2 = PeftModel::new(TestModel::new(TestModelConfig::default(), 8)?, 1);
    pm2.load(&dir, "default")?;
    ensure!(
        choices(&mut pm2)?
            == res
                .best
                .iter()
                .zip(&net.shapes)
                .map(|(c, s)| c.effective(s.has_bias))
                .collect::<Vec<_>>(),
        "the saved config restores the searched shapes"
    );
    ensure!(
        f64s(&pm2.model().forward(&x)?) == f64s(&y),
        "the reloaded searched adapter computes the same outputs"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
