//! GLoRA's evolutionary search over per-layer configurations (the paper's §3.3, after AutoFormer): a random
//! population under a trainable-parameter limit; each generation scores every new candidate with a
//! caller-supplied fitness (higher is better, e.g. validation accuracy of the supernet with that candidate
//! active), keeps the best `select` seen so far, and breeds the next population from them by `mutation`
//! mutations (each path of each layer resampled with probability `mutation_prob`) and `crossover` crossovers
//! (each path taken from either parent), topped up with random candidates. Candidates are never scored twice.

use std::collections::{HashMap, HashSet};

use rankfold_tensor::Rng;

use super::supernet::{LayerShape, SearchSpace};
use super::{LayerChoice, PathKind};
use crate::{Error, Result};

/// The search's knobs; [`SearchConfig::default`] is the paper's setting.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Candidates per generation (50).
    pub population: usize,
    /// Best candidates kept as parents (10).
    pub select: usize,
    /// Children by crossover per generation (25).
    pub crossover: usize,
    /// Children by mutation per generation (25).
    pub mutation: usize,
    /// Probability that mutation resamples a path (0.2).
    pub mutation_prob: f64,
    /// Generations (20).
    pub generations: usize,
    /// Largest number of trainable values a candidate may have (None: no limit).
    pub param_limit: Option<usize>,
    /// Draws allowed per wanted candidate before giving up on finding a new one under the limit.
    pub max_tries: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            population: 50,
            select: 10,
            crossover: 25,
            mutation: 25,
            mutation_prob: 0.2,
            generations: 20,
            param_limit: None,
            max_tries: 100,
        }
    }
}

/// What the search found.
#[derive(Debug, Clone)]
pub struct SearchResult {
    /// The best candidate: one choice per layer.
    pub best: Vec<LayerChoice>,
    pub best_fitness: f64,
    /// Its trainable values.
    pub best_params: usize,
    /// The best fitness seen after each generation (non-decreasing).
    pub history: Vec<f64>,
    /// How many candidates were scored.
    pub evaluations: usize,
    /// The `select` best candidates with their fitness, best first.
    pub top: Vec<(Vec<LayerChoice>, f64)>,
}

/// Runs the search over layers of the given shapes. `fitness` scores a candidate (one choice per layer, in
/// `layers` order); it must return a finite number. The generator makes the search reproducible.
pub fn evolution_search(
    space: &SearchSpace,
    layers: &[LayerShape],
    cfg: &SearchConfig,
    rng: &mut Rng,
    mut fitness: impl FnMut(&[LayerChoice]) -> Result<f64>,
) -> Result<SearchResult> {
    space.validate()?;
    if layers.is_empty() || cfg.population == 0 || cfg.select == 0 || cfg.generations == 0 {
        return Err(Error::config(
            "glora search",
            "needs at least one layer, and positive population, select and generations",
        ));
    }
    if !(0.0..=1.0).contains(&cfg.mutation_prob) {
        return Err(Error::config(
            "glora search",
            format!("mutation_prob {} is not a probability", cfg.mutation_prob),
        ));
    }
    let count = |c: &[LayerChoice]| -> usize {
        c.iter()
            .zip(layers)
            .map(|(c, s)| c.param_count(s.in_f, s.out_f, s.has_bias))
            .sum()
    };
    let legal = |c: &[LayerChoice]| cfg.param_limit.is_none_or(|lim| count(c) <= lim);
    let random = |rng: &mut Rng| -> Vec<LayerChoice> {
        layers
            .iter()
            .map(|s| space.sample(s.has_bias, rng))
            .collect()
    };

    // Every candidate ever proposed, in order, with its fitness once scored.
    let mut seen: HashSet<Vec<LayerChoice>> = HashSet::new();
    let mut scored: Vec<(Vec<LayerChoice>, f64)> = Vec::new();
    let mut index: HashMap<Vec<LayerChoice>, usize> = HashMap::new();

    // Draws up to `want` new legal candidates from `make`, giving up after `max_tries` draws per wanted one.
    let propose = |want: usize,
                   rng: &mut Rng,
                   seen: &mut HashSet<Vec<LayerChoice>>,
                   make: &mut dyn FnMut(&mut Rng) -> Vec<LayerChoice>| {
        let mut out = Vec::new();
        let mut tries = 0;
        while out.len() < want && tries < want * cfg.max_tries.max(1) {
            tries += 1;
            let c = make(rng);
            if legal(&c) && seen.insert(c.clone()) {
                out.push(c);
            }
        }
        out
    };

    let mut population = propose(cfg.population, rng, &mut seen, &mut |r| random(r));
    if population.is_empty() {
        return Err(Error::config(
            "glora search",
            format!(
                "no candidate fits the parameter limit {:?}",
                cfg.param_limit
            ),
        ));
    }
    let mut history = Vec::with_capacity(cfg.generations);
    let mut top: Vec<usize> = Vec::new();
    for gen in 0..cfg.generations {
        for c in population.drain(..) {
            let f = fitness(&c)?;
            if !f.is_finite() {
                return Err(Error::config(
                    "glora search",
                    format!("the fitness of a candidate is {f}, not a finite number"),
                ));
            }
            index.insert(c.clone(), scored.len());
            scored.push((c, f));
        }
        // The best `select` of everything scored; ties go to the earlier candidate, so runs are reproducible.
        let mut order: Vec<usize> = (0..scored.len()).collect();
        order.sort_by(|&i, &j| scored[j].1.total_cmp(&scored[i].1).then(i.cmp(&j)));
        order.truncate(cfg.select);
        top = order;
        history.push(scored[top[0]].1);
        if gen + 1 == cfg.generations {
            break;
        }
        let parents: Vec<Vec<LayerChoice>> = top.iter().map(|&i| scored[i].0.clone()).collect();
        let mut mutate = |r: &mut Rng| {
            let mut c = parents[r.below(parents.len() as u64) as usize].clone();
            for (lc, s) in c.iter_mut().zip(layers) {
                for k in PathKind::ALL {
                    if r.uniform() < cfg.mutation_prob {
                        lc.set(k, space.sample_path(k, s.has_bias, r));
                    }
                }
            }
            c
        };
        let mut next = propose(cfg.mutation, rng, &mut seen, &mut mutate);
        let mut cross = |r: &mut Rng| {
            let p1 = &parents[r.below(parents.len() as u64) as usize];
            let p2 = &parents[r.below(parents.len() as u64) as usize];
            p1.iter()
                .zip(p2)
                .map(|(a, b)| {
                    let mut c = *a;
                    for k in PathKind::ALL {
                        if r.below(2) == 1 {
                            c.set(k, b.get(k));
                        }
                    }
                    c
                })
                .collect::<Vec<_>>()
        };
        next.extend(propose(cfg.crossover, rng, &mut seen, &mut cross));
        let fill = cfg.population.saturating_sub(next.len());
        next.extend(propose(fill, rng, &mut seen, &mut |r| random(r)));
        population = next;
    }
    let best = scored[top[0]].0.clone();
    Ok(SearchResult {
        best_params: count(&best),
        best_fitness: scored[top[0]].1,
        best,
        history,
        evaluations: scored.len(),
        top: top.iter().map(|&i| scored[i].clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glora::Support;

    fn layers() -> Vec<LayerShape> {
        vec![
            LayerShape {
                in_f: 16,
                out_f: 12,
                has_bias: true,
            },
            LayerShape {
                in_f: 12,
                out_f: 16,
                has_bias: false,
            },
            LayerShape {
                in_f: 9,
                out_f: 7,
                has_bias: true,
            },
        ]
    }

    /// A toy fitness whose optimum is known: every layer's A low-rank 8, B vector, others as cheap as possible.
    fn toy(c: &[LayerChoice]) -> Result<f64> {
        Ok(c.iter()
            .map(|l| {
                let mut s = 0.0;
                s += if l.a == Support::LowRank(8) {
                    2.0
                } else if l.a == Support::LowRank(4) {
                    1.0
                } else {
                    0.0
                };
                s += if l.b == Support::Vector { 1.0 } else { 0.0 };
                s += if l.c == Support::None { 0.5 } else { 0.0 };
                s
            })
            .sum())
    }

    #[test]
    fn finds_the_toy_optimum_and_is_reproducible() {
        let space = SearchSpace::paper(8, 4);
        let cfg = SearchConfig::default();
        let r1 = evolution_search(&space, &layers(), &cfg, &mut Rng::new(7), toy).unwrap();
        let r2 = evolution_search(&space, &layers(), &cfg, &mut Rng::new(7), toy).unwrap();
        assert_eq!(r1.best, r2.best);
        assert_eq!(r1.history, r2.history);
        assert!(r1.history.windows(2).all(|w| w[1] >= w[0]));
        // The maximum: 2 + 1 + 0.5 on the two bias layers, 2 + 1 + 0.5 (C forced off) on the bias-free one.
        assert_eq!(r1.best_fitness, 10.5);
        assert!(r1.evaluations <= 50 * 20);
        assert_eq!(r1.top.len(), 10);
    }

    #[test]
    fn the_parameter_limit_binds() {
        let space = SearchSpace::paper(8, 4);
        let ls = layers();
        // Low-rank 8 on A costs 8·(out+in) per layer; this limit forbids it on at least one layer.
        let limit = 8 * (12 + 16) * 2 + 4 * (7 + 9) + 100;
        let cfg = SearchConfig {
            param_limit: Some(limit),
            ..SearchConfig::default()
        };
        let r = evolution_search(&space, &ls, &cfg, &mut Rng::new(3), toy).unwrap();
        assert!(r.best_params <= limit);
        for (c, _) in &r.top {
            let n: usize = c
                .iter()
                .zip(&ls)
                .map(|(c, s)| c.param_count(s.in_f, s.out_f, s.has_bias))
                .sum();
            assert!(n <= limit);
        }
        // Only the all-off candidate fits a limit of 0, and random draws practically never hit it: the search
        // says so instead of looping.
        let cfg = SearchConfig {
            param_limit: Some(0),
            ..SearchConfig::default()
        };
        let e = evolution_search(&space, &ls, &cfg, &mut Rng::new(3), toy).unwrap_err();
        assert!(e.to_string().contains("parameter limit"), "{e}");
    }

    #[test]
    fn a_non_finite_fitness_is_an_error() {
        let space = SearchSpace::paper(8, 4);
        let e = evolution_search(
            &space,
            &layers(),
            &SearchConfig::default(),
            &mut Rng::new(1),
            |_| Ok(f64::NAN),
        )
        .unwrap_err();
        assert!(e.to_string().contains("finite"));
    }
}
