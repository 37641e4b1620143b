//! The PTX tokenizer: identifiers (with dots, `%` and `$`), numbers, strings and punctuation, each with its line.

use crate::error::{Result, SimError};

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok<'a> {
    /// An identifier, directive, opcode or register (`.reg`, `ld.global.f32`, `%r1`, `$L__BB0_2`, `%tid.x`).
    Word(&'a str),
    /// A number as written (`16`, `0x1F`, `0f3F800000`, `0d3FF0000000000000`, `1.5`).
    Num(&'a str),
    Str(&'a str),
    Punct(char),
}

/// A token and the 1-based PTX line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Token<'a> {
    pub tok: Tok<'a>,
    pub line: u32,
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

/// Splits PTX text into tokens, dropping comments.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token<'_>>> {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 4);
    let mut i = 0;
    let mut line = 1u32;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            if i >= b.len() {
                return Err(SimError::Parse {
                    line,
                    msg: "unterminated string".into(),
                });
            }
            out.push(Token {
                tok: Tok::Str(&src[start..i]),
                line,
            });
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Num(&src[start..i]),
                line,
            });
        } else if is_word_start(c) {
            let start = i;
            // Cache hints such as `.L2::128B` keep their `::` inside the word.
            while i < b.len()
                && (is_word_char(b[i]) || (b[i] == b':' && b.get(i + 1) == Some(&b':')))
            {
                i += if b[i] == b':' { 2 } else { 1 };
            }
            out.push(Token {
                tok: Tok::Word(&src[start..i]),
                line,
            });
        } else {
            out.push(Token {
                tok: Tok::Punct(c as char),
                line,
            });
            i += 1;
        }
    }
    Ok(out)
}

/// Parses an integer literal (decimal, `0x` hex, octal with a leading 0, optional `U` suffix) as its bits.
pub(crate) fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim_end_matches(['U', 'u']);
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') && s.bytes().all(|c| c.is_ascii_digit()) {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse::<u64>().ok()
    }
}

/// Parses a numeric literal to raw bits: `0f…` is f32 bits, `0d…` f64 bits, a decimal with a point is an f64.
/// The bool says whether it was written as a float.
pub(crate) fn parse_number(s: &str) -> Option<(u64, bool)> {
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        return u32::from_str_radix(h, 16)
            .ok()
            .map(|v| (u64::from(v), true));
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        return u64::from_str_radix(h, 16).ok().map(|v| (v, true));
    }
    if s.contains('.') || (s.contains(['e', 'E']) && !s.starts_with("0x")) {
        return s.parse::<f64>().ok().map(|v| (v.to_bits(), true));
    }
    parse_int(s).map(|v| (v, false))
}
