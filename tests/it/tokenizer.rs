//! Byte-level BPE tokenizer: ids against the Hugging Face `tokenizers` package (fixtures written by
//! tests/fixtures/tokenizer_fixtures.py) for a small trained BPE and for SmolLM2 rebuilt from its GGUF metadata,
//! decode round trips on random text and raw bytes, and typed errors for what is not supported.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rankfold_models::gguf::{GgufFile, GgufTokenizer};
use rankfold_models::tokenizer::Tokenizer;
use rankfold_tensor::Rng;
use serde_json::Value as Json;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

/// The (text, ids) pairs of a fixture file.
fn cases(name: &str) -> Result<Vec<(String, Vec<u32>)>> {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let v: Json = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for c in v.as_array().context("fixture is not an array")? {
        let s = c["text"].as_str().context("text")?.to_string();
        let ids = c["ids"]
            .as_array()
            .context("ids")?
            .iter()
            .map(|x| x.as_u64().map(|x| x as u32).context("id"))
            .collect::<Result<Vec<_>>>()?;
        out.push((s, ids));
    }
    Ok(out)
}

/// Checks exact ids and the decode round trip for every case.
fn check_cases(tok: &Tokenizer, cases: &[(String, Vec<u32>)]) -> Result<()> {
    ensure!(cases.len() > 200, "only {} cases", cases.len());
    for (text, want) in cases {
        let got = tok.encode(text)?;
        ensure!(
            &got == want,
            "encode({text:?}):\n got {got:?}\nwant {want:?}"
        );
        // Bytes that are not tokens are dropped on encoding (SmolLM2 lacks a few control bytes).
        let kept: String = text
            .chars()
            .filter(|c| tok.token_to_id(&byte_level(*c)).is_some() || !c.is_ascii_control())
            .collect();
        let back = tok.decode(&got)?;
        ensure!(back == kept, "decode(encode({text:?})) = {back:?}");
    }
    Ok(())
}

/// The byte-level form of an ASCII character (GPT-2's map: printable ASCII maps to itself, the rest from U+0100).
fn byte_level(c: char) -> String {
    let b = c as u32;
    if ('!'..='~').contains(&c) {
        return c.to_string();
    }
    // Bytes 0..=0x20 take U+0100.., and 0x7f follows them.
    let code = if b <= 0x20 {
        0x100 + b
    } else if b == 0x7f {
        0x121
    } else {
        b
    };
    char::from_u32(code).map_or_else(String::new, String::from)
}

fn small_bpe() -> Result<Tokenizer> {
    Ok(Tokenizer::from_file(&fixture_dir().join("small_bpe.json"))?)
}

#[test]
fn small_bpe_matches_hf_tokenizers() -> Result<()> {
    let tok = small_bpe()?;
    check_cases(&tok, &cases("small_bpe_ids.json")?)
}

/// Random strings over a wide alphabet (every byte class of the byte map, multi-byte characters, whitespace of
/// several kinds, special tokens) decode back to themselves.
#[test]
fn small_bpe_round_trips_random_text() -> Result<()> {
    let tok = small_bpe()?;
    let alphabet: Vec<String> = "aZ09 \t\n\r\u{0}\u{7f}\u{a0}\u{ad}éÿĀ日😀👍🏽\u{2028}\u{3000}'.,;"
        .chars()
        .map(String::from)
        .chain(["<|im_start|>", "<|endoftext|>", "'re", "   "].map(String::from))
        .collect();
    let mut rng = Rng::new(0x70C3);
    for _ in 0..500 {
        let n = rng.below(60) as usize;
        let s: String = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize].as_str())
            .collect();
        let ids = tok.encode(&s)?;
        ensure!(tok.decode(&ids)? == s, "round trip of {s:?} via {ids:?}");
    }
    Ok(())
}

/// Every single byte is a token of a byte-level vocabulary, and decode_bytes inverts the byte map exactly.
#[test]
fn byte_map_is_a_bijection() -> Result<()> {
    let tok = small_bpe()?;
    let mut seen = std::collections::HashSet::new();
    for id in 0..tok.vocab_size() as u32 {
        let bytes = tok.decode_bytes(&[id])?;
        if bytes.len() == 1 {
            seen.insert(bytes[0]);
        }
    }
    ensure!(seen.len() == 256, "{} single-byte tokens", seen.len());
    Ok(())
}

#[test]
fn special_tokens_match_first_and_decode_literally() -> Result<()> {
    let tok = small_bpe()?;
    let start = tok.token_to_id("<|im_start|>").context("im_start")?;
    let end = tok.token_to_id("<|im_end|>").context("im_end")?;
    let ids = tok.encode("x<|im_start|><|im_end|>y")?;
    ensure!(
        ids.len() == 4 && ids[1] == start && ids[2] == end,
        "{ids:?}"
    );
    ensure!(tok.decode(&ids)? == "x<|im_start|><|im_end|>y");
    Ok(())
}

#[test]
fn errors_are_typed_and_named() -> Result<()> {
    let tok = small_bpe()?;
    let e = tok
        .decode(&[tok.vocab_size() as u32])
        .err()
        .context("decode past vocab")?;
    ensure!(e.to_string().contains("outside the vocabulary"), "{e}");

    let e = Tokenizer::from_json_str("x.json", r#"{"model":{"type":"WordPiece","vocab":{}}}"#)
        .err()
        .context("WordPiece")?;
    ensure!(
        e.to_string().contains("x.json") && e.to_string().contains("WordPiece"),
        "{e}"
    );

    let bad_merge = r#"{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]},
        "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}}"#;
    let e = Tokenizer::from_json_str("m.json", bad_merge)
        .err()
        .context("merge")?;
    ensure!(e.to_string().contains("merge 0 `a b`"), "{e}");

    let bad_unk = r#"{"model":{"type":"BPE","vocab":{"a":0},"merges":[],"unk_token":"<unk>"},
        "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}}"#;
    let e = Tokenizer::from_json_str("u.json", bad_unk)
        .err()
        .context("unk")?;
    ensure!(
        e.to_string().contains("u.json") && e.to_string().contains("unk_token"),
        "{e}"
    );

    let e = Tokenizer::from_json_str("n.json", "{")
        .err()
        .context("not json")?;
    ensure!(e.to_string().contains("n.json"), "{e}");

    // MiniLM's WordPiece tokenizer.json is rejected with a clear message when the asset is there.
    if let Some(p) = crate::common::asset("all-minilm-l6-v2/tokenizer.json")? {
        let e = Tokenizer::from_file(&p).err().context("MiniLM")?;
        ensure!(e.to_string().contains("not supported"), "{e}");
    }
    Ok(())
}


#[test]
fn smollm2_gguf_tokenizer_matches_hf_tokenizers() -> Result<()> {
    let Some(path) = crate::common::asset(crate::common::SMOLLM2_GGUF)? else {
        return Ok(());
    };
    let f = GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf(&GgufTokenizer::from_gguf(&f)?)?;
    ensure!(tok.vocab_size() == 49152);
    check_cases(&tok, &cases("smollm2_ids.json")?)
}

/// The tokenizer plugs into rankfold-train's `Tokenize` through a closure and gives the same ids.
#[test]
fn closure_implements_train_tokenize() -> Result<()> {
    use rankfold_train::data::Tokenize;
    let tok = small_bpe()?;
    let f = |s: &str| tok.encode(s).unwrap_or_default();
    for (text, want) in cases("small_bpe_ids.json")?.iter().take(30) {
        ensure!(&Tokenize::encode(&f, text) == want, "{text:?}");
    }
    Ok(())
}
