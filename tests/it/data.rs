//! rankfold-train's data sets: JSONL fixtures, ChatML labels against a character-level reference, packing
//! boundaries, padding masks, seeded order, IMDB split sizes (the real file when cached), and error messages.

use std::path::PathBuf;

use rankfold_tensor::{DType, Device, Rng};
use rankfold_train::data::{
    batch::{collate, collate_class, epoch_order, pack, Loader, PadSide, Padding},
    chatml_example, chatml_text, class_example,
    imdb::{self, SplitSizes},
    jsonl, lm_example, prompt_completion_example, ClassExample, Example, LabeledText, Message,
    PromptCompletion, PromptFormat, Tokenize, IGNORE,
};

/// The committed fixtures folder.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

/// A character-level tokenizer: `<|im_start|>` is 1, `<|im_end|>` is 2, and every other character is its code
/// point plus 3. Being character-level, tokenizing pieces equals tokenizing their concatenation.
struct CharTok;

const SPECIALS: [(&str, u32); 2] = [("<|im_start|>", 1), ("<|im_end|>", 2)];

impl Tokenize for CharTok {
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while let Some(c) = rest.chars().next() {
            for (s, id) in SPECIALS {
                if let Some(r) = rest.strip_prefix(s) {
                    out.push(id);
                    rest = r;
                    continue 'outer;
                }
            }
            out.push(c as u32 + 3);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// The inverse of [`CharTok`].
fn decode(ids: impl IntoIterator<Item = u32>) -> String {
    ids.into_iter()
        .map(|id| match SPECIALS.iter().find(|(_, s)| *s == id) {
            Some((s, _)) => s.to_string(),
            None => char::from_u32(id - 3).map(String::from).unwrap_or_default(),
        })
        .collect()
}

/// A random string of `0..max` characters drawn from an alphabet with spaces, newlines and non-ASCII letters.
fn random_text(rng: &mut Rng, max: u64) -> String {
    const ALPHABET: [char; 12] = ['a', 'b', 'z', ' ', '\n', 'é', 'ß', '→', '<', '|', '>', '.'];
    (0..rng.below(max))
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
        .collect()
}

/// A random example of `1..max` tokens with random labels (some ignored) and segment 0.
fn random_example(rng: &mut Rng, max: u64) -> Example {
    let n = 1 + rng.below(max - 1) as usize;
    let input_ids: Vec<u32> = (0..n).map(|_| 3 + rng.below(1000) as u32).collect();
    let labels = input_ids
        .iter()
        .map(|&t| {
            if rng.below(4) == 0 {
                IGNORE
            } else {
                i64::from(t)
            }
        })
        .collect();
    Example {
        input_ids,
        labels,
        segment_ids: vec![0; n],
    }
}

#[test]
fn jsonl_fixtures_parse() {
    let text = jsonl::read_text(fixture("text.jsonl")).unwrap();
    assert_eq!(text.len(), 3, "the blank line is skipped");
    assert_eq!(text[2], "Ünïcödé and \"quotes\" survive.\nAnd newlines.");
    let pc = jsonl::read_prompt_completion(fixture("prompt_completion.jsonl")).unwrap();
    assert_eq!(pc.len(), 3);
    assert_eq!(
        pc[2],
        PromptCompletion {
            prompt: "2 + 2 =".into(),
            completion: " 4".into()
        }
    );
    let chats = jsonl::read_messages(fixture("messages.jsonl")).unwrap();
    assert_eq!(chats.iter().map(Vec::len).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(
        chats[1][3],
        Message {
            role: "assistant".into(),
            content: "Goodbye.".into()
        }
    );
    let labeled = jsonl::read_labeled(fixture("labeled.jsonl")).unwrap();
    assert_eq!(
        labeled.iter().map(|l| l.label).collect::<Vec<_>>(),
        [1, 0, 2]
    );
}

/// Asserts `err`'s message contains every piece of `want`.
fn assert_mentions(err: rankfold_train::Error, want: &[&str]) {
    let msg = err.to_string();
    for w in want {
        assert!(msg.contains(w), "error {msg:?} should mention {w:?}");
    }
}

#[test]
fn errors_name_file_line_and_field() {
    assert_mentions(
        jsonl::read_text(fixture("bad_json.jsonl")).unwrap_err(),
        &["bad_json.jsonl:3:", "invalid JSON"],
    );
    assert_mentions(
        jsonl::read_prompt_completion(fixture("missing_completion.jsonl")).unwrap_err(),
        &["missing_completion.jsonl:3:", "missing field `completion`"],
    );
    assert_mentions(
        jsonl::read_labeled(fixture("negative_label.jsonl")).unwrap_err(),
        &["negative_label.jsonl:2:", "`label`", "non-negative integer"],
    );
    assert_mentions(
        jsonl::read_messages(fixture("bad_role.jsonl")).unwrap_err(),
        &[
            "bad_role.jsonl:2:",
            "messages[1].role",
            "system, user, assistant",
        ],
    );
    assert_mentions(
        jsonl::read_messages(fixture("no_assistant.jsonl")).unwrap_err(),
        &["no_assistant.jsonl:1:", "at least one assistant turn"],
    );
    assert_mentions(
        jsonl::read_text(fixture("not_object.jsonl")).unwrap_err(),
        &["not_object.jsonl:1:", "object"],
    );
    // A file of the wrong shape: the text reader needs `text`.
    assert_mentions(
        jsonl::read_text(fixture("messages.jsonl")).unwrap_err(),
        &["messages.jsonl:1:", "missing field `text`"],
    );
    assert_mentions(
        jsonl::read_text(fixture("no_such_file.jsonl")).unwrap_err(),
        &["no_such_file.jsonl", "cannot read"],
    );
    let wrong_type = r#"{"messages": [{"role": "assistant", "content": 5}]}"#;
    assert_mentions(
        jsonl::parse_messages("mem", wrong_type).unwrap_err(),
        &["mem:1:", "messages[0].content", "string"],
    );
    assert_mentions(
        jsonl::parse_text("mem", "{\"text\": 3}\n").unwrap_err(),
        &["mem:1:", "`text`", "a string"],
    );
}

#[test]
fn lm_example_trains_everywhere() {
    let ex = lm_example(&CharTok, "héllo", Some(0));
    assert_eq!(decode(ex.input_ids[..5].iter().copied()), "héllo");
    assert_eq!(ex.input_ids[5], 0);
    assert_eq!(
        ex.labels,
        ex.input_ids
            .iter()
            .map(|&t| i64::from(t))
            .collect::<Vec<_>>()
    );
}

/// Checks a ChatML example against the rendered text: the ids are the whole text's tokens; the trained tokens
/// decode to each assistant turn's content plus `<|im_end|>`; the rest decodes to the text with those removed.
fn check_chatml(ex: &Example, messages: &[Message]) {
    let text = chatml_text(messages, false);
    assert_eq!(ex.input_ids, CharTok.encode(&text));
    let mut want_trained = String::new();
    let mut want_rest = String::new();
    for m in messages {
        want_rest.push_str(&format!("<|im_start|>{}\n", m.role));
        if m.role == "assistant" {
            want_trained.push_str(&format!("{}<|im_end|>", m.content));
        } else {
            want_rest.push_str(&format!("{}<|im_end|>", m.content));
        }
        want_rest.push('\n');
    }
    let trained = ex
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32);
    assert_eq!(decode(trained), want_trained);
    let rest = ex
        .input_ids
        .iter()
        .zip(&ex.labels)
        .filter(|(_, &l)| l == IGNORE)
        .map(|(&t, _)| t);
    assert_eq!(decode(rest), want_rest);
    for (&t, &l) in ex.input_ids.iter().zip(&ex.labels) {
        assert!(
            l == IGNORE || l == i64::from(t),
            "a label is either ignored or the token itself"
        );
    }
}

#[test]
fn chatml_labels_only_assistant_turns() {
    for chat in jsonl::read_messages(fixture("messages.jsonl")).unwrap() {
        check_chatml(&chatml_example(&CharTok, &chat), &chat);
    }
    let mut rng = Rng::new(61);
    for _ in 0..40 {
        let turns = 1 + rng.below(6);
        let mut chat: Vec<Message> = (0..turns)
            .map(|_| {
                let role = ["system", "user", "assistant"][rng.below(3) as usize];
                Message {
                    role: role.into(),
                    content: random_text(&mut rng, 23),
                }
            })
            .collect();
        chat.push(Message {
            role: "assistant".into(),
            content: random_text(&mut rng, 9),
        });
        check_chatml(&chatml_example(&CharTok, &chat), &chat);
    }
    let gen = chatml_text(
        &[Message {
            role: "user".into(),
            content: "Hi".into(),
        }],
        true,
    );
    assert_eq!(
        gen,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn prompt_completion_loss_on_completion_only() {
    let mut rng = Rng::new(7);
    for record in jsonl::read_prompt_completion(fixture("prompt_completion.jsonl")).unwrap() {
        let eos = rng.below(2) == 0;
        let ex = prompt_completion_example(
            &CharTok,
            &record,
            &PromptFormat::Plain {
                eos: eos.then_some(0),
            },
        );
        let p = record.prompt.chars().count();
        let c = record.completion.chars().count();
        assert_eq!(ex.len(), p + c + usize::from(eos));
        assert!(ex.labels[..p].iter().all(|&l| l == IGNORE));
        assert_eq!(
            decode(ex.labels[p..p + c].iter().map(|&l| l as u32)),
            record.completion
        );
        if eos {
            assert_eq!(ex.labels[p + c], 0);
        }
        let system = Some("Be brief.".to_string());
        let chat = prompt_completion_example(
            &CharTok,
            &record,
            &PromptFormat::ChatMl {
                system: system.clone(),
            },
        );
        let messages = [
            Message {
                role: "system".into(),
                content: system.unwrap(),
            },
            Message {
                role: "user".into(),
                content: record.prompt.clone(),
            },
            Message {
                role: "assistant".into(),
                content: record.completion.clone(),
            },
        ];
        check_chatml(&chat, &messages);
    }
}

#[test]
fn packing_boundaries() {
    let mut rng = Rng::new(3);
    for seq_len in [1usize, 5, 7, 13, 64] {
        let docs: Vec<Example> = (0..1 + rng.below(9))
            .map(|_| random_example(&mut rng, 20))
            .collect();
        let total: usize = docs.iter().map(Example::len).sum();
        let packed = pack(&docs, seq_len, false).unwrap();
        assert_eq!(packed.len(), total.div_ceil(seq_len));
        assert!(packed[..packed.len() - 1]
            .iter()
            .all(|p| p.len() == seq_len));
        // Reference: the flat stream, and where each document starts in it.
        let flat_ids: Vec<u32> = docs.iter().flat_map(|d| d.input_ids.clone()).collect();
        let flat_labels: Vec<i64> = docs.iter().flat_map(|d| d.labels.clone()).collect();
        let mut starts = vec![false; total];
        let mut at = 0;
        for d in &docs {
            starts[at] = true;
            at += d.len();
        }
        assert_eq!(
            packed
                .iter()
                .flat_map(|p| p.input_ids.clone())
                .collect::<Vec<_>>(),
            flat_ids
        );
        for (k, p) in packed.iter().enumerate() {
            let mut seg = 0;
            for j in 0..p.len() {
                let g = k * seq_len + j;
                let new_segment = j == 0 || starts[g];
                if j > 0 && starts[g] {
                    seg += 1;
                }
                assert_eq!(
                    p.segment_ids[j], seg,
                    "seq_len {seq_len}, sequence {k}, position {j}"
                );
                let want = if new_segment { IGNORE } else { flat_labels[g] };
                assert_eq!(
                    p.labels[j], want,
                    "seq_len {seq_len}, sequence {k}, position {j}"
                );
            }
        }
        let dropped = pack(&docs, seq_len, true).unwrap();
        assert_eq!(dropped.len(), total / seq_len);
        assert!(dropped.iter().all(|p| p.len() == seq_len));
    }
    assert!(pack(&[], 0, false).is_err());
}

#[test]
fn padding_masks_and_labels() {
    let mut rng = Rng::new(11);
    for (side, max_len) in [
        (PadSide::Right, None),
        (PadSide::Left, None),
        (PadSide::Right, Some(6)),
        (PadSide::Left, Some(9)),
    ] {
        let mut docs: Vec<Example> = (0..1 + rng.below(6))
            .map(|_| random_example(&mut rng, 15))
            .collect();
        let packed = pack(&docs, 7, false).unwrap();
        docs.extend(packed);
        let padding = Padding {
            pad_id: 999_999,
            side,
            max_len,
        };
        let refs: Vec<&Example> = docs.iter().collect();
        let b = collate(&refs, &padding).unwrap();
        let want_len = docs
            .iter()
            .map(|d| max_len.map_or(d.len(), |m| d.len().min(m)))
            .max()
            .unwrap();
        assert_eq!((b.batch, b.seq_len), (docs.len(), want_len));
        for (r, d) in docs.iter().enumerate() {
            let len = d.len().min(want_len);
            assert_eq!(b.lengths[r], len);
            let row = r * b.seq_len..(r + 1) * b.seq_len;
            let pad = b.seq_len - len;
            let real = match side {
                PadSide::Right => row.start..row.start + len,
                PadSide::Left => row.start + pad..row.end,
            };
            for i in row.clone() {
                let is_real = real.contains(&i);
                assert_eq!(b.attention_mask[i], u8::from(is_real));
                if !is_real {
                    assert_eq!((b.input_ids[i], b.labels[i]), (999_999, IGNORE));
                }
            }
            assert_eq!(b.input_ids[real.clone()], d.input_ids[..len]);
            assert_eq!(b.labels[real.clone()], d.labels[..len]);
            // Positions count from 0 within each segment.
            let mut want_pos = 0;
            for j in 0..len {
                if j > 0 && d.segment_ids[j] != d.segment_ids[j - 1] {
                    want_pos = 0;
                }
                assert_eq!(b.position_ids[real.start + j], want_pos);
                want_pos += 1;
            }
        }
        let t = b.tensors(Device::Cpu).unwrap();
        assert_eq!(t.input_ids.dims(), [b.batch, b.seq_len]);
        assert_eq!(
            (
                t.input_ids.dtype(),
                t.attention_mask.dtype(),
                t.labels.dtype()
            ),
            (DType::U32, DType::U8, DType::I64)
        );
    }
    let padding = Padding {
        pad_id: 0,
        side: PadSide::Right,
        max_len: None,
    };
    assert!(collate(&[], &padding).is_err());
}

#[test]
fn class_batches_and_seeded_order() {
    let mut rng = Rng::new(5);
    let examples: Vec<ClassExample> = (0..23)
        .map(|_| ClassExample {
            input_ids: random_example(&mut rng, 12).input_ids,
            label: rng.below(3) as usize,
        })
        .collect();
    let loader = Loader::new(4, 42).unwrap();
    let padding = Padding {
        pad_id: 0,
        side: PadSide::Right,
        max_len: None,
    };
    let epoch0 = loader.epoch(examples.len(), 0);
    assert_eq!(
        epoch0,
        loader.epoch(examples.len(), 0),
        "the same seed and epoch give the same order"
    );
    assert_ne!(
        epoch0,
        loader.epoch(examples.len(), 1),
        "each epoch has its own order"
    );
    assert_ne!(epoch0, Loader::new(4, 43).unwrap().epoch(examples.len(), 0));
    let mut seen: Vec<usize> = epoch0.concat();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..23).collect::<Vec<_>>(),
        "each example once per epoch"
    );
    assert_eq!(
        epoch0.iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 4, 4, 4, 4, 3]
    );
    let dropping = Loader {
        drop_last: true,
        ..loader.clone()
    };
    assert_eq!(dropping.epoch(examples.len(), 0).len(), 5);
    let sequential = Loader {
        shuffle: false,
        ..loader.clone()
    };
    assert_eq!(sequential.epoch(5, 9), [vec![0, 1, 2, 3], vec![4]]);
    assert_eq!(epoch_order(23, 42, 0, true), epoch0.concat());
    let batches = loader.class_batches(&examples, &padding, 0).unwrap();
    for (b, idx) in batches.iter().zip(&epoch0) {
        let want = collate_class(
            &idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>(),
            &padding,
        )
        .unwrap();
        assert_eq!(*b, want);
        assert_eq!(
            b.labels,
            idx.iter().map(|&i| examples[i].label).collect::<Vec<_>>()
        );
        let real: usize = b.attention_mask.iter().map(|&m| usize::from(m)).sum();
        assert_eq!(
            real,
            idx.iter()
                .map(|&i| examples[i].input_ids.len())
                .sum::<usize>()
        );
    }
    assert!(Loader::new(0, 1).is_err());
}

/// Reference for `strip_br` on texts whose words are separated by single spaces: every `<br />` becomes a
/// space, then whitespace runs collapse and the ends are trimmed.
fn strip_reference(t: &str) -> String {
    t.replace("<br />", " ")
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn imdb_split_synthetic() {
    let mut rng = Rng::new(19);
    const WORDS: [&str; 6] = ["good", "bad", "film.", "<br />", "<br /><br />", "plot,"];
    let rows: Vec<(String, u64)> = (0..1037)
        .map(|i| {
            let n = 1 + rng.below(12);
            let words: Vec<&str> = (0..n)
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                .collect();
            let sep = if rng.below(2) == 0 { " " } else { "" };
            (words.join(sep), u64::from(i >= 500))
        })
        .collect();
    let json = serde_json::to_string(
        &rows
            .iter()
            .map(|(t, s)| serde_json::json!({ "t": t, "s": s }))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let parsed = imdb::parse_reviews("mem.json", &json).unwrap();
    for (p, (t, s)) in parsed.iter().zip(&rows) {
        assert_eq!(p.label as u64, *s);
        assert!(!p.text.contains("<br />"));
        assert_eq!(p.text, strip_reference(t), "from {t:?}");
    }
    assert_eq!(imdb::strip_br("a.<br /><br />b"), "a. b");
    assert_eq!(imdb::strip_br("a <br /> <br />  b"), "a b");
    let sizes = SplitSizes {
        test: 100,
        validation: 37,
        train: None,
    };
    let s = imdb::split(parsed.clone(), sizes, 1).unwrap();
    assert_eq!(
        (s.test.len(), s.validation.len(), s.train.len()),
        (100, 37, 900)
    );
    assert_eq!(
        s,
        imdb::split(parsed.clone(), sizes, 1).unwrap(),
        "a fixed seed gives a fixed split"
    );
    assert_ne!(s.test, imdb::split(parsed.clone(), sizes, 2).unwrap().test);
    let mut all: Vec<LabeledText> = [s.train, s.validation, s.test].concat();
    let mut orig = parsed.clone();
    let key = |l: &LabeledText| (l.label, l.text.clone());
    all.sort_by_key(key);
    orig.sort_by_key(key);
    assert_eq!(all, orig, "the parts partition the rows");
    let capped = imdb::split(
        parsed.clone(),
        SplitSizes {
            test: 10,
            validation: 10,
            train: Some(50),
        },
        1,
    )
    .unwrap();
    assert_eq!(capped.train.len(), 50);
    assert_mentions(
        imdb::split(
            parsed,
            SplitSizes {
                test: 1000,
                validation: 38,
                train: None,
            },
            1,
        )
        .unwrap_err(),
        &["exceed", "1037"],
    );
    assert_mentions(
        imdb::parse_reviews("r.json", r#"[{"t": "x", "s": 0}, {"t": "y", "s": 2}]"#).unwrap_err(),
        &["r.json row:2:", "`s`", "0 or 1"],
    );
    assert_mentions(
        imdb::parse_reviews("r.json", r#"[{"t": "x", "s": 0}, {"s": 1}]"#).unwrap_err(),
        &["r.json row:2:", "missing field `t`"],
    );
    assert_mentions(
        imdb::parse_reviews("r.json", "[{\"t\": \"x\",\n \"s\": }]").unwrap_err(),
        &["r.json:2:", "invalid JSON"],
    );
}

#[test]
fn imdb_real_file_when_cached() -> anyhow::Result<()> {
    let Some(path) = crate::common::asset("imdb/reviews.json")? else {
        return Ok(());
    };
    let s = imdb::load(&path, SplitSizes::default()).unwrap();
    assert_eq!(
        (s.train.len(), s.validation.len(), s.test.len()),
        (40_000, 5_000, 5_000)
    );
    for (name, part) in [
        ("train", &s.train),
        ("validation", &s.validation),
        ("test", &s.test),
    ] {
        let positive = part.iter().filter(|r| r.label == 1).count() as f64 / part.len() as f64;
        assert!(
            (0.46..0.54).contains(&positive),
            "{name}: {positive} positive; the shuffle should mix labels"
        );
        assert!(
            part.iter()
                .all(|r| !r.text.contains("<br />") && !r.text.is_empty()),
            "{name}"
        );
    }
    // The first 500 test reviews (what the demo evaluates on) must already be mixed.
    let first = s.test[..500].iter().filter(|r| r.label == 1).count();
    assert!(
        (200..300).contains(&first),
        "{first} of the first 500 test reviews are positive"
    );
    assert_eq!(
        s.test,
        imdb::load(&path, SplitSizes::default()).unwrap().test,
        "the split is fixed"
    );
    Ok(())
}

#[test]
fn class_examples_and_closure_tokenizers() {
    // A closure is a tokenizer: here, byte values.
    let bytes = |t: &str| t.bytes().map(u32::from).collect::<Vec<u32>>();
    for record in jsonl::read_labeled(fixture("labeled.jsonl")).unwrap() {
        let full = class_example(&bytes, &record, None);
        assert_eq!(
            full.input_ids,
            record.text.bytes().map(u32::from).collect::<Vec<_>>()
        );
        assert_eq!(full.label, record.label);
        let cut = class_example(&bytes, &record, Some(4));
        assert_eq!(cut.input_ids, full.input_ids[..4]);
    }
}

#[test]
fn inconsistent_examples_are_rejected() {
    let mut rng = Rng::new(23);
    let good = random_example(&mut rng, 9);
    let mut bad = random_example(&mut rng, 9);
    bad.labels.push(IGNORE);
    let padding = Padding {
        pad_id: 0,
        side: PadSide::Right,
        max_len: None,
    };
    assert_mentions(
        collate(&[&good, &bad], &padding).unwrap_err(),
        &["example 1", "labels"],
    );
    assert_mentions(
        pack(&[good, bad], 4, false).unwrap_err(),
        &["example 1", "segment ids"],
    );
}

#[test]
fn imdb_sentiment_chat() {
    let mut rng = Rng::new(29);
    for _ in 0..20 {
        let text = random_text(&mut rng, 40);
        let label = rng.below(2) as usize;
        let max_chars = rng.below(30) as usize;
        let chat = imdb::sentiment_chat(
            &LabeledText {
                text: text.clone(),
                label,
            },
            max_chars,
        )
        .unwrap();
        let roles: Vec<&str> = chat.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(chat[2].content, ["negative", "positive"][label]);
        let cut: String = text.chars().take(max_chars).collect();
        assert_eq!(
            chat[1].content,
            format!("Review: {cut}\nIs this review positive or negative?")
        );
        let ex = chatml_example(&CharTok, &chat);
        check_chatml(&ex, &chat);
    }
    let bad = LabeledText {
        text: "x".into(),
        label: 2,
    };
    assert_mentions(
        imdb::sentiment_chat(&bad, 10).unwrap_err(),
        &["0 or 1", "2"],
    );
}
