//! Turning records into token sequences with labels. Labels follow the Hugging Face convention: `labels[i]` is the
//! token at position `i` (not shifted; the loss shifts) or [`IGNORE`] where no loss is taken. Language modelling
//! takes the loss everywhere; supervised fine-tuning only on completions and assistant turns.
//!
//! ChatML renders a conversation as `<|im_start|>{role}\n{content}<|im_end|>\n` per turn. Each piece is tokenized
//! on its own and the pieces are concatenated, so the label boundary falls exactly between pieces: the markup
//! `<|im_start|>assistant\n` and the trailing `\n` get [`IGNORE`]; an assistant's `{content}<|im_end|>` carries the
//! loss (the model learns to end its turn). Tokenizing pieces separately can differ from tokenizing the whole
//! string only where a BPE merge would cross a piece boundary; the special tokens and the newline after the role
//! are where the pieces meet, which tokenizers keep apart anyway.

use super::jsonl::{LabeledText, Message, PromptCompletion};

/// The label of positions that take no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// A tokenizer supplied by the caller (the models crate's, or a test's).
pub trait Tokenize {
    /// The token ids of `text`, without any special tokens added.
    fn encode(&self, text: &str) -> Vec<u32>;
}

/// Any function from text to ids is a tokenizer.
impl<F: Fn(&str) -> Vec<u32>> Tokenize for F {
    fn encode(&self, text: &str) -> Vec<u32> {
        self(text)
    }
}

/// One training sequence: token ids, labels, and which document each position belongs to (`segment_ids`: all 0
/// unless the sequence was packed from several documents).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Per-position labels (token id or [`IGNORE`]).
    pub labels: Vec<i64>,
    /// Per-position document index inside the sequence.
    pub segment_ids: Vec<u32>,
}

impl Example {
    /// Appends `ids`, with the loss on them when `train` is set.
    fn push(&mut self, ids: &[u32], train: bool) {
        self.input_ids.extend_from_slice(ids);
        self.labels.extend(
            ids.iter()
                .map(|&t| if train { i64::from(t) } else { IGNORE }),
        );
        self.segment_ids.extend(std::iter::repeat_n(0, ids.len()));
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The number of positions that take a loss.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }

    /// Keeps the first `max_len` positions.
    pub fn truncate(&mut self, max_len: usize) {
        self.input_ids.truncate(max_len);
        self.labels.truncate(max_len);
        self.segment_ids.truncate(max_len);
    }
}

/// A language-modelling example: `text`'s tokens, then `eos` if given, the loss on every position.
pub fn lm_example(tok: &dyn Tokenize, text: &str, eos: Option<u32>) -> Example {
    let mut ex = Example::default();
    ex.push(&tok.encode(text), true);
    if let Some(eos) = eos {
        ex.push(&[eos], true);
    }
    ex
}

/// How prompt/completion pairs become text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptFormat {
    /// The prompt's tokens (no loss), the completion's tokens, then `eos` if given (both with the loss).
    Plain {
        /// The end-of-sequence token appended after the completion.
        eos: Option<u32>,
    },
    /// A ChatML conversation: an optional system turn, the prompt as the user turn and the completion as the
    /// assistant turn.
    ChatMl {
        /// The system prompt, if any.
        system: Option<String>,
    },
}

/// A supervised example from a prompt/completion pair: the loss on the completion only.
pub fn prompt_completion_example(
    tok: &dyn Tokenize,
    record: &PromptCompletion,
    format: &PromptFormat,
) -> Example {
    match format {
        PromptFormat::Plain { eos } => {
            let mut ex = Example::default();
            ex.push(&tok.encode(&record.prompt), false);
            ex.push(&tok.encode(&record.completion), true);
            if let Some(eos) = eos {
                ex.push(&[*eos], true);
            }
            ex
        }
        PromptFormat::ChatMl { system } => {
            let mut messages = Vec::with_capacity(3);
            if let Some(system) = system {
                messages.push(Message {
                    role: "system".into(),
                    content: system.clone(),
                });
            }
            messages.push(Message {
                role: "user".into(),
                content: record.prompt.clone(),
            });
            messages.push(Message {
                role: "assistant".into(),
                content: record.completion.clone(),
            });
            chatml_example(tok, &messages)
        }
    }
}

/// The ChatML text of `messages` (what [`chatml_example`] tokenizes), optionally ending with the opening of an
/// assistant turn for generation.
pub fn chatml_text(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m.role, m.content
        ));
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}

/// A supervised example from a conversation in ChatML: the loss on each assistant turn's content and its
/// `<|im_end|>`, [`IGNORE`] elsewhere.
pub fn chatml_example(tok: &dyn Tokenize, messages: &[Message]) -> Example {
    let mut ex = Example::default();
    for m in messages {
        let train = m.role == "assistant";
        ex.push(&tok.encode(&format!("<|im_start|>{}\n", m.role)), false);
        ex.push(&tok.encode(&format!("{}<|im_end|>", m.content)), train);
        ex.push(&tok.encode("\n"), false);
    }
    ex
}

/// A classification example: the text's tokens and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// The class index.
    pub label: usize,
}

/// A classification example from a labelled text: its tokens, cut to the first `max_len` if given.
pub fn class_example(
    tok: &dyn Tokenize,
    record: &LabeledText,
    max_len: Option<usize>,
) -> ClassExample {
    let mut input_ids = tok.encode(&record.text);
    if let Some(m) = max_len {
        input_ids.truncate(m);
    }
    ClassExample {
        input_ids,
        label: record.label,
    }
}
