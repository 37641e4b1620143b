//! `rankfold inspect`: lists the tensors of .safetensors files (a PEFT adapter folder report joins it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use rankfold_tensor::safetensors::MmapedSafetensors;

/// Arguments of `rankfold inspect`.
#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    /// A .safetensors file or a folder holding some.
    path: PathBuf,
}

/// Runs `rankfold inspect`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &InspectArgs, json: bool) -> Result<()> {
    inspect(&args.path, json)
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
