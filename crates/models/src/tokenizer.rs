//! A byte-level BPE tokenizer (the GPT-2 family, which SmolLM2 uses) built from a Hugging Face `tokenizer.json` or
//! from GGUF tokenizer metadata: special tokens matched first, the GPT-2 pre-tokenizer split (optionally with every
//! digit on its own), the byte↔unicode map, and merges applied by rank.

use std::collections::HashMap;
use std::path::Path;

use crate::gguf::GgufTokenizer;
use crate::{Error, Result};

/// The GPT-2 split without its `\s+(?!\S)` branch, which `split_gpt2` emulates (the `regex` crate has no lookahead).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// A byte-level BPE tokenizer with special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Token id → token text (byte-mapped for ordinary tokens, literal for special ones).
    tokens: Vec<String>,
    /// Token text → id.
    vocab: HashMap<String, u32>,
    /// (left id, right id) → (merge rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens as (text, id), longest first, matched literally before any splitting.
    specials: Vec<(String, u32)>,
    /// Ids of special tokens, which decode to their text as is.
    special_ids: HashMap<u32, ()>,
    /// Whether every numeric character is split off on its own before the GPT-2 split.
    individual_digits: bool,
    /// Whether a space is prepended when the text does not start with one.
    add_prefix_space: bool,
    /// The id unknown bytes become (`model.unk_token` of a tokenizer.json); they are dropped when `None`.
    unk: Option<u32>,
    /// Whether a pre-token found whole in the vocabulary skips the merges.
    ignore_merges: bool,
    /// The byte → char map of GPT-2 and its inverse.
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    split: regex::Regex,
}

fn err(origin: &str, msg: impl Into<String>) -> Error {
    Error::Tokenizer {
        origin: origin.to_string(),
        msg: msg.into(),
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to themselves and the
/// rest to code points from U+0100 upwards, in byte order.
fn byte_map() -> ([char; 256], HashMap<char, u8>) {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let code = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        map[usize::from(b)] = char::from_u32(code).unwrap_or('\0');
    }
    let inverse = map.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    (map, inverse)
}

/// The pieces of the pre-tokenizer options the tokenizer supports.
struct PreTokenizer {
    individual_digits: bool,
    add_prefix_space: bool,
}

impl Tokenizer {
    #[allow(clippy::too_many_arguments)]
    fn build(
        origin: &str,
        tokens: Vec<String>,
        merges: Vec<(String, String)>,
        specials: Vec<(String, u32)>,
        pre: PreTokenizer,
        ignore_merges: bool,
        unk: Option<&str>,
    ) -> Result<Tokenizer> {
        let mut vocab = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| err(origin, "more than 2^32 tokens"))?;
            vocab.entry(t.clone()).or_insert(id);
        }
        let unk = match unk {
            None => None,
            Some(u) => Some(vocab.get(u).copied().ok_or_else(|| {
                err(
                    origin,
                    format!("model.unk_token `{u}` is not in the vocabulary"),
                )
            })?),
        };
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let look = |s: &str| {
                vocab.get(s).copied().ok_or_else(|| {
                    err(
                        origin,
                        format!("merge {rank} `{a} {b}`: `{s}` is not in the vocabulary"),
                    )
                })
            };
            let (ia, ib, im) = (look(a)?, look(b)?, look(&format!("{a}{b}"))?);
            merge_map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let mut specials = specials;
        for (s, id) in &specials {
            if (*id as usize) >= tokens.len() || s.is_empty() {
                return Err(err(
                    origin,
                    format!("special token `{s}` has a bad id {id}"),
                ));
            }
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let special_ids = specials.iter().map(|(_, id)| (*id, ())).collect();
        let (byte_to_char, char_to_byte) = byte_map();
        let split = regex::Regex::new(GPT2_PATTERN)
            .map_err(|e| err(origin, format!("pre-tokenizer pattern: {e}")))?;
        Ok(Tokenizer {
            tokens,
            vocab,
            merges: merge_map,
            specials,
            special_ids,
            individual_digits: pre.individual_digits,
            add_prefix_space: pre.add_prefix_space,
            ignore_merges,
            unk,
            byte_to_char,
            char_to_byte,
            split,
        })
    }

    /// Builds the tokenizer from GGUF metadata of model `gpt2` (byte-level BPE) with pre-tokenizer `gpt2` or
    /// `smollm` (or none given, read as `gpt2`); control and user-defined tokens (types 3 and 4) are special.
    pub fn from_gguf(t: &GgufTokenizer) -> Result<Tokenizer> {
        let origin = "GGUF metadata";
        if t.model != "gpt2" {
            return Err(err(
                origin,
                format!(
                    "tokenizer.ggml.model `{}` is not supported (only `gpt2`, byte-level BPE)",
                    t.model
                ),
            ));
        }
        let individual_digits = match t.pre.as_deref() {
            None | Some("gpt2") | Some("gpt-2") => false,
            Some("smollm") => true,
            Some(p) => {
                return Err(err(
                    origin,
                    format!("tokenizer.ggml.pre `{p}` is not supported (only `gpt2` and `smollm`)"),
                ))
            }
        };
        let mut merges = Vec::with_capacity(t.merges.len());
        for (i, m) in t.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                err(
                    origin,
                    format!("tokenizer.ggml.merges[{i}] `{m}` has no space"),
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let mut specials = Vec::new();
        if let Some(types) = &t.token_types {
            for (i, (&ty, tok)) in types.iter().zip(&t.tokens).enumerate() {
                if ty == 3 || ty == 4 {
                    specials.push((tok.clone(), i as u32));
                }
            }
        }
        let pre = PreTokenizer {
            individual_digits,
            add_prefix_space: false,
        };
        Tokenizer::build(origin, t.tokens.clone(), merges, specials, pre, false, None)
    }

    /// Reads a Hugging Face `tokenizer.json` file (see [`Tokenizer::from_json_str`]).
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Tokenizer::from_json_str(&path.display().to_string(), &text)
    }

    /// Parses `tokenizer.json` text: a `BPE` model without normalizer, a `ByteLevel` pre-tokenizer alone or after
    /// `Digits` with individual digits, and `added_tokens` matched literally. `origin` names the source in errors.
    pub fn from_json_str(origin: &str, text: &str) -> Result<Tokenizer> {
        use serde_json::Value as J;
        let root: J =
            serde_json::from_str(text).map_err(|e| err(origin, format!("not JSON: {e}")))?;
        if !root.get("normalizer").is_none_or(J::is_null) {
            return Err(err(origin, "`normalizer` is not supported (only null)"));
        }
        let model = root.get("model").ok_or_else(|| err(origin, "no `model`"))?;
        let kind = model.get("type").and_then(J::as_str).unwrap_or("");
        if kind != "BPE" {
            return Err(err(
                origin,
                format!("model.type `{kind}` is not supported (only BPE)"),
            ));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix", "dropout"] {
            if !model.get(key).is_none_or(J::is_null) {
                return Err(err(
                    origin,
                    format!("model.{key} is not supported (only null)"),
                ));
            }
        }
        for key in ["byte_fallback", "fuse_unk"] {
            if model.get(key).and_then(J::as_bool) == Some(true) {
                return Err(err(
                    origin,
                    format!("model.{key} is not supported (only false)"),
                ));
            }
        }
        let ignore_merges = model.get("ignore_merges").and_then(J::as_bool) == Some(true);
        let vocab = model
            .get("vocab")
            .and_then(J::as_object)
            .ok_or_else(|| err(origin, "model.vocab is not an object"))?;
        let mut tokens = vec![None; vocab.len()];
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .filter(|&i| (i as usize) < vocab.len())
                .ok_or_else(|| {
                    err(
                        origin,
                        format!("model.vocab `{tok}`: id {id} is not in 0..{}", vocab.len()),
                    )
                })?;
            tokens[id as usize] = Some(tok.clone());
        }
        let mut merges = Vec::new();
        for (i, m) in model
            .get("merges")
            .and_then(J::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let pair = match m {
                J::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                J::Array(v) if v.len() == 2 => match (v[0].as_str(), v[1].as_str()) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            };
            merges
                .push(pair.ok_or_else(|| err(origin, format!("model.merges[{i}] is not a pair")))?);
        }
        let mut specials = Vec::new();
        for (i, a) in root
            .get("added_tokens")
            .and_then(J::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (Some(id), Some(content)) = (
                a.get("id").and_then(J::as_u64),
                a.get("content").and_then(J::as_str),
            ) else {
                return Err(err(
                    origin,
                    format!("added_tokens[{i}] needs `id` and `content`"),
                ));
            };
            let id = id as usize;
            if id >= tokens.len() {
                tokens.resize(id + 1, None);
            }
            match &tokens[id] {
                Some(t) if t != content => {
                    return Err(err(
                        origin,
                        format!("added_tokens[{i}]: id {id} is `{t}` in the vocabulary"),
                    ))
                }
                _ => tokens[id] = Some(content.to_string()),
            }
            specials.push((content.to_string(), id as u32));
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| err(origin, format!("no token has id {i}"))))
            .collect::<Result<Vec<_>>>()?;
        let pre = parse_pre(origin, root.get("pre_tokenizer"))?;
        let unk = model.get("unk_token").and_then(J::as_str);
        Tokenizer::build(origin, tokens, merges, specials, pre, ignore_merges, unk)
    }

    /// The vocabulary size (largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token text (ordinary tokens in byte-mapped form), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Encodes text to ids; special tokens in the text become their ids, and nothing is added around it. A byte
    /// that is not a token (SmolLM2 lacks a few control bytes) becomes the unknown token when the tokenizer.json
    /// names one, and is dropped otherwise, as Hugging Face `tokenizers` does; so this does not fail.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            // The leftmost special token, the longest at that position (the list is sorted longest first).
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, s.len(), *id)))
                .min_by_key(|&(p, len, _)| (p, usize::MAX - len));
            let (plain, next) = match hit {
                Some((p, len, id)) => (&rest[..p], Some((id, &rest[p + len..]))),
                None => (rest, None),
            };
            if !plain.is_empty() {
                self.encode_plain(plain, first, &mut ids)?;
            }
            first = false;
            match next {
                Some((id, tail)) => {
                    ids.push(id);
                    rest = tail;
                }
                None => break,
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text; byte sequences that are not UTF-8 (a token cut inside a character) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// Decodes ids to the raw bytes they stand for.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &id in ids {
            let tok = self.tokens.get(id as usize).ok_or_else(|| {
                err(
                    "decode",
                    format!("id {id} is outside the vocabulary of {}", self.tokens.len()),
                )
            })?;
            if self.special_ids.contains_key(&id) {
                out.extend_from_slice(tok.as_bytes());
                continue;
            }
            for c in tok.chars() {
                match self.char_to_byte.get(&c) {
                    Some(&b) => out.push(b),
                    // Characters outside the byte map (none in a byte-level vocabulary) pass through as UTF-8.
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        Ok(out)
    }

    fn encode_plain(&self, text: &str, at_start: bool, ids: &mut Vec<u32>) -> Result<()> {
        let owned;
        let text = if self.add_prefix_space && at_start && !text.starts_with(' ') {
            owned = format!(" {text}");
            owned.as_str()
        } else {
            text
        };
        let mut pieces = Vec::new();
        if self.individual_digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    if start < i {
                        pieces.push(&text[start..i]);
                    }
                    pieces.push(&text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            if start < text.len() {
                pieces.push(&text[start..]);
            }
        } else {
            pieces.push(text);
        }
        for piece in pieces {
            for word in split_gpt2(&self.split, piece) {
                self.bpe(word, ids)?;
            }
        }
        Ok(())
    }

    /// Applies the merges to one pre-token and appends its ids.
    fn bpe(&self, word: &str, ids: &mut Vec<u32>) -> Result<()> {
        let mapped: String = word
            .bytes()
            .map(|b| self.byte_to_char[usize::from(b)])
            .collect();
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(&mapped) {
                ids.push(id);
                return Ok(());
            }
        }
        let mut syms = Vec::with_capacity(mapped.len());
        for c in mapped.chars() {
            match self.vocab.get(c.encode_utf8(&mut [0; 4]) as &str) {
                Some(&id) => syms.push(id),
                None => syms.extend(self.unk),
            }
        }
        loop {
            // The pair with the lowest rank; all of its occurrences are merged left to right.
            let best = syms
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(r, m)| (r, w[0], w[1], m))
                })
                .min_by_key(|x| x.0);
            let Some((_, a, b, m)) = best else { break };
            let mut merged = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                    merged.push(m);
                    i += 2;
                } else {
                    merged.push(syms[i]);
                    i += 1;
                }
            }
            syms = merged;
        }
        ids.extend_from_slice(&syms);
        Ok(())
    }
}

/// Reads the `pre_tokenizer` of a `tokenizer.json`.
fn parse_pre(origin: &str, pre: Option<&serde_json::Value>) -> Result<PreTokenizer> {
    use serde_json::Value as J;
    let unsupported = || {
        err(
            origin,
            "pre_tokenizer is not supported (only ByteLevel with use_regex, optionally after Digits)",
        )
    };
    let pre = pre.ok_or_else(unsupported)?;
    let parts: Vec<&J> = match pre.get("type").and_then(J::as_str) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(J::as_array)
            .ok_or_else(unsupported)?
            .iter()
            .collect(),
        _ => vec![pre],
    };
    let (digits, byte_level) = match parts.as_slice() {
        [b] => (None, *b),
        [d, b] => (Some(*d), *b),
        _ => return Err(unsupported()),
    };
    let individual_digits = match digits {
        None => false,
        Some(d) if d.get("type").and_then(J::as_str) == Some("Digits") => {
            if d.get("individual_digits").and_then(J::as_bool) != Some(true) {
                return Err(err(
                    origin,
                    "pre_tokenizer Digits without individual_digits is not supported",
                ));
            }
            true
        }
        Some(_) => return Err(unsupported()),
    };
    if byte_level.get("type").and_then(J::as_str) != Some("ByteLevel")
        || byte_level.get("use_regex").and_then(J::as_bool) == Some(false)
    {
        return Err(unsupported());
    }
    Ok(PreTokenizer {
        individual_digits,
        add_prefix_space: byte_level.get("add_prefix_space").and_then(J::as_bool) == Some(true),
    })
}

/// The GPT-2 split of `text`. A whitespace run of more than one character followed by a non-space gives back its
/// last character, which is what the `\s+(?!\S)` branch of the original pattern does.
fn split_gpt2<'a>(re: &regex::Regex, text: &'a str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let Some(m) = re.find_at(text, pos) else {
            break;
        };
        let (s, mut e) = (m.start(), m.end());
        if s > pos {
            // Characters no branch matches cannot occur (the branches cover every character), but keep them.
            out.push(&text[pos..s]);
        }
        let run = &text[s..e];
        if e < text.len() && run.chars().all(char::is_whitespace) && run.chars().count() > 1 {
            let last = run.chars().next_back().map_or(0, char::len_utf8);
            e -= last;
        }
        out.push(&text[s..e]);
        pos = e;
    }
    out
}
