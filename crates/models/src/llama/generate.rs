//! Autoregressive decoding with the KV cache: greedy (temperature 0), or sampling from the temperature-scaled
//! softmax restricted to the top-p nucleus with a seeded `Rng`, stopping at a stop token or a length limit.

use rankfold_tensor::{Rng, Tensor};

use super::{KvCache, Llama};
use crate::Result;

/// How `Llama::generate` picks tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// The most tokens to produce.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 (or below) picks the most likely token (ties go to the lowest id).
    pub temperature: f64,
    /// Nucleus size: sample only from the most likely tokens whose probabilities first reach this total (1 = all).
    pub top_p: f64,
    /// Tokens that end generation; the stop token is included in the output.
    pub stop_tokens: Vec<u32>,
    /// The sampling seed.
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            stop_tokens: Vec::new(),
            seed: 0,
        }
    }
}

/// Picks a token from one row of logits: the argmax for `temperature <= 0`, else a draw from the top-p nucleus
/// of softmax(logits / temperature).
pub fn sample_token(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if temperature <= 0.0 || logits.is_empty() {
        return argmax();
    }
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, ((v as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    // Most likely first; equal probabilities keep id order, so the nucleus is deterministic.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= top_p {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let sum: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * sum;
    for p in nucleus {
        if u < p.1 {
            return p.0;
        }
        u -= p.1;
    }
    nucleus[kept - 1].0
}

impl Llama {
    /// Continues one prompt; returns only the new tokens (ending with the stop token when one was produced).
    pub fn generate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>> {
        self.generate_with(prompt, opts, |_| {})
    }

    /// [`Llama::generate`], calling `on_token` with each new token as soon as it is picked (for streaming).
    pub fn generate_with(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        let mut rng = Rng::new(opts.seed);
        let mut cache = KvCache::new();
        let device = self.embed_tokens.weight().device();
        let mut next = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < opts.max_new_tokens && !next.is_empty() {
            let n = next.len();
            let logits =
                self.forward_cached(&Tensor::from_vec(next, (1, n), device)?, &mut cache)?;
            let row = logits.narrow(1, n - 1, 1)?.flatten_all()?.to_vec_f32()?;
            let tok = sample_token(&row, opts.temperature, opts.top_p, &mut rng);
            out.push(tok);
            on_token(tok);
            if opts.stop_tokens.contains(&tok) {
                break;
            }
            next = vec![tok];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_nucleus_distribution() {
        let logits = [0.3f32, 2.0, -1.0, 1.2, 2.0, 0.9, -0.4];
        let (t, p) = (0.7, 0.8);
        // An independent reference: softmax by hand, then the smallest most-likely set reaching p.
        let e: Vec<f64> = logits.iter().map(|&v| (v as f64 / t).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| e[b].partial_cmp(&e[a]).expect("finite").then(a.cmp(&b)));
        let (mut acc, mut keep) = (0.0, Vec::new());
        for &i in &order {
            keep.push(i);
            acc += e[i] / z;
            if acc >= p {
                break;
            }
        }
        let zk: f64 = keep.iter().map(|&i| e[i]).sum();
        let mut rng = Rng::new(5);
        let n = 40_000;
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[sample_token(&logits, t, p, &mut rng) as usize] += 1;
        }
        for i in 0..logits.len() {
            let want = if keep.contains(&i) { e[i] / zk } else { 0.0 };
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.01,
                "token {i}: frequency {got}, expected {want}"
            );
        }
        assert_eq!(sample_token(&logits, 0.0, 1.0, &mut rng), 1);
        assert_eq!(sample_token(&logits, 1.0, 1e-9, &mut rng), 1);
    }
}
