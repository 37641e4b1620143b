//! The WordPiece tokenizer of BERT models, built from a Hugging Face `tokenizer.json`: added tokens matched
//! literally first, then the BERT normalizer (clean text, spaces around CJK ideographs, accents stripped,
//! lowercase), the BERT pre-tokenizer (whitespace split, punctuation isolated), greedy longest-match-first
//! WordPiece with a `##` continuation prefix, and the template post-processor (`[CLS] $A [SEP]`) with truncation.
//!
//! The Unicode category tables are those of the `unicode_categories` crate, which the Python `tokenizers`
//! package also uses, so characters whose category changed between Unicode versions split the same way.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

/// The options of a `BertNormalizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertNormalizer {
    /// Drop control characters, NUL and U+FFFD, and turn every whitespace character into a space.
    pub clean_text: bool,
    /// Put spaces around CJK ideographs so each becomes a word of its own.
    pub handle_chinese_chars: bool,
    /// Decompose (NFD) and drop non-spacing marks.
    pub strip_accents: bool,
    /// Lowercase every character (one character at a time, as the reference does: a final Σ becomes σ).
    pub lowercase: bool,
}

/// One piece of the single-sequence template: a special token's ids, or the sequence itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Special(Vec<u32>),
    Sequence,
}

/// A BERT WordPiece tokenizer.
#[derive(Debug, Clone)]
pub struct WordPiece {
    /// Token id → token text.
    tokens: Vec<String>,
    /// Token text → id.
    vocab: HashMap<String, u32>,
    /// The id of the unknown token.
    unk: u32,
    /// The prefix of pieces that continue a word (`##`).
    prefix: String,
    /// Words with more characters than this become the unknown token whole.
    max_chars: usize,
    normalizer: BertNormalizer,
    /// Added tokens as (text, id), longest first, matched literally before normalization.
    added: Vec<(String, u32)>,
    /// The single-sequence template of the post-processor (just the sequence when there is none).
    template: Vec<Piece>,
    /// `truncation.max_length` of the tokenizer.json, if it sets one.
    max_length: Option<usize>,
    /// The padding id (`padding.pad_id`, else the id of `[PAD]`, else 0).
    pad: u32,
}

fn err(origin: &str, msg: impl Into<String>) -> Error {
    Error::Tokenizer {
        origin: origin.to_string(),
        msg: msg.into(),
    }
}

/// Whitespace as the BERT normalizer sees it.
fn is_bert_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control characters as the BERT normalizer sees them: categories Cc, Cf and Co, except tab and line breaks.
fn is_bert_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// Punctuation as the BERT pre-tokenizer sees it: ASCII punctuation (which includes symbols such as `$` and
/// `^`) and every Unicode punctuation category.
fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK ideograph blocks that the normalizer isolates.
fn is_chinese_char(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

impl BertNormalizer {
    /// `text` normalized.
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{FFFD}' || is_bert_control(c) {
                    continue;
                }
                if is_bert_whitespace(c) {
                    out.push(' ');
                    continue;
                }
            }
            if self.handle_chinese_chars && is_chinese_char(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out.nfd().filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }
}

/// The words of normalized text: split at whitespace (dropped) and around each punctuation character (kept as a
/// word of its own).
pub fn bert_pre_tokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if ws || is_bert_punctuation(c) {
            if let Some(s) = start.take() {
                words.push(&text[s..i]);
            }
            if !ws {
                words.push(&text[i..i + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push(&text[s..]);
    }
    words
}

fn str_field<'a>(v: &'a Value, origin: &str, field: &str) -> Result<&'a str> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| err(origin, format!("`{field}` is missing or not a string")))
}

fn bool_field(v: &Value, origin: &str, field: &str, default: bool) -> Result<bool> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(b) => b
            .as_bool()
            .ok_or_else(|| err(origin, format!("`{field}` is not a boolean: {b}"))),
    }
}

impl WordPiece {
    /// Reads a `tokenizer.json` whose model is WordPiece.
    pub fn from_file(path: impl AsRef<Path>) -> Result<WordPiece> {
        let p = path.as_ref();
        let shown = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_json_str(&shown, &text)
    }

    /// Parses the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_json_str(origin: &str, json: &str) -> Result<WordPiece> {
        let v: Value = serde_json::from_str(json).map_err(|e| err(origin, e.to_string()))?;
        let model = v
            .get("model")
            .ok_or_else(|| err(origin, "`model` is missing"))?;
        let kind = str_field(model, origin, "type")?;
        if kind != "WordPiece" {
            return Err(err(
                origin,
                format!("model type `{kind}` is not supported by the WordPiece tokenizer"),
            ));
        }
        let vocab_obj = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| err(origin, "`model.vocab` is missing or not an object"))?;
        let mut tokens = vec![None; vocab_obj.len()];
        for (t, id) in vocab_obj {
            let i = id
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < tokens.len())
                .ok_or_else(|| {
                    err(
                        origin,
                        format!("`model.vocab`: token `{t}` has a bad id {id}"),
                    )
                })?;
            if tokens[i].replace(t.clone()).is_some() {
                return Err(err(origin, format!("`model.vocab`: id {i} is given twice")));
            }
        }
        let tokens: Vec<String> = tokens.into_iter().map(Option::unwrap_or_default).collect();
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let unk_text = str_field(model, origin, "unk_token")?;
        let unk = *vocab.get(unk_text).ok_or_else(|| {
            err(
                origin,
                format!("`model.unk_token` `{unk_text}` is not in the vocabulary"),
            )
        })?;
        let prefix = model
            .get("continuing_subword_prefix")
            .and_then(Value::as_str)
            .unwrap_or("##")
            .to_string();
        let max_chars = model
            .get("max_input_chars_per_word")
            .and_then(Value::as_u64)
            .map_or(100, |n| n as usize);
        let normalizer = Self::parse_normalizer(origin, v.get("normalizer"))?;
        match v.get("pre_tokenizer") {
            Some(p) if p.get("type").and_then(Value::as_str) == Some("BertPreTokenizer") => {}
            other => {
                let shown = other.map_or("none".to_string(), Value::to_string);
                return Err(err(
                    origin,
                    format!("pre_tokenizer {shown} is not supported (only BertPreTokenizer)"),
                ));
            }
        }
        let mut added = Vec::new();
        for a in v
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let content = str_field(a, origin, "content")?;
            let id = a
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| (i as usize) < tokens.len())
                .ok_or_else(|| err(origin, format!("added token `{content}` has a bad id")))?;
            if !content.is_empty() {
                added.push((content.to_string(), id));
            }
        }
        added.sort_by_key(|a| std::cmp::Reverse(a.0.len()));
        let template = Self::parse_template(origin, &vocab, v.get("post_processor"))?;
        let max_length = v
            .get("truncation")
            .and_then(|t| t.get("max_length"))
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let pad = v
            .get("padding")
            .and_then(|p| p.get("pad_id"))
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .or_else(|| vocab.get("[PAD]").copied())
            .unwrap_or(0);
        Ok(WordPiece {
            tokens,
            vocab,
            unk,
            prefix,
            max_chars,
            normalizer,
            added,
            template,
            max_length,
            pad,
        })
    }

    fn parse_normalizer(origin: &str, n: Option<&Value>) -> Result<BertNormalizer> {
        let Some(n) = n.filter(|n| !n.is_null()) else {
            return Ok(BertNormalizer {
                clean_text: false,
                handle_chinese_chars: false,
                strip_accents: false,
                lowercase: false,
            });
        };
        let kind = str_field(n, origin, "type")?;
        if kind != "BertNormalizer" {
            return Err(err(
                origin,
                format!("normalizer `{kind}` is not supported (only BertNormalizer)"),
            ));
        }
        let lowercase = bool_field(n, origin, "lowercase", true)?;
        Ok(BertNormalizer {
            clean_text: bool_field(n, origin, "clean_text", true)?,
            handle_chinese_chars: bool_field(n, origin, "handle_chinese_chars", true)?,
            // Unset, accents are stripped exactly when text is lowercased.
            strip_accents: bool_field(n, origin, "strip_accents", lowercase)?,
            lowercase,
        })
    }

    fn parse_template(
        origin: &str,
        vocab: &HashMap<String, u32>,
        p: Option<&Value>,
    ) -> Result<Vec<Piece>> {
        let Some(p) = p.filter(|p| !p.is_null()) else {
            return Ok(vec![Piece::Sequence]);
        };
        let special = |name: &str| -> Result<Vec<u32>> {
            // A template names its special tokens; their ids are listed under `special_tokens`.
            if let Some(ids) = p
                .get("special_tokens")
                .and_then(|s| s.get(name))
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
            {
                return ids
                    .iter()
                    .map(|i| {
                        i.as_u64().map(|i| i as u32).ok_or_else(|| {
                            err(origin, format!("special token `{name}`: bad id {i}"))
                        })
                    })
                    .collect();
            }
            vocab.get(name).map(|&i| vec![i]).ok_or_else(|| {
                err(
                    origin,
                    format!("post_processor: special token `{name}` is unknown"),
                )
            })
        };
        match str_field(p, origin, "type")? {
            "TemplateProcessing" => {
                let single = p
                    .get("single")
                    .and_then(Value::as_array)
                    .ok_or_else(|| err(origin, "post_processor.single is missing"))?;
                single
                    .iter()
                    .map(|piece| {
                        if let Some(s) = piece.get("SpecialToken") {
                            Ok(Piece::Special(special(str_field(s, origin, "id")?)?))
                        } else if piece.get("Sequence").is_some() {
                            Ok(Piece::Sequence)
                        } else {
                            Err(err(
                                origin,
                                format!("post_processor.single: bad piece {piece}"),
                            ))
                        }
                    })
                    .collect()
            }
            "BertProcessing" => {
                let id = |field: &str| -> Result<u32> {
                    p.get(field)
                        .and_then(|f| f.get(1))
                        .and_then(Value::as_u64)
                        .map(|i| i as u32)
                        .ok_or_else(|| err(origin, format!("post_processor.{field} is malformed")))
                };
                Ok(vec![
                    Piece::Special(vec![id("cls")?]),
                    Piece::Sequence,
                    Piece::Special(vec![id("sep")?]),
                ])
            }
            other => Err(err(
                origin,
                format!("post_processor `{other}` is not supported"),
            )),
        }
    }

    /// The WordPiece ids of one word (the unknown token when it cannot be split into vocabulary pieces, or
    /// when it has more than `max_input_chars_per_word` characters).
    fn word_ids(&self, word: &str, out: &mut Vec<u32>) {
        if word.chars().count() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let first = out.len();
        let mut start = 0;
        let mut piece = String::new();
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                // Step back one character.
                end -= word[start..end]
                    .chars()
                    .next_back()
                    .map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => out.push(id),
                None => {
                    out.truncate(first);
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }

    /// The ids of `text` without the template's special tokens and without truncation.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest added token in what is left, the longest one at that position.
            let hit = self
                .added
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let (chunk, after) = match hit {
                Some((at, len, id)) => (&rest[..at], Some((id, &rest[at + len..]))),
                None => (rest, None),
            };
            let normalized = self.normalizer.normalize(chunk);
            for w in bert_pre_tokenize(&normalized) {
                self.word_ids(w, &mut out);
            }
            match after {
                Some((id, tail)) => {
                    out.push(id);
                    rest = tail;
                }
                None => break,
            }
        }
        out
    }

    /// The ids of `text` with the template's special tokens (`[CLS] … [SEP]` for BERT), truncated to the
    /// tokenizer.json's `truncation.max_length` when it sets one.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with_max_len(text, self.max_length)
    }

    /// The ids of `text` with the template's special tokens, the text's own tokens cut so the whole fits in
    /// `max_len` (when given; the special tokens are always kept, even when they alone exceed it).
    pub fn encode_with_max_len(&self, text: &str, max_len: Option<usize>) -> Vec<u32> {
        let mut ids = self.encode_plain(text);
        if let Some(m) = max_len {
            ids.truncate(m.saturating_sub(self.num_special_tokens()));
        }
        let mut out = Vec::with_capacity(ids.len() + 2);
        for p in &self.template {
            match p {
                Piece::Special(s) => out.extend_from_slice(s),
                Piece::Sequence => out.extend_from_slice(&ids),
            }
        }
        out
    }

    /// How many ids the template adds around a sequence.
    pub fn num_special_tokens(&self) -> usize {
        self.template
            .iter()
            .map(|p| match p {
                Piece::Special(s) => s.len(),
                Piece::Sequence => 0,
            })
            .sum()
    }

    /// Text for ids: added tokens are skipped, continuation pieces are glued to the piece before, and other
    /// pieces are separated by spaces. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            let t = self.id_to_token(id).ok_or_else(|| {
                err(
                    "decode",
                    format!("id {id} is outside the vocabulary of {}", self.tokens.len()),
                )
            })?;
            if self.added.iter().any(|a| a.1 == id) {
                continue;
            }
            match t.strip_prefix(self.prefix.as_str()) {
                Some(cont) if !out.is_empty() => out.push_str(cont),
                _ => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(t);
                }
            }
        }
        Ok(out)
    }

    /// The id of a token's text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The number of ids.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of the unknown token.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// `truncation.max_length` of the tokenizer.json, if any.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// The normalizer options.
    pub fn normalizer(&self) -> BertNormalizer {
        self.normalizer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let json = r###"{
            "added_tokens": [{"id": 0, "content": "[PAD]"}, {"id": 1, "content": "[UNK]"},
                             {"id": 2, "content": "[CLS]"}, {"id": 3, "content": "[SEP]"}],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 9,
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "un": 4, "##aff": 5,
                                "##able": 6, "cafe": 7, "!": 8, "日": 9, "aaaaaaaa": 10, "##a": 11}}
        }"###;
        WordPiece::from_json_str("tiny.json", json).expect("the tiny tokenizer parses")
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        let t = tiny();
        assert_eq!(t.encode_plain("unaffable"), vec![4, 5, 6]);
        // "unaffx" cannot be split, so the whole word is unknown.
        assert_eq!(t.encode_plain("unaffx unaff"), vec![1, 4, 5]);
        // Accents are stripped, case folded, punctuation isolated, CJK split off.
        assert_eq!(t.encode_plain("CAFÉ!日Un"), vec![7, 8, 9, 4]);
        // Nine characters pass (as a piece and a continuation); ten are unknown whatever the vocabulary holds.
        assert_eq!(t.encode_plain("aaaaaaaaa aaaaaaaaaa"), vec![10, 11, 1]);
        assert_eq!(t.encode("un [SEP]un"), vec![2, 4, 3, 4, 3]);
        assert_eq!(t.encode_with_max_len("un un un", Some(4)), vec![2, 4, 4, 3]);
        assert_eq!(t.encode(""), vec![2, 3]);
        assert_eq!(t.decode(&[2, 4, 5, 6, 8, 3]).unwrap(), "unaffable !");
    }

    #[test]
    fn unsupported_parts_are_named() {
        let e = WordPiece::from_json_str("b.json", r#"{"model":{"type":"BPE"}}"#).unwrap_err();
        assert!(
            e.to_string().contains("b.json") && e.to_string().contains("BPE"),
            "{e}"
        );
        let e = WordPiece::from_json_str(
            "u.json",
            r#"{"model":{"type":"WordPiece","unk_token":"[UNK]","vocab":{"a":0}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unk_token"), "{e}");
    }
}
