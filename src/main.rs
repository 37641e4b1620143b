//! The `rankfold` command line. Today it inspects safetensors files and quantizes weights to NF4; training,
//! evaluation, generation and merging subcommands join it as the adapter and model crates land.

mod quantize;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rankfold_tensor::safetensors::MmapedSafetensors;

#[derive(Parser, Debug)]
#[command(name = "rankfold", version, about = "Fine-tune language models with low-rank adapters")]
struct Cli {
    /// Print the final summary line as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the tensors of a .safetensors file, or of every .safetensors file in a folder.
    Inspect {
        /// A .safetensors file or a folder holding some.
        path: PathBuf,
    },
    /// Rewrite the linear-layer weights of a model folder or .safetensors file in bitsandbytes NF4 layout.
    Quantize(quantize::QuantizeArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { path } => inspect(&path, cli.json),
        Command::Quantize(args) => quantize::run(&args, cli.json),
    }
}

fn safetensors_files(path: &PathBuf) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "{} holds no .safetensors file", path.display());
        Ok(files)
    } else {
        Ok(vec![path.clone()])
    }
}

fn inspect(path: &PathBuf, json: bool) -> Result<()> {
    let mut total_tensors = 0usize;
    let mut total_bytes = 0usize;
    for file in safetensors_files(path)? {
        let st = MmapedSafetensors::open(&file)?;
        if !json {
            println!("{}", file.display());
        }
        for name in st.names() {
            let (shape, dtype) = st.info(&name)?;
            let bytes = shape.elem_count() * dtype.size_in_bytes();
            total_tensors += 1;
            total_bytes += bytes;
            if !json {
                println!("  {name:<60} {dtype:<5} {shape:<20} {bytes:>12} B");
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "command": "inspect", "tensors": total_tensors, "bytes": total_bytes }));
    } else {
        println!("{total_tensors} tensors, {total_bytes} bytes");
    }
    Ok(())
}
