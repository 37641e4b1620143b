//! JSONL readers: one JSON object per line, blank lines skipped. Four record shapes: `{"text"}` (language
//! modelling), `{"prompt","completion"}` and `{"messages":[{"role","content"}]}` (supervised fine-tuning) and
//! `{"text","label"}` (classification, `label` a non-negative integer). Extra fields are ignored. Every error names
//! the file and the 1-based line.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// A prompt and the completion the model should learn to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCompletion {
    /// The prompt (no loss on it).
    pub prompt: String,
    /// The completion (the loss is on it).
    pub completion: String,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// A text with its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledText {
    /// The text.
    pub text: String,
    /// The class index.
    pub label: usize,
}

/// The roles a `messages` record may use.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Reads a whole file as text, naming it in the error.
fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses each non-blank line of `text` as a JSON object and hands it, with its 1-based line number, to `f`.
fn parse_lines<T>(
    source: &str,
    text: &str,
    mut f: impl FnMut(&Map<String, Value>, usize) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| Error::Json {
            source_name: source.to_string(),
            line: line_no,
            message: e.to_string(),
        })?;
        let Value::Object(obj) = value else {
            return Err(Error::Json {
                source_name: source.to_string(),
                line: line_no,
                message: "expected a JSON object".into(),
            });
        };
        out.push(f(&obj, line_no)?);
    }
    Ok(out)
}

/// The string field `field` of `obj`.
fn string_field(
    obj: &Map<String, Value>,
    field: &str,
    source: &str,
    line: usize,
) -> Result<String> {
    match obj.get(field) {
        None => Err(Error::MissingField {
            source_name: source.into(),
            line,
            field: field.into(),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::BadField {
            source_name: source.into(),
            line,
            field: field.into(),
            expected: "a string".into(),
        }),
    }
}

/// Parses `{"text"}` records from in-memory JSONL; `source` names it in errors.
pub fn parse_text(source: &str, jsonl: &str) -> Result<Vec<String>> {
    parse_lines(source, jsonl, |obj, line| {
        string_field(obj, "text", source, line)
    })
}

/// Parses `{"prompt","completion"}` records from in-memory JSONL.
pub fn parse_prompt_completion(source: &str, jsonl: &str) -> Result<Vec<PromptCompletion>> {
    parse_lines(source, jsonl, |obj, line| {
        Ok(PromptCompletion {
            prompt: string_field(obj, "prompt", source, line)?,
            completion: string_field(obj, "completion", source, line)?,
        })
    })
}

/// Parses `{"messages"}` records from in-memory JSONL. Each message needs a known role and a string content, and a
/// conversation needs at least one assistant turn (else nothing would be learnt from it).
pub fn parse_messages(source: &str, jsonl: &str) -> Result<Vec<Vec<Message>>> {
    parse_lines(source, jsonl, |obj, line| {
        let bad = |field: &str, expected: &str| Error::BadField {
            source_name: source.into(),
            line,
            field: field.into(),
            expected: expected.into(),
        };
        let list = match obj.get("messages") {
            None => {
                return Err(Error::MissingField {
                    source_name: source.into(),
                    line,
                    field: "messages".into(),
                })
            }
            Some(Value::Array(list)) => list,
            Some(_) => {
                return Err(bad(
                    "messages",
                    "an array of {\"role\", \"content\"} objects",
                ))
            }
        };
        let mut messages = Vec::with_capacity(list.len());
        for (k, m) in list.iter().enumerate() {
            let Value::Object(m) = m else {
                return Err(bad(
                    &format!("messages[{k}]"),
                    "an object with `role` and `content`",
                ));
            };
            let role = string_field(m, "role", source, line)
                .map_err(|e| rename_field(e, &format!("messages[{k}].role")))?;
            if !ROLES.contains(&role.as_str()) {
                return Err(bad(
                    &format!("messages[{k}].role"),
                    "one of system, user, assistant",
                ));
            }
            let content = string_field(m, "content", source, line)
                .map_err(|e| rename_field(e, &format!("messages[{k}].content")))?;
            messages.push(Message { role, content });
        }
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(bad(
                "messages",
                "a conversation with at least one assistant turn",
            ));
        }
        Ok(messages)
    })
}

/// Replaces the field name in a field error with its full path inside the record.
fn rename_field(e: Error, path: &str) -> Error {
    match e {
        Error::MissingField {
            source_name, line, ..
        } => Error::MissingField {
            source_name,
            line,
            field: path.into(),
        },
        Error::BadField {
            source_name,
            line,
            expected,
            ..
        } => Error::BadField {
            source_name,
            line,
            field: path.into(),
            expected,
        },
        other => other,
    }
}

/// Parses `{"text","label"}` records from in-memory JSONL; `label` must be a non-negative integer.
pub fn parse_labeled(source: &str, jsonl: &str) -> Result<Vec<LabeledText>> {
    parse_lines(source, jsonl, |obj, line| {
        let text = string_field(obj, "text", source, line)?;
        let label = match obj.get("label") {
            None => {
                return Err(Error::MissingField {
                    source_name: source.into(),
                    line,
                    field: "label".into(),
                })
            }
            Some(v) => v
                .as_u64()
                .and_then(|l| usize::try_from(l).ok())
                .ok_or_else(|| Error::BadField {
                    source_name: source.into(),
                    line,
                    field: "label".into(),
                    expected: "a non-negative integer".into(),
                })?,
        };
        Ok(LabeledText { text, label })
    })
}

/// Reads a `{"text"}` JSONL file.
pub fn read_text(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    parse_text(&path.display().to_string(), &read(path)?)
}

/// Reads a `{"prompt","completion"}` JSONL file.
pub fn read_prompt_completion(path: impl AsRef<Path>) -> Result<Vec<PromptCompletion>> {
    let path = path.as_ref();
    parse_prompt_completion(&path.display().to_string(), &read(path)?)
}

/// Reads a `{"messages"}` JSONL file.
pub fn read_messages(path: impl AsRef<Path>) -> Result<Vec<Vec<Message>>> {
    let path = path.as_ref();
    parse_messages(&path.display().to_string(), &read(path)?)
}

/// Reads a `{"text","label"}` JSONL file.
pub fn read_labeled(path: impl AsRef<Path>) -> Result<Vec<LabeledText>> {
    let path = path.as_ref();
    parse_labeled(&path.display().to_string(), &read(path)?)
}
