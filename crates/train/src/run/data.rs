//! A run's data: the records of [`DataSettings`] tokenized into training examples, evaluation examples and, for
//! classification posed as a chat, the label prompts. IMDB uses the fixed split of `data::imdb` (training
//! reviews from its train part, evaluation reviews from the start of its test part); a JSONL file holds out its
//! last `eval_examples` records unless `eval_path` names a separate file.

use std::cell::RefCell;

use rankfold_models::tokenizer::Tokenizer;

use super::spec::{DataFormat, DataSettings};
use super::task::{LabelExample, LabelTask};
use crate::data::imdb::{self, SplitSizes};
use crate::data::jsonl::{self, Message};
use crate::data::{chatml_example, lm_example, pack, Example, Tokenize};
use crate::{Error, Result};

/// The tokenized data of a run.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Training examples (none without a labelled token).
    pub train: Vec<Example>,
    /// Evaluation examples for the LM loss.
    pub eval: Vec<Example>,
    /// The label task and its prompts, for classification data.
    pub labels: Option<(LabelTask, Vec<LabelExample>)>,
}

/// A model tokenizer as a [`Tokenize`] that remembers the first encoding error instead of panicking.
#[derive(Debug)]
pub struct CheckedTokenizer<'a> {
    tok: &'a Tokenizer,
    error: RefCell<Option<rankfold_models::Error>>,
}

impl<'a> CheckedTokenizer<'a> {
    /// Wraps `tok`.
    pub fn new(tok: &'a Tokenizer) -> Self {
        CheckedTokenizer {
            tok,
            error: RefCell::new(None),
        }
    }

    /// The first error met, if any.
    pub fn check(&self) -> Result<()> {
        match self.error.borrow_mut().take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Tokenize for CheckedTokenizer<'_> {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.tok.encode(text).unwrap_or_else(|e| {
            self.error.borrow_mut().get_or_insert(e);
            Vec::new()
        })
    }
}

/// The end-of-text token of a tokenizer: the first of `<|endoftext|>`, `</s>`, `<|im_end|>` it has.
pub fn eos_token(tok: &Tokenizer) -> Option<u32> {
    ["<|endoftext|>", "</s>", "<|im_end|>"]
        .iter()
        .find_map(|t| tok.token_to_id(t))
}

/// Reads and tokenizes the data of `s`. With `eval_only` nothing is trained on (`train` is empty) and the
/// evaluation records are those a training run with the same settings holds out; a JSONL `path` without
/// `eval_path` and with `eval_examples` 0 is evaluated whole.
pub fn build(
    s: &DataSettings,
    tok: &dyn Tokenize,
    eos: Option<u32>,
    eval_only: bool,
) -> Result<RunData> {
    let (train_chats, eval_chats) = match s.format {
        DataFormat::Text => return build_text(s, tok, eos, eval_only),
        DataFormat::ImdbChat => imdb_chats(s, eval_only)?,
        DataFormat::Messages => split_records(s, |p| jsonl::read_messages(p), eval_only)?,
        DataFormat::PromptCompletion => {
            let to_chat = |p: jsonl::PromptCompletion| {
                let mut m = Vec::with_capacity(3);
                if let Some(sys) = &s.system {
                    m.push(Message {
                        role: "system".into(),
                        content: sys.clone(),
                    });
                }
                m.push(Message {
                    role: "user".into(),
                    content: p.prompt,
                });
                m.push(Message {
                    role: "assistant".into(),
                    content: p.completion,
                });
                m
            };
            let (a, b) = split_records(s, |p| jsonl::read_prompt_completion(p), eval_only)?;
            (
                a.into_iter().map(to_chat).collect(),
                b.into_iter().map(to_chat).collect(),
            )
        }
    };
    let example = |m: &Vec<Message>| {
        let mut e = chatml_example(tok, m);
        e.truncate(s.max_len);
        e
    };
    let train: Vec<Example> = train_chats
        .iter()
        .map(example)
        .filter(|e| e.trained_tokens() > 0)
        .collect();
    let eval: Vec<Example> = eval_chats.iter().map(example).collect();
    let labels = match &s.labels {
        None => None,
        Some(words) => {
            let task = LabelTask::new(tok, words)?;
            let prompts = eval_chats
                .iter()
                .enumerate()
                .map(|(i, chat)| label_prompt(tok, words, chat).ok_or_else(|| {
                    Error::Config(format!(
                        "evaluation record {} does not end with an assistant turn that is one of the labels {words:?}",
                        i + 1
                    ))
                }))
                .collect::<Result<Vec<_>>>()?;
            Some((task, prompts))
        }
    };
    if train.is_empty() && !eval_only {
        return Err(Error::Config(format!(
            "{}: no training example has a labelled token within max_len",
            s.path.display()
        )));
    }
    Ok(RunData {
        train,
        eval,
        labels,
    })
}

/// The prompt of a chat whose last turn is an assistant answer among `words`: the earlier turns, then the
/// opening of the assistant turn, tokenized piece by piece as in training.
fn label_prompt(tok: &dyn Tokenize, words: &[String], chat: &[Message]) -> Option<LabelExample> {
    let (last, rest) = chat.split_last()?;
    if last.role != "assistant" {
        return None;
    }
    let label = words.iter().position(|w| *w == last.content.trim())?;
    let mut prompt_ids = chatml_example(tok, rest).input_ids;
    prompt_ids.extend(tok.encode("<|im_start|>assistant\n"));
    Some(LabelExample { prompt_ids, label })
}

/// IMDB reviews as chats: `train_examples` from the train part and `eval_examples` from the test part.
/// Conversations, one list of turns each.
type Chats = Vec<Vec<Message>>;

fn imdb_chats(s: &DataSettings, eval_only: bool) -> Result<(Chats, Chats)> {
    let train = if eval_only { Some(0) } else { s.train_examples };
    let sizes = SplitSizes {
        train,
        ..SplitSizes::default()
    };
    if s.eval_examples > sizes.test {
        return Err(Error::Config(format!(
            "data.eval_examples = {} exceeds the {} test reviews",
            s.eval_examples, sizes.test
        )));
    }
    let splits = imdb::load(&s.path, sizes)?;
    let chat = |r: &jsonl::LabeledText| imdb::sentiment_chat(r, s.max_chars);
    let train = splits.train.iter().map(chat).collect::<Result<Vec<_>>>()?;
    let eval = splits.test[..s.eval_examples]
        .iter()
        .map(chat)
        .collect::<Result<Vec<_>>>()?;
    Ok((train, eval))
}

/// The training and evaluation records of a JSONL data set.
fn split_records<T>(
    s: &DataSettings,
    read: impl Fn(&std::path::Path) -> Result<Vec<T>>,
    eval_only: bool,
) -> Result<(Vec<T>, Vec<T>)> {
    if eval_only {
        // The same records a training run holds out: the first `eval_examples` of `eval_path`, or the last
        // `eval_examples` of `path` (all of it when the count is 0).
        return Ok(match &s.eval_path {
            Some(p) => {
                let mut e = read(p)?;
                if s.eval_examples > 0 {
                    e.truncate(s.eval_examples);
                }
                (Vec::new(), e)
            }
            None => {
                let mut e = read(&s.path)?;
                let keep = if s.eval_examples > 0 {
                    s.eval_examples.min(e.len())
                } else {
                    e.len()
                };
                (Vec::new(), e.split_off(e.len() - keep))
            }
        });
    }
    let mut train = read(&s.path)?;
    let eval = match &s.eval_path {
        Some(p) => {
            let mut e = read(p)?;
            if s.eval_examples > 0 {
                e.truncate(s.eval_examples);
            }
            e
        }
        None => {
            if s.eval_examples >= train.len() {
                return Err(Error::Config(format!(
                    "{}: holding out data.eval_examples = {} leaves none of its {} records to train on",
                    s.path.display(),
                    s.eval_examples,
                    train.len()
                )));
            }
            train.split_off(train.len() - s.eval_examples)
        }
    };
    if let Some(n) = s.train_examples {
        train.truncate(n);
    }
    Ok((train, eval))
}

/// Language-modelling data: each text with `eos` after it, packed or cut to `max_len`.
fn build_text(
    s: &DataSettings,
    tok: &dyn Tokenize,
    eos: Option<u32>,
    eval_only: bool,
) -> Result<RunData> {
    let read = |p: &std::path::Path| jsonl::read_text(p);
    let (train, eval) = split_records(s, read, eval_only)?;
    let make = |texts: &[String]| -> Result<Vec<Example>> {
        let ex: Vec<Example> = texts.iter().map(|t| lm_example(tok, t, eos)).collect();
        if s.pack {
            pack(&ex, s.max_len, false)
        } else {
            Ok(ex
                .into_iter()
                .map(|mut e| {
                    e.truncate(s.max_len);
                    e
                })
                .collect())
        }
    };
    let train: Vec<Example> = make(&train)?
        .into_iter()
        .filter(|e| e.trained_tokens() > 1)
        .collect();
    if train.is_empty() && !eval_only {
        return Err(Error::Config(format!(
            "{}: no text has two tokens or more",
            s.path.display()
        )));
    }
    Ok(RunData {
        train,
        eval: make(&eval)?,
        labels: None,
    })
}
