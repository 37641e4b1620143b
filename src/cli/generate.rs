//! `rankfold generate`: continues a prompt with a model (and an optional adapter) using the KV cache, streaming
//! the text to stdout as tokens come; `--chat` wraps the prompt in the ChatML template and stops at `<|im_end|>`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rankfold_models::llama::GenerateOptions;
use rankfold_models::source::{load_tokenizer, ModelSource};
use rankfold_models::tokenizer::Tokenizer;
use rankfold_train::data::sft::chatml_text;
use rankfold_train::data::Message;
use serde_json::json;

use super::common::{self, path_json};

/// The ChatML end-of-turn token.
const IM_END: &str = "<|im_end|>";

/// Arguments of `rankfold generate`.
#[derive(clap::Args, Debug)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    m: common::ModelArgs,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the ChatML template (system, user, then the assistant's turn) and stop at <|im_end|>.
    #[arg(long)]
    chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only from the smallest set of most likely tokens whose probabilities reach this total.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// The sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `rankfold generate`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &GenerateArgs, json: bool) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature must be a finite number ≥ 0, got {}",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let loaded = args.m.load()?;
    let source = &loaded.source;
    let tokenizer = load_tokenizer(source)
        .with_context(|| format!("loading the tokenizer of {}", args.m.model.display()))?;
    let llama = loaded.llama();
    let vocab = llama.config.vocab_size;

    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        chatml_text(&messages, true)
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text)?;
    if prompt.is_empty() {
        bail!("--prompt: the prompt encodes to no tokens");
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        bail!(
            "the tokenizer of {} gives id {id}, outside the model's vocabulary of {vocab}",
            args.m.model.display()
        );
    }
    let mut stop_tokens = eos_ids(source)?;
    if args.chat {
        let end = tokenizer.token_to_id(IM_END).with_context(|| {
            format!(
                "--chat: the tokenizer of {} has no {IM_END} token",
                args.m.model.display()
            )
        })?;
        stop_tokens.push(end);
    }
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        stop_tokens: stop_tokens.clone(),
        seed: args.seed,
    };

    let start = Instant::now();
    let mut first_token_seconds = None;
    let mut stream = TextStream::new(&tokenizer, &stop_tokens);
    let out = llama.generate_with(&prompt, &opts, |tok| {
        first_token_seconds.get_or_insert_with(|| start.elapsed().as_secs_f64());
        // Not in --json mode: the text goes to stdout as it comes, the summary after it.
        if !json {
            stream.push(tok);
        }
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if !json {
        stream.finish();
    }
    let stopped = out.last().is_some_and(|t| stop_tokens.contains(t));
    let shown: Vec<u32> = out
        .iter()
        .copied()
        .filter(|t| !stop_tokens.contains(t))
        .collect();
    let completion = String::from_utf8_lossy(&tokenizer.decode_bytes(&shown)?).into_owned();
    let first = first_token_seconds.unwrap_or(seconds);
    // Decoding speed over the tokens after the first (the first also pays for the prompt).
    let decode_rate = if out.len() > 1 {
        (out.len() - 1) as f64 / (seconds - first).max(1e-9)
    } else {
        0.0
    };
    let text = format!(
        "{} prompt tokens, {} new tokens ({}) in {:.2} s: {:.1} tokens/s after a {:.2} s prompt (load {:.2} s)",
        prompt.len(),
        out.len(),
        if stopped { "stopped" } else { "length limit" },
        seconds,
        decode_rate,
        first,
        loaded.load_seconds
    );
    let value = json!({
        "command": "generate",
        "model": path_json(&args.m.model),
        "adapter": args.m.adapter.as_deref().map(path_json),
        "nf4": args.m.nf4,
        "chat": args.chat,
        "prompt_tokens": prompt.len(),
        "prompt_ids": prompt,
        "new_tokens": out.len(),
        "new_ids": out,
        "stopped": stopped,
        "completion": completion,
        "load_seconds": loaded.load_seconds,
        "seconds": seconds,
        "first_token_seconds": first,
        "tokens_per_second": decode_rate,
    });
    common::print_summary(json, &text, &value);
    Ok(())
}

/// The end-of-sequence ids of the model: `eos_token_id` (a number or a list) from generation_config.json or
/// config.json of a folder, the tokenizer metadata of a GGUF file. None known is not an error.
fn eos_ids(source: &ModelSource) -> Result<Vec<u32>> {
    match source {
        ModelSource::Gguf(p) => {
            let f = rankfold_models::gguf::GgufFile::open(p)?;
            let t = rankfold_models::gguf::GgufTokenizer::from_gguf(&f)?;
            Ok(t.eos_id.into_iter().collect())
        }
        ModelSource::HfDir(d) => {
            for name in ["generation_config.json", "config.json"] {
                if let Some(ids) = eos_from_json(&d.join(name))? {
                    return Ok(ids);
                }
            }
            Ok(Vec::new())
        }
    }
}

fn eos_from_json(path: &Path) -> Result<Option<Vec<u32>>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let bad = || {
        format!(
            "{}: field `eos_token_id` must be a token id or a list of them",
            path.display()
        )
    };
    let id = |x: &serde_json::Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(a)) => Ok(Some(
            a.iter()
                .map(|x| id(x).with_context(bad))
                .collect::<Result<_>>()?,
        )),
        Some(x) => Ok(Some(vec![id(x).with_context(bad)?])),
    }
}

/// Turns tokens into text on stdout as they come: bytes wait until they form whole UTF-8 characters, and stop
/// tokens are not printed.
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    stop: &'a [u32],
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    fn new(tokenizer: &'a Tokenizer, stop: &'a [u32]) -> Self {
        TextStream {
            tokenizer,
            stop,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, tok: u32) {
        if self.stop.contains(&tok) {
            return;
        }
        // An id the tokenizer cannot decode prints nothing; the summary still counts it.
        if let Ok(bytes) = self.tokenizer.decode_bytes(&[tok]) {
            self.pending.extend_from_slice(&bytes);
        }
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            // A character cut at the end waits for its next bytes; a bad byte in the middle is printed lossily.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let ready: Vec<u8> = self.pending.drain(..valid).collect();
        let mut out = std::io::stdout().lock();
        // A closed stdout (a pipe into `head`) stops the printing, not the generation.
        let _ = out.write_all(String::from_utf8_lossy(&ready).as_bytes());
        let _ = out.flush();
    }

    fn finish(&mut self) {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        println!("{rest}");
    }
}
