//! What the subcommands share: loading a model (a Hugging Face folder or a GGUF file, optionally with NF4
//! projections) with an optional PEFT adapter on top, refusing to overwrite outputs, and printing the final summary
//! line (plain text, or one JSON object with `--json`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rankfold_adapters::{peft, PeftModel};
use rankfold_models::llama::Llama;
use rankfold_models::source::{load_llama, ModelSource, Nf4Options};

/// The model a command runs on: `--model`, `--nf4` and an optional `--adapter` (flattened into the commands'
/// arguments).
#[derive(clap::Args, Debug)]
pub(crate) struct ModelArgs {
    /// A Hugging Face model folder (with tokenizer.json) or a GGUF file.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Quantize the attention and MLP projections to NF4 on load (QLoRA's base).
    #[arg(long)]
    pub(crate) nf4: bool,
    /// A PEFT adapter folder to apply (LoRA, rsLoRA, AdaLoRA or GLoRA).
    #[arg(long)]
    pub(crate) adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// Loads the model and the adapter, if any.
    pub(crate) fn load(&self) -> Result<LoadedModel> {
        load_with_adapter(&self.model, self.nf4, self.adapter.as_deref())
    }
}

/// A model ready to run: its source, and the decoder wrapped with the adapter when one was given (a `PeftModel`
/// without adapters computes the plain model).
#[derive(Debug)]
pub(crate) struct LoadedModel {
    pub(crate) source: ModelSource,
    /// The decoder with the adapter, when one was given, loaded as adapter "default" (active, evaluation mode).
    pub(crate) model: PeftModel<Llama>,
    /// Seconds spent loading the model and the adapter.
    pub(crate) load_seconds: f64,
}

impl LoadedModel {
    /// The decoder, with the adapter's layers in place.
    pub(crate) fn llama(&self) -> &Llama {
        self.model.model()
    }
}

/// The source at `path`: a folder is a Hugging Face folder, a file must be GGUF.
pub(crate) fn model_source(path: &Path) -> Result<ModelSource> {
    ModelSource::from_path(path).with_context(|| format!("opening model {}", path.display()))
}

/// Loads the model at `path` in f32, with every attention and MLP projection in NF4 (blocksize 64, double
/// quantization) when `nf4` is set.
pub(crate) fn load_model(path: &Path, nf4: bool) -> Result<(ModelSource, Llama)> {
    let source = model_source(path)?;
    let opts = nf4.then(Nf4Options::default);
    let model =
        load_llama(&source, opts).with_context(|| format!("loading model {}", path.display()))?;
    Ok((source, model))
}

/// Checks that `dir` looks like a PEFT adapter folder before anything heavy is loaded.
pub(crate) fn check_adapter_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "adapter {}: not a folder (a PEFT adapter is a folder with {} and {})",
            dir.display(),
            peft::CONFIG_FILE,
            peft::WEIGHTS_FILE
        );
    }
    let config = dir.join(peft::CONFIG_FILE);
    if !config.is_file() {
        bail!(
            "adapter {}: {} is missing, so this is not a PEFT adapter folder",
            dir.display(),
            config.display()
        );
    }
    Ok(())
}

/// Puts the adapter in `dir` (if any) on `model` as adapter "default", in evaluation mode (no dropout).
pub(crate) fn attach_adapter(model: Llama, dir: Option<&Path>) -> Result<PeftModel<Llama>> {
    let mut pm = PeftModel::new(model, 0);
    if let Some(dir) = dir {
        check_adapter_dir(dir)?;
        pm.load(dir, "default")
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        pm.set_training(false)?;
    }
    Ok(pm)
}

/// Loads the model at `path` (NF4 projections with `nf4`) and the adapter in `adapter`, if any.
pub(crate) fn load_with_adapter(
    path: &Path,
    nf4: bool,
    adapter: Option<&Path>,
) -> Result<LoadedModel> {
    if let Some(dir) = adapter {
        // A bad adapter folder is reported before the model is read.
        check_adapter_dir(dir)?;
    }
    let start = Instant::now();
    let (source, llama) = load_model(path, nf4)?;
    let model = attach_adapter(llama, adapter)?;
    Ok(LoadedModel {
        source,
        model,
        load_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Fails when `path` exists and `overwrite` is not set, naming the path and the flag.
pub(crate) fn refuse_existing_file(path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; pass --overwrite to replace it",
            path.display()
        );
    }
    Ok(())
}

/// Fails unless `dir` is absent or an empty folder.
pub(crate) fn require_absent_or_empty_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a folder", dir.display()),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty; choose a new folder or empty it",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// A sibling path of `path` for a temporary file or folder (same file system, so a rename can finish the write).
pub(crate) fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Moves the finished folder `tmp` to `dest`: a rename when `dest` is absent or an empty folder; otherwise the old
/// folder is first renamed aside, then removed once the new one is in place, so at every moment `dest` is either
/// the old folder or the new one.
pub(crate) fn replace_dir(tmp: &Path, dest: &Path) -> Result<()> {
    let moved = |e| format!("moving the new folder into {}: {e}", dest.display());
    match std::fs::rename(tmp, dest) {
        Ok(()) => return Ok(()),
        Err(_) if dest.is_dir() => {}
        Err(e) => bail!(moved(e)),
    }
    let old = temp_sibling(dest)?.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dest, &old).with_context(|| format!("moving {} aside", dest.display()))?;
    if let Err(e) = std::fs::rename(tmp, dest) {
        // Put the old folder back: the caller removes the new one.
        let _ = std::fs::rename(&old, dest);
        bail!(moved(e));
    }
    std::fs::remove_dir_all(&old).with_context(|| format!("removing the replaced folder {}", old.display()))
}

/// Prints the command's final summary line: `text` as is, or `value` as one JSON object with `json`.
pub(crate) fn print_summary(json: bool, text: &str, value: &serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

/// A path as a JSON string (lossy for names that are not UTF-8).
pub(crate) fn path_json(p: &Path) -> serde_json::Value {
    serde_json::Value::String(p.display().to_string())
}
