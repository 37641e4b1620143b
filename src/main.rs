//! The `rankfold` command line: train, evaluate, generate with and merge low-rank adapters on Llama-family
//! models (Hugging Face folders or GGUF files), inspect adapters and safetensors files, run a forward pass for
//! comparison with PyTorch, and quantize weights to NF4. Each subcommand lives in its own module under `cli/`.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cli::{eval, forward, generate, inspect, merge, quantize, train};

#[derive(Parser, Debug)]
#[command(name = "rankfold", version, about = "Fine-tune language models with low-rank adapters")]
struct Cli {
    /// Print the final summary line as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// The arguments are parsed once per process, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune an adapter on a model (flags, or a TOML file with --config).
    Train(train::TrainArgs),
    /// Evaluate a model, with or without an adapter, on a data set.
    Eval(eval::EvalArgs),
    /// Continue a prompt with a model, with or without an adapter.
    Generate(generate::GenerateArgs),
    /// Merge an adapter into its base model and write a Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Describe a PEFT adapter folder, or list the tensors of .safetensors files.
    Inspect(inspect::InspectArgs),
    /// Write the logits of a token sequence as an f32 [tokens, vocab] safetensors tensor named `logits`.
    Forward(forward::ForwardArgs),
    /// Rewrite the linear-layer weights of a model folder or .safetensors file in bitsandbytes NF4 layout.
    Quantize(quantize::QuantizeArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Train(a) => train::run(a, cli.json),
        Command::Eval(a) => eval::run(a, cli.json),
        Command::Generate(a) => generate::run(a, cli.json),
        Command::Merge(a) => merge::run(a, cli.json),
        Command::Inspect(a) => inspect::run(a, cli.json),
        Command::Forward(a) => forward::run(a, cli.json),
        Command::Quantize(a) => quantize::run(a, cli.json),
    }
}
