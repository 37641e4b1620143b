//! `cargo xtask tidy`, also run by `cargo test -p xtask`: checks the house rules of docs/conventions.md over
//! the repository.
//!
//! - every `.rs` file opens with a `//!` doc line within its first 3 lines;
//! - no `.rs`, `.cu` or `.cuh` file is longer than 800 lines (the generated `crates/kernels/ptx/` is exempt);
//! - ARCHITECTURE.md names every crate directory under `crates/` (as `crates/<dir>` or by its package name) and
//!   `xtask`;
//! - dependency edges (ARCHITECTURE.md's invariants): `crates/kernels` depends on no other rankfold crate; only
//!   `crates/kernels` names cudarc (the workspace manifest aside); only crates/ptxsim, tests, benches and xtask use
//!   ptxsim;
//! - every `.cu` under `kernels/` opens with a header comment that has `Math:`, `Traffic:` and `Reference:` lines
//!   and a `Test:` entry, and the files that `Reference:` and `Test:` name exist.
//!
//! - no `.rs`, `.cu`, `.cuh`, `.md`, `.toml`, `.py` or `.sh` file points at documents outside the repository (the
//!   design notes its founders worked from): what the code relies on is in `docs/`.
//!
//! Directories named `target` and hidden directories are skipped. A failure lists every offending file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The most lines a source file may have.
const MAX_LINES: usize = 800;

/// Runs every check and fails with the full list of problems.
pub(crate) fn check(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    let mut problems = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(root).unwrap_or(path);
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let is_manifest = path.file_name().is_some_and(|n| n == "Cargo.toml");
        if matches!(ext, "rs" | "cu" | "cuh" | "md" | "toml" | "py" | "sh") {
            let text = fs::read_to_string(path)?;
            problems.extend(outside_references(&text).into_iter().map(|r| format!("{}: points at {r}, outside the repository", rel.display())));
        }
        if !matches!(ext, "rs" | "cu" | "cuh") && !is_manifest {
            continue;
        }
        let text = fs::read_to_string(path)?;
        if is_manifest {
            problems.extend(edge_problems(rel, &text));
            continue;
        }
        if ext == "rs" && !has_module_doc(&text) {
            problems.push(format!("{}: no `//!` doc line within the first 3 lines", rel.display()));
        }
        let lines = text.lines().count();
        if lines > MAX_LINES && !rel.starts_with("crates/kernels/ptx") {
            problems.push(format!("{}: {lines} lines, more than {MAX_LINES}", rel.display()));
        }
        if ext == "rs" {
            problems.extend(edge_problems(rel, &text));
        }
        if ext == "cu" && rel.starts_with("kernels") {
            problems.extend(cu_header_problems(&text, root).into_iter().map(|p| format!("{}: {p}", rel.display())));
        }
    }
    problems.extend(architecture_problems(root)?);
    if !problems.is_empty() {
        bail!("tidy found {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(())
}

/// Every file below `dir`, skipping `target` and hidden directories.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, out)?;
            }
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The names of documents outside the repository that `text` mentions. The names are assembled from parts so
/// that this file does not mention them itself.
fn outside_references(text: &str) -> Vec<String> {
    let names = [
        ["STYLE", ".md"].concat(),
        ["REFERENCE", ".md"].concat(),
        ["DESIGN", ".md"].concat(),
        ["../", "shared"].concat(),
    ];
    names.into_iter().filter(|n| text.contains(n.as_str())).collect()
}

fn has_module_doc(text: &str) -> bool {
    text.lines().take(3).any(|l| l.trim_start().starts_with("//!"))
}

/// Dependency edges that break ARCHITECTURE.md's invariants, in one `.rs` file or Cargo.toml (`rel` from the root).
fn edge_problems(rel: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let is_root_manifest = rel == Path::new("Cargo.toml");
    let code: String = if rel.extension().is_some_and(|e| e == "rs") {
        // Comments may name anything; only code and manifests make edges.
        text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
    } else {
        text.to_string()
    };
    if rel.starts_with("crates/kernels") && rel.ends_with("Cargo.toml") && code.contains("rankfold-") {
        let deps = code.split("[package]").nth(1).unwrap_or("");
        let deps = deps.split_once("\n[").map(|(_, d)| d).unwrap_or("");
        if deps.contains("rankfold-") {
            problems.push(format!("{}: rankfold-kernels must not depend on another rankfold crate", rel.display()));
        }
    }
    if code.contains("cudarc") && !rel.starts_with("crates/kernels") && !is_root_manifest && !rel.starts_with("xtask/src/tidy.rs") {
        problems.push(format!("{}: names cudarc, which only crates/kernels may", rel.display()));
    }
    let ptxsim_ok = ["crates/ptxsim", "tests", "benches", "xtask"].iter().any(|p| rel.starts_with(p));
    if (code.contains("rankfold_ptxsim") || code.contains("rankfold-ptxsim")) && !ptxsim_ok && !is_root_manifest {
        problems.push(format!("{}: uses ptxsim, which only tests, benches and xtask may", rel.display()));
    }
    problems
}

/// The problems with a `.cu` file's header: the first `/* … */` comment.
fn cu_header_problems(text: &str, root: &Path) -> Vec<String> {
    let header =
        text.trim_start().strip_prefix("/*").and_then(|rest| rest.split_once("*/")).map(|(h, _)| h).unwrap_or("");
    if header.is_empty() {
        return vec!["does not open with a `/* … */` header (docs/conventions.md, Kernels)".into()];
    }
    let lines: Vec<&str> = header.lines().map(|l| l.trim_start_matches([' ', '\t', '*'])).collect();
    let mut problems = Vec::new();
    for label in ["Math:", "Traffic:", "Reference:"] {
        if !lines.iter().any(|l| l.starts_with(label)) {
            problems.push(format!("header has no `{label}` line"));
        }
    }
    // The entries `Reference: crates/…/cpu.rs::twin` and `Test: tests/it/….rs` name files that must exist.
    for label in ["Reference:", "Test:"] {
        let named = lines.iter().find_map(|l| l.split_once(label).map(|(_, rest)| rest.split_whitespace().next()));
        match named {
            Some(Some(entry)) => {
                let file = entry.split("::").next().unwrap_or(entry);
                if !root.join(file).is_file() {
                    problems.push(format!("header names `{file}` after `{label}`, which does not exist"));
                }
            }
            _ if label == "Test:" => problems.push("header names no `Test:` file".into()),
            _ => {}
        }
    }
    problems
}

/// The crate directories and xtask that ARCHITECTURE.md does not name.
fn architecture_problems(root: &Path) -> Result<Vec<String>> {
    let Ok(doc) = fs::read_to_string(root.join("ARCHITECTURE.md")) else {
        return Ok(vec!["ARCHITECTURE.md: missing".into()]);
    };
    let mut crate_dirs: Vec<(String, Option<String>)> = Vec::new();
    if let Ok(entries) = fs::read_dir(root.join("crates")) {
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                let dir = entry.file_name().to_string_lossy().into_owned();
                let package = fs::read_to_string(entry.path().join("Cargo.toml")).ok().and_then(|t| package_name(&t));
                crate_dirs.push((dir, package));
            }
        }
    }
    crate_dirs.sort();
    let mut problems = Vec::new();
    for (dir, package) in crate_dirs {
        let path = format!("crates/{dir}");
        if !mentions(&doc, &path) && !package.as_deref().is_some_and(|p| mentions(&doc, p)) {
            let also = package.map(|p| format!(" or `{p}`")).unwrap_or_default();
            problems.push(format!("ARCHITECTURE.md: does not name `{path}`{also}"));
        }
    }
    if !mentions(&doc, "xtask") {
        problems.push("ARCHITECTURE.md: does not name `xtask`".into());
    }
    Ok(problems)
}

/// The `name` in a Cargo.toml's `[package]` table.
fn package_name(toml: &str) -> Option<String> {
    let package = toml.split("[package]").nth(1)?;
    let package = package.split("\n[").next()?;
    package.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "name").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Whether `doc` contains `name` as a whole word: not inside a longer identifier or path segment.
fn mentions(doc: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    doc.match_indices(name).any(|(i, _)| {
        let before = doc[..i].chars().next_back();
        let after = doc[i + name.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's own tidy check: `cargo test -p xtask` fails while any house rule is broken.
    #[test]
    fn tidy() {
        if let Err(e) = check(&crate::project_root()) {
            panic!("{e}");
        }
    }

    #[test]
    fn outside_documents_are_found() {
        let style = ["STYLE", ".md"].concat();
        assert_eq!(outside_references(&format!("see {style} §2")), vec![style]);
        assert!(outside_references("see docs/reference.md and RESOURCES.md").is_empty());
        assert_eq!(outside_references(&["run ../", "shared/x.sh"].concat()).len(), 1);
    }

    #[test]
    fn module_doc_within_three_lines() {
        assert!(has_module_doc("//! Docs.\nfn f() {}\n"));
        assert!(has_module_doc("#![allow(x)]\n\n//! Docs.\n"));
        assert!(!has_module_doc("/// Item docs.\nfn f() {}\n"));
        assert!(!has_module_doc("\n\n\n//! Too late.\n"));
    }

    #[test]
    fn cu_headers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let good = "/*\nx.cu: y.\nMath:      a\nTraffic:   b\nReference: src/main.rs::main   Test: src/tidy.rs\n*/\n";
        assert_eq!(cu_header_problems(good, root), Vec::<String>::new());
        let bad = "/*\nMath: a\nReference: src/nope.rs::f\n*/\n";
        let p = cu_header_problems(bad, root);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("Traffic:") && p[1].contains("src/nope.rs") && p[2].contains("Test:"));
        assert_eq!(cu_header_problems("// Not a header.\n", root).len(), 1);
    }

    #[test]
    fn edges() {
        let p = |rel: &str, text: &str| edge_problems(Path::new(rel), text);
        assert!(p("crates/tensor/src/x.rs", "use cudarc::driver;").len() == 1);
        assert!(p("crates/tensor/src/x.rs", "// cudarc is named in a comment only").is_empty());
        assert!(p("crates/kernels/src/cuda.rs", "use cudarc::driver;").is_empty());
        assert!(p("crates/tensor/Cargo.toml", "[dependencies]\nrankfold-ptxsim.workspace = true").len() == 1);
        assert!(p("tests/it/gpu.rs", "use rankfold_ptxsim::SimRuntime;").is_empty());
        let kernels = "[package]\nname = \"rankfold-kernels\"\n\n[dependencies]\nrankfold-tensor.workspace = true\n";
        assert_eq!(p("crates/kernels/Cargo.toml", kernels).len(), 1);
        assert!(p("crates/kernels/Cargo.toml", "[package]\nname = \"rankfold-kernels\"\n[dependencies]\nhalf = 1").is_empty());
    }

    #[test]
    fn names_are_whole_words() {
        assert!(mentions("The `crates/tensor` crate.", "crates/tensor"));
        assert!(mentions("see crates/tensor/src", "crates/tensor"));
        assert!(!mentions("crates/tensors", "crates/tensor"));
        assert!(!mentions("rankfold-tensor-extra", "rankfold-tensor"));
        assert_eq!(package_name("[package]\nname = \"rankfold-x\"\n[deps]\nname = \"no\""), Some("rankfold-x".into()));
    }
}
