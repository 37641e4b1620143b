//! Checkpoints: `checkpoint-<step>/` under the output folder holds the adapter as a PEFT folder (`adapter/`),
//! the optimizer state (`optimizer.safetensors`), the adapter method's training state when it keeps one
//! (`adapter_state.safetensors`: AdaLoRA's importance averages, rank masks and uncut tensors) and
//! `trainer_state.json` (step, data position, seed, config, the method where the PEFT files cannot name it:
//! LoRA-FA, saved as LoRA, and each adapted layer's dropout generator).
//!
//! Durability: a checkpoint is written into a hidden temporary folder next to it (`.tmp-checkpoint-<step>`);
//! every file in it is fsynced, then the folder itself, then it is renamed into place and the output folder
//! is fsynced, so the rename is on disk before the call returns. A process killed at any moment therefore
//! leaves every earlier checkpoint intact and at worst a `.tmp-checkpoint-*` folder, which
//! [`latest_checkpoint`] ignores and the next write of that step removes. Replacing a checkpoint of the same
//! step moves the old one aside (`.old-checkpoint-<step>`) before the rename and deletes it afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rankfold_adapters::layer::MethodState;
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::Method;
use rankfold_adapters::PeftModel;
use rankfold_tensor::nn::LinearModel;
use rankfold_tensor::{Device, Rng, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::{Error, Result};

/// The adapter's PEFT folder inside a checkpoint.
pub const ADAPTER_DIR: &str = "adapter";
/// The optimizer state file inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The adapter method's training state inside a checkpoint (only for methods that keep one).
pub const ADAPTER_STATE_FILE: &str = "adapter_state.safetensors";

/// The safetensors metadata key of the method state's JSON part.
const STATE_META_KEY: &str = "rankfold.method_state";

pub(crate) const PREFIX: &str = "checkpoint-";

/// Where a run stood when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// The next micro-batch position.
    pub position: u64,
    /// The run seed (with `position`, the whole random state).
    pub seed: u64,
    /// The settings of the run that wrote it.
    pub config: TrainConfig,
    /// The adapter method when its PEFT files cannot name it: `"lora_fa"` (saved as LoRA, with A frozen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Each adapted layer's dropout generator by module path, as 64 hex digits (its four state words), so a
    /// resumed run draws the dropout masks the uninterrupted run would have drawn.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropout_rng: BTreeMap<String, String>,
    /// Skipped steps (non-finite loss or gradient) in a row at this step.
    #[serde(default)]
    pub bad_in_row: usize,
    /// The sha256 of every other file of the checkpoint, by relative path, checked before a resume
    /// ([`super::integrity::verify`]); filled in by [`write()`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// [`TrainerState::dropout_rng`] of adapter `name` of `model`.
pub fn dropout_note<M: LinearModel>(model: &mut PeftModel<M>, name: &str) -> Result<BTreeMap<String, String>> {
    Ok(model
        .dropout_rngs(name)?
        .into_iter()
        .map(|(path, rng)| (path, rng.state().iter().map(|w| format!("{w:016x}")).collect()))
        .collect())
}

/// Restores the dropout generators that `state` (read from checkpoint `dir`) notes into adapter `name`.
fn restore_dropout<M: LinearModel>(
    dir: &Path,
    model: &mut PeftModel<M>,
    name: &str,
    state: &TrainerState,
) -> Result<()> {
    let mut rngs = Vec::with_capacity(state.dropout_rng.len());
    for (path, hex) in &state.dropout_rng {
        let words: Option<Vec<u64>> = (hex.len() == 64 && hex.is_ascii())
            .then(|| (0..4).map(|i| u64::from_str_radix(&hex[16 * i..16 * (i + 1)], 16).ok()).collect())
            .flatten();
        let rng = words
            .and_then(|w| Rng::from_state([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: field `dropout_rng.{path}` is not 64 hex digits of a generator state",
                    dir.join(STATE_FILE).display()
                ))
            })?;
        rngs.push((path.clone(), rng));
    }
    model.set_dropout_rngs(name, rngs)?;
    Ok(())
}

/// [`TrainerState::method`] for LoRA-FA.
pub const LORA_FA: &str = "lora_fa";

impl TrainerState {
    /// Reads `trainer_state.json` from checkpoint folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| Error::Json {
            source_name: path.display().to_string(),
            line: e.line(),
            message: e.to_string(),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes checkpoint `checkpoint-<state.step>` under `out`: `fill(tmp)` writes the payload into the temporary
/// folder, then the state file is added, everything is fsynced and the folder renamed into place (replacing
/// an older checkpoint of the same step). Returns the final path.
pub fn write(
    out: &Path,
    state: &TrainerState,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let name = format!("{PREFIX}{}", state.step);
    let tmp = out.join(format!(".tmp-{name}"));
    let old = out.join(format!(".old-{name}"));
    let dst = out.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    let state = TrainerState { files: super::integrity::digests(&tmp)?, ..state.clone() };
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(&state).map_err(|e| {
        Error::Config(format!(
            "{}: cannot encode the trainer state: {e}",
            state_path.display()
        ))
    })?;
    std::fs::write(&state_path, text).map_err(io(&state_path))?;
    sync_tree(&tmp)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    let replacing = dst.exists();
    if replacing {
        std::fs::rename(&dst, &old).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    sync_dir(out)?;
    if replacing {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(dst)
}

/// Fsyncs every file under `dir` and then every folder, innermost first, so that a folder's entries are on
/// disk before the folder that names them.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
        }
    }
    sync_dir(dir)
}

/// Fsyncs a folder (its list of entries). Only Unix lets a folder be opened for this; elsewhere renames are
/// left to the file system.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The complete checkpoint with the highest step under `out` (`None` when there is none). Temporary folders
/// and folders without a state file are skipped.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(out)(e)),
    };
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(io(out))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if path.join(STATE_FILE).is_file() && best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Writes adapter `name` of `model` into checkpoint folder `dir`: the PEFT folder, and the method's training
/// state when it keeps one.
pub fn save_adapter<M: LinearModel>(
    dir: &Path,
    model: &mut PeftModel<M>,
    name: &str,
) -> Result<()> {
    model.save_pretrained(dir.join(ADAPTER_DIR), name)?;
    if let Some(state) = model.export_state(name)? {
        let path = dir.join(ADAPTER_STATE_FILE);
        let meta = serde_json::to_string(&state.meta).map_err(|e| {
            Error::Config(format!(
                "{}: cannot encode the method state: {e}",
                path.display()
            ))
        })?;
        let refs: Vec<(&str, &Tensor)> =
            state.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let meta = HashMap::from([(STATE_META_KEY.to_string(), meta)]);
        rankfold_tensor::safetensors::save(&path, &refs, Some(&meta))?;
    }
    Ok(())
}

/// The [`TrainerState::method`] entry for adapter `name` of `model`.
pub fn method_note<M: LinearModel>(model: &PeftModel<M>, name: &str) -> Result<Option<String>> {
    Ok(match model.adapter_method(name)?.method() {
        Method::LoraFa => Some(LORA_FA.to_string()),
        _ => None,
    })
}

/// Adds adapter `name` to `model` from checkpoint folder `dir`: the PEFT folder (as the method `state` notes,
/// when the files cannot name it), then the method's training state when the checkpoint has one.
pub fn load_adapter<M: LinearModel>(
    dir: &Path,
    model: &mut PeftModel<M>,
    name: &str,
    state: &TrainerState,
) -> Result<()> {
    let adir = dir.join(ADAPTER_DIR);
    match state.method.as_deref() {
        None => {
            model.load(&adir, name)?;
        }
        Some(LORA_FA) => {
            let config = rankfold_adapters::peft::read_config(&adir)?;
            let method = LoraConfig::from_peft_json(&config)?.with_lora_fa(true);
            model.load_with(&adir, name, Box::new(method))?;
        }
        Some(other) => {
            return Err(Error::Config(format!(
                "{}: unknown adapter method `{other}`",
                dir.join(STATE_FILE).display()
            )))
        }
    }
    restore_dropout(dir, model, name, state)?;
    let path = dir.join(ADAPTER_STATE_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let file = rankfold_tensor::safetensors::MmapedSafetensors::open(&path)?;
    let Some(meta) = file.metadata()?.remove(STATE_META_KEY) else {
        return Err(Error::Config(format!(
            "{}: the metadata lacks `{STATE_META_KEY}`",
            path.display()
        )));
    };
    let meta = serde_json::from_str(&meta).map_err(|e| Error::Json {
        source_name: format!("{} metadata `{STATE_META_KEY}`", path.display()),
        line: e.line(),
        message: e.to_string(),
    })?;
    let mut tensors: Vec<(String, Tensor)> = file.load_all(Device::Cpu)?.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    model.import_state(name, MethodState { tensors, meta })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize, out: &Path) -> TrainerState {
        TrainerState {
            step,
            position: 2 * step as u64,
            seed: 1,
            config: TrainConfig::new(10, 0.1, out),
            method: None,
            dropout_rng: BTreeMap::new(),
            bad_in_row: 0,
            files: BTreeMap::new(),
        }
    }

    fn payload(text: &'static str) -> impl FnOnce(&Path) -> Result<()> {
        move |tmp| {
            std::fs::create_dir_all(tmp.join("sub")).map_err(io(tmp))?;
            std::fs::write(tmp.join("sub/file"), text).map_err(io(tmp))
        }
    }

    #[test]
    fn a_checkpoint_of_the_same_step_is_replaced_and_stale_folders_are_ignored_then_removed() {
        let out = std::env::temp_dir().join(format!("rankfold-ckpt-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        // Leftovers of a writer killed part-way: a temporary folder and a checkpoint moved aside.
        for stale in [
            ".tmp-checkpoint-2",
            ".old-checkpoint-2",
            ".tmp-checkpoint-9",
        ] {
            std::fs::create_dir_all(out.join(stale)).unwrap();
            std::fs::write(out.join(stale).join(STATE_FILE), "{}").unwrap();
        }
        assert_eq!(latest_checkpoint(&out).unwrap(), None);
        let first = write(&out, &state(2, &out), payload("first")).unwrap();
        assert_eq!(first, out.join("checkpoint-2"));
        assert!(!out.join(".tmp-checkpoint-2").exists() && !out.join(".old-checkpoint-2").exists());
        let again = write(&out, &state(2, &out), payload("second")).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            std::fs::read_to_string(first.join("sub/file")).unwrap(),
            "second"
        );
        assert!(!out.join(".old-checkpoint-2").exists());
        // The state read back is the one written, plus the digest of each payload file.
        let back = TrainerState::read(&first).unwrap();
        assert_eq!(TrainerState { files: BTreeMap::new(), ..back.clone() }, state(2, &out));
        let sha_second = "16367aacb67a4a017c8da8ab95682ccb390863780f7114dda0a0e0c55644c7c4";
        assert_eq!(back.files, BTreeMap::from([("sub/file".to_string(), sha_second.to_string())]));
        assert!(super::super::integrity::verify(&first).is_ok());
        write(&out, &state(3, &out), payload("third")).unwrap();
        assert_eq!(
            latest_checkpoint(&out).unwrap(),
            Some(out.join("checkpoint-3"))
        );
        // The killed writer's step-9 folder never counts.
        assert!(out.join(".tmp-checkpoint-9").exists());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
