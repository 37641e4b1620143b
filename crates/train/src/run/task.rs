//! The two tasks a run measures. (a) The causal-LM loss on labelled positions only: the decoder's final hidden
//! states are computed for the whole batch, the rows whose *next* token carries a label are gathered from the
//! flattened `[b·t, hidden]` matrix, and only those rows go through the LM head (for a chat labelling task that
//! is two rows per example instead of ~100, and the head is a fifth of SmolLM2's compute). (b) Label accuracy
//! for classification posed as a chat: at the position where the assistant's answer starts, the logits of the
//! candidate label words' first tokens are compared and the largest wins.

use rankfold_models::llama::Llama;
use rankfold_tensor::{no_grad, CrossEntropyOpts, Device, Tensor};
use serde::Serialize;

use crate::data::{collate, Batch, Example, PadSide, Padding, Tokenize, IGNORE};
use crate::{Error, Result};

/// The flattened `[b·t]` row of every position whose next token has a label, and that label.
pub fn label_rows(batch: &Batch) -> (Vec<u32>, Vec<i64>) {
    let t = batch.seq_len;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for r in 0..batch.batch {
        for p in 0..t.saturating_sub(1) {
            let l = batch.labels[r * t + p + 1];
            if l != IGNORE {
                rows.push((r * t + p) as u32);
                targets.push(l);
            }
        }
    }
    (rows, targets)
}

/// The decoder's final hidden states at the flattened `[b·t]` positions `rows` of `batch` (padding masked out of
/// attention): `[rows.len(), hidden]`, ready for the LM head.
fn hidden_rows(model: &Llama, batch: &Batch, rows: Vec<u32>) -> Result<Tensor> {
    let bt = batch.tensors(Device::Cpu)?;
    let hidden = model.forward_hidden(&bt.input_ids, Some(&bt.attention_mask))?;
    let h = model.config.hidden_size;
    let n = rows.len();
    Ok(hidden
        .reshape((batch.batch * batch.seq_len, h))?
        .index_select(&Tensor::from_vec(rows, n, Device::Cpu)?, 0)?)
}

/// The mean next-token cross-entropy over the labelled positions of `batch`, with the LM head applied to those
/// positions only. Padding is masked out of attention. An error when no position has a label.
pub fn lm_loss(model: &Llama, batch: &Batch) -> Result<Tensor> {
    let (rows, targets) = label_rows(batch);
    if rows.is_empty() {
        return Err(Error::Config(
            "a batch has no labelled token to take a loss on".into(),
        ));
    }
    let n = rows.len();
    let picked = hidden_rows(model, batch, rows)?;
    let logits = model.logits(&picked)?;
    let targets = Tensor::from_vec(targets, n, Device::Cpu)?;
    Ok(logits.cross_entropy(
        &targets,
        CrossEntropyOpts {
            ignore_index: None,
            label_smoothing: 0.0,
        },
    )?)
}

/// The mean loss and perplexity over labelled tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LmEval {
    /// Mean cross-entropy per labelled token.
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
    /// Labelled tokens counted.
    pub tokens: usize,
    /// Examples evaluated.
    pub examples: usize,
}

/// The LM loss over `examples` (without an autograd graph), in batches of `batch_size` after sorting by length
/// so padding stays small; `progress(done, total)` is called after each batch and returns whether to go on (false
/// ends the evaluation with [`Error::Interrupted`]).
pub fn lm_eval(
    model: &Llama,
    examples: &[Example],
    padding: &Padding,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<LmEval> {
    let examples: Vec<&Example> = examples.iter().filter(|e| e.trained_tokens() > 0).collect();
    if examples.is_empty() {
        return Err(Error::Config(
            "no evaluation example has a labelled token".into(),
        ));
    }
    let order = by_length(examples.iter().map(|e| e.len()));
    let (mut sum, mut tokens, mut done) = (0.0, 0usize, 0usize);
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = collate(
            &chunk.iter().map(|&i| examples[i]).collect::<Vec<_>>(),
            padding,
        )?;
        let count = label_rows(&batch).0.len();
        if count > 0 {
            let loss = no_grad(|| lm_loss(model, &batch))?.to_scalar()?;
            sum += loss * count as f64;
            tokens += count;
        }
        done += chunk.len();
        if !progress(done, examples.len()) {
            return Err(Error::Interrupted { done, total: examples.len() });
        }
    }
    let loss = sum / tokens.max(1) as f64;
    Ok(LmEval {
        loss,
        perplexity: loss.exp(),
        tokens,
        examples: examples.len(),
    })
}

/// Indices `0..n` ordered by the lengths given (stable, so equal lengths keep their order).
fn by_length(lengths: impl Iterator<Item = usize>) -> Vec<usize> {
    let lengths: Vec<usize> = lengths.collect();
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order
}

/// Classification as a chat: the label words and the token that starts each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTask {
    /// The label words, by class.
    pub words: Vec<String>,
    /// The first token of each word as the answer is tokenized in training (the word at the start of the
    /// assistant turn).
    pub tokens: Vec<u32>,
}

impl LabelTask {
    /// The task for `words`: their first tokens must exist and be distinct, or the answer would be ambiguous.
    pub fn new(tok: &dyn Tokenize, words: &[String]) -> Result<LabelTask> {
        let mut tokens = Vec::with_capacity(words.len());
        for w in words {
            let first = *tok
                .encode(w)
                .first()
                .ok_or_else(|| Error::Config(format!("label word {w:?} has no token")))?;
            if let Some(j) = tokens.iter().position(|&t| t == first) {
                return Err(Error::Config(format!(
                    "label words {:?} and {w:?} start with the same token {first}: the answer cannot tell them apart",
                    words[j]
                )));
            }
            tokens.push(first);
        }
        Ok(LabelTask {
            words: words.to_vec(),
            tokens,
        })
    }
}

/// One classification prompt: its tokens, ending where the answer would start, and the true class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelExample {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The index of the right word in [`LabelTask::words`].
    pub label: usize,
}

/// Counts for one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    /// The label word.
    pub word: String,
    /// Examples of this class.
    pub examples: usize,
    /// Of those, how many were predicted right.
    pub correct: usize,
    /// Examples (of any class) predicted as this class.
    pub predicted: usize,
}

/// Label accuracy with per-class counts: a model that always answers one word shows it in `predicted`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// Examples evaluated.
    pub examples: usize,
    /// Correct predictions.
    pub correct: usize,
    /// correct / examples.
    pub accuracy: f64,
    /// Per-class counts, by class.
    pub classes: Vec<ClassCounts>,
}

impl Accuracy {
    /// The share of predictions that went to each class, by class.
    pub fn predicted_shares(&self) -> Vec<f64> {
        self.classes
            .iter()
            .map(|c| c.predicted as f64 / self.examples.max(1) as f64)
            .collect()
    }
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accuracy {:.1}% ({}/{})",
            100.0 * self.accuracy,
            self.correct,
            self.examples
        )?;
        for c in &self.classes {
            write!(
                f,
                "; {}: {}/{} right, predicted {}×",
                c.word, c.correct, c.examples, c.predicted
            )?;
        }
        Ok(())
    }
}

/// The class each prompt's answer position prefers among the task's first tokens, in `examples` order.
pub fn predict_labels(
    model: &Llama,
    task: &LabelTask,
    examples: &[LabelExample],
    padding: &Padding,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<usize>> {
    if padding.side != PadSide::Right {
        return Err(Error::Config("label prediction pads on the right".into()));
    }
    let max_len = padding.max_len.unwrap_or(usize::MAX);
    // Over-long prompts keep their end, where the question and the answer position are.
    let prompts: Vec<&[u32]> = examples
        .iter()
        .map(|e| &e.prompt_ids[e.prompt_ids.len().saturating_sub(max_len)..])
        .collect();
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Config(format!(
            "classification example {i} has an empty prompt"
        )));
    }
    let order = by_length(prompts.iter().map(|p| p.len()));
    let cand = Tensor::from_vec(task.tokens.clone(), task.tokens.len(), Device::Cpu)?;
    let mut out = vec![0usize; examples.len()];
    let mut done = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let exs: Vec<Example> = chunk
            .iter()
            .map(|&i| Example {
                input_ids: prompts[i].to_vec(),
                labels: vec![IGNORE; prompts[i].len()],
                segment_ids: vec![0; prompts[i].len()],
            })
            .collect();
        let batch = collate(&exs.iter().collect::<Vec<_>>(), padding)?;
        let rows: Vec<u32> = batch
            .lengths
            .iter()
            .enumerate()
            .map(|(r, &len)| (r * batch.seq_len + len - 1) as u32)
            .collect();
        let scores = no_grad(|| -> Result<Vec<f32>> {
            let picked = hidden_rows(model, &batch, rows.clone())?;
            Ok(model
                .logits(&picked)?
                .index_select(&cand, 1)?
                .to_vec_f32()?)
        })?;
        let k = task.tokens.len();
        for (r, &i) in chunk.iter().enumerate() {
            out[i] = argmax(&scores[r * k..(r + 1) * k]);
        }
        done += chunk.len();
        if !progress(done, examples.len()) {
            return Err(Error::Interrupted { done, total: examples.len() });
        }
    }
    Ok(out)
}

/// The first index of the largest value.
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Accuracy and per-class counts of `predicted` against the examples' labels.
pub fn score(task: &LabelTask, examples: &[LabelExample], predicted: &[usize]) -> Accuracy {
    let mut classes: Vec<ClassCounts> = task
        .words
        .iter()
        .map(|w| ClassCounts {
            word: w.clone(),
            examples: 0,
            correct: 0,
            predicted: 0,
        })
        .collect();
    let mut correct = 0;
    for (e, &p) in examples.iter().zip(predicted) {
        classes[e.label].examples += 1;
        classes[p].predicted += 1;
        if p == e.label {
            classes[e.label].correct += 1;
            correct += 1;
        }
    }
    Accuracy {
        examples: examples.len(),
        correct,
        accuracy: correct as f64 / examples.len().max(1) as f64,
        classes,
    }
}

/// [`predict_labels`] and [`score`] in one call.
pub fn label_accuracy(
    model: &Llama,
    task: &LabelTask,
    examples: &[LabelExample],
    padding: &Padding,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Accuracy> {
    if let Some(e) = examples.iter().find(|e| e.label >= task.words.len()) {
        return Err(Error::Config(format!(
            "class {} has no label word (there are {})",
            e.label,
            task.words.len()
        )));
    }
    let predicted = predict_labels(model, task, examples, padding, batch_size, progress)?;
    Ok(score(task, examples, &predicted))
}
