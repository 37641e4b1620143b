//! `cargo xtask kernels [--check]`: compiles every `kernels/*.cu` with the pinned NVRTC to the committed PTX and
//! to sm_80 / sm_90a cubins, whose ptxas report becomes `crates/kernels/ptx/RESOURCES.md`.
//!
//! The PTX targets compute_80 and must declare PTX ISA ≤ 8.4 so that any driver from CUDA 12.4 up can JIT it.
//! NVRTC names the source by its absolute path in the PTX's `.file` lines; those paths are rewritten relative to
//! the repository so the PTX is byte-identical on every machine. A kernel that spills registers fails the
//! build. `--check` compiles the same way but compares instead of writing, and fails when a file is stale.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::nvrtc::{Image, Nvrtc};
use crate::toolchain::{self, Toolchain};

/// The virtual architecture of the committed PTX.
const PTX_ARCH: &str = "compute_80";
/// The real architectures whose ptxas report goes into RESOURCES.md.
const CUBIN_ARCHS: [&str; 2] = ["sm_80", "sm_90a"];
/// The newest PTX ISA the committed PTX may declare (CUDA 12.4).
const MAX_PTX_ISA: (u32, u32) = (8, 4);
/// Where the PTX and the resource table are committed, relative to the repository root.
const PTX_DIR: &str = "crates/kernels/ptx";

/// The options common to every compilation (the include folder is appended as `-I<dir>`).
fn base_options(toolchain: &Toolchain) -> Vec<String> {
    vec![
        "--std=c++17".into(),
        "-lineinfo".into(),
        format!("-I{}", toolchain.include_dir().display()),
    ]
}

/// One kernel's ptxas report for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resources {
    pub(crate) kernel: String,
    pub(crate) arch: String,
    pub(crate) registers: u32,
    pub(crate) spill_stores: u32,
    pub(crate) spill_loads: u32,
    pub(crate) stack_frame: u32,
    pub(crate) shared: u32,
    /// `None` when ptxas reports no constant bank (its sm_90 report omits them).
    pub(crate) constant: Option<u32>,
}

/// Everything the compilation produces: file → contents, plus the spill problems found.
#[derive(Debug)]
pub(crate) struct Generated {
    pub(crate) files: Vec<(PathBuf, String)>,
    pub(crate) spills: Vec<String>,
}

/// Compiles every `kernels/*.cu` below `root` with `toolchain`.
pub(crate) fn generate(root: &Path, toolchain: &Toolchain) -> Result<Generated> {
    let nvrtc = Nvrtc::load(&toolchain.nvrtc_lib())?;
    let (major, minor) = nvrtc.version()?;
    let mut sources = Vec::new();
    for entry in fs::read_dir(root.join("kernels")).context("reading kernels/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cu") {
            sources.push(path);
        }
    }
    sources.sort();
    if sources.is_empty() {
        bail!("no kernels/*.cu found below {}", root.display());
    }
    // Each source is compiled three times (PTX and two cubins); the compilations run in parallel.
    let results: Vec<Result<(String, Vec<Resources>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| s.spawn(|| compile_one(&nvrtc, root, toolchain, src)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a compilation thread panicked"))
            })
            .collect()
    });
    let mut files = Vec::new();
    let mut table = Vec::new();
    let mut spills = Vec::new();
    for (src, result) in sources.iter().zip(results) {
        let (ptx, resources) = result?;
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .context("a kernels/*.cu name is not UTF-8")?;
        for r in &resources {
            if r.spill_stores > 0 || r.spill_loads > 0 {
                spills.push(format!(
                    "kernels/{stem}.cu: {} spills on {} ({} bytes stored, {} loaded)",
                    r.kernel, r.arch, r.spill_stores, r.spill_loads
                ));
            }
        }
        files.push((root.join(PTX_DIR).join(format!("{stem}.ptx")), ptx));
        table.push((stem.to_string(), resources));
    }
    files.push((
        root.join(PTX_DIR).join("RESOURCES.md"),
        resources_md(&table, (major, minor), toolchain),
    ));
    // The test kernels' PTX sits beside their sources; it is held to the same freshness, without cubins.
    for dir in TEST_KERNEL_DIRS {
        let mut tests = Vec::new();
        for entry in fs::read_dir(root.join(dir)).with_context(|| format!("reading {dir}/"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "cu") {
                tests.push(path);
            }
        }
        tests.sort();
        for src in tests {
            let ptx = compile_ptx(&nvrtc, root, toolchain, &src)?;
            files.push((src.with_extension("ptx"), ptx));
        }
    }
    Ok(Generated { files, spills })
}

/// Folders of test kernels (`*.cu` with their committed `*.ptx` beside them) that the PTX simulator's tests load.
const TEST_KERNEL_DIRS: [&str; 2] = ["tests/it/ptxsim", "tests/it/planted"];

/// Compiles one source to repository-relative PTX for compute_80 (checked to be within the pinned PTX ISA).
fn compile_ptx(nvrtc: &Nvrtc, root: &Path, toolchain: &Toolchain, src: &Path) -> Result<String> {
    let rel = src
        .strip_prefix(root)
        .unwrap_or(src)
        .to_string_lossy()
        .replace('\\', "/");
    let source = fs::read_to_string(src).with_context(|| format!("reading {rel}"))?;
    // The program is named by its absolute path so that `#include "…"` resolves next to it.
    let name = src.to_string_lossy();
    let mut options = vec![format!("-arch={PTX_ARCH}")];
    options.extend(base_options(toolchain));
    let out = nvrtc.compile(&name, &source, &options, Image::Ptx)?;
    let ptx = String::from_utf8(out.code)
        .with_context(|| format!("{rel}: NVRTC returned PTX that is not UTF-8"))?;
    let ptx = relative_file_paths(&ptx, root, &toolchain.root);
    check_ptx_version(&ptx, &rel)?;
    Ok(ptx)
}

/// Compiles one source: its repository-relative PTX and the ptxas report for each cubin architecture.
fn compile_one(
    nvrtc: &Nvrtc,
    root: &Path,
    toolchain: &Toolchain,
    src: &Path,
) -> Result<(String, Vec<Resources>)> {
    let rel = src
        .strip_prefix(root)
        .unwrap_or(src)
        .to_string_lossy()
        .replace('\\', "/");
    let ptx = compile_ptx(nvrtc, root, toolchain, src)?;
    let source = fs::read_to_string(src).with_context(|| format!("reading {rel}"))?;
    let name = src.to_string_lossy();
    let mut resources = Vec::new();
    for arch in CUBIN_ARCHS {
        let mut options = vec![format!("-arch={arch}")];
        options.extend(base_options(toolchain));
        options.push("--ptxas-options=-v".into());
        let out = nvrtc.compile(&name, &source, &options, Image::Cubin)?;
        let report = parse_ptxas(&out.log)
            .with_context(|| format!("{rel}: reading the ptxas report for {arch}"))?;
        if report.is_empty() {
            bail!(
                "{rel}: the ptxas report for {arch} lists no entry function:\n{}",
                out.log
            );
        }
        resources.extend(report);
    }
    resources.sort_by(|a, b| (&a.kernel, &a.arch).cmp(&(&b.kernel, &b.arch)));
    Ok((ptx, resources))
}

/// Rewrites the absolute paths NVRTC writes into `.file` directives: paths below `root` become relative to it,
/// and paths below the toolchain folder `cuda` (CUDA headers, should their code carry line info) start with
/// `<cuda>/`, so the PTX does not depend on where the checkout or the toolchain lives.
fn relative_file_paths(ptx: &str, root: &Path, cuda: &Path) -> String {
    let mut prefixes = Vec::new();
    for (dir, replacement) in [(root, "\""), (cuda, "\"<cuda>/")] {
        prefixes.push((format!("\"{}/", dir.display()), replacement));
        if let Ok(canonical) = dir.canonicalize() {
            prefixes.push((format!("\"{}/", canonical.display()), replacement));
        }
    }
    let mut out = String::with_capacity(ptx.len());
    for line in ptx.split_inclusive('\n') {
        if line.trim_start().starts_with(".file") {
            let mut line = line.to_string();
            for (prefix, replacement) in &prefixes {
                line = line.replace(prefix.as_str(), replacement);
            }
            out.push_str(&line);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Fails unless the PTX declares `.version` X.Y with X.Y ≤ 8.4.
fn check_ptx_version(ptx: &str, rel: &str) -> Result<()> {
    let version = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version"))
        .map(str::trim)
        .with_context(|| format!("{rel}: the PTX has no .version line"))?;
    let parsed = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    match parsed {
        Some(v) if v <= MAX_PTX_ISA => Ok(()),
        Some(_) => bail!(
            "{rel}: PTX ISA {version} is newer than {}.{}",
            MAX_PTX_ISA.0,
            MAX_PTX_ISA.1
        ),
        None => bail!("{rel}: cannot read the PTX version `{version}`"),
    }
}

/// Reads ptxas's `-v` report: one `Resources` per entry function.
///
/// The report has, per function, `Compiling entry function 'NAME' for 'ARCH'` (entries only), then
/// `Function properties for NAME` followed by `N bytes stack frame, N bytes spill stores, N bytes spill loads`,
/// and for entries `Used N registers[, N bytes smem][, N bytes cmem[K]]…`. Non-entry functions (device
/// functions that were not inlined) report only their properties; their spills are attributed to the entry
/// compiled around them by ptxas, which reports them again, so they are not listed separately.
pub(crate) fn parse_ptxas(log: &str) -> Result<Vec<Resources>> {
    let mut out: Vec<Resources> = Vec::new();
    let mut current: Option<Resources> = None;
    let mut properties_of: Option<String> = None;
    for line in log.lines() {
        let text = line
            .trim_start_matches("ptxas")
            .trim_start_matches(" info")
            .trim_start_matches([' ', ':', '.'])
            .trim();
        if let Some(rest) = text.strip_prefix("Compiling entry function '") {
            if let Some(done) = current.take() {
                out.push(done);
            }
            let (kernel, rest) = rest.split_once('\'').context("unterminated entry name")?;
            let arch = rest
                .split('\'')
                .nth(1)
                .context("no architecture after the entry name")?;
            current = Some(Resources {
                kernel: kernel.to_string(),
                arch: arch.to_string(),
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                stack_frame: 0,
                shared: 0,
                constant: None,
            });
        } else if let Some(name) = text.strip_prefix("Function properties for ") {
            properties_of = Some(name.trim().to_string());
        } else if text.contains("bytes stack frame") {
            let entry = current
                .as_mut()
                .filter(|c| properties_of.as_deref() == Some(c.kernel.as_str()));
            if let Some(c) = entry {
                for item in text.split(',') {
                    let n = leading_number(item)?;
                    if item.contains("stack frame") {
                        c.stack_frame = n;
                    } else if item.contains("spill stores") {
                        c.spill_stores = n;
                    } else if item.contains("spill loads") {
                        c.spill_loads = n;
                    }
                }
            } else if text.contains(" 0 bytes spill stores, 0 bytes spill loads")
                || !text.contains("spill")
            {
                // A non-entry function without spills.
            } else {
                bail!(
                    "a device function spills: {} ({text})",
                    properties_of.as_deref().unwrap_or("?")
                );
            }
        } else if let Some(rest) = text.strip_prefix("Used ") {
            let c = current
                .as_mut()
                .context("a `Used … registers` line before any entry function")?;
            for item in rest.split(',') {
                let item = item.trim();
                if item.contains("registers") {
                    c.registers = leading_number(item)?;
                } else if item.contains("smem") {
                    c.shared += leading_number(item)?;
                } else if item.contains("cmem") {
                    c.constant = Some(c.constant.unwrap_or(0) + leading_number(item)?);
                }
            }
        }
    }
    if let Some(done) = current.take() {
        out.push(done);
    }
    Ok(out)
}

/// The number at the start of an item such as `384 bytes cmem[0]`.
fn leading_number(item: &str) -> Result<u32> {
    let word = item.split_whitespace().next().unwrap_or("");
    word.parse()
        .with_context(|| format!("expected a number at the start of `{}`", item.trim()))
}

/// The RESOURCES.md text: the toolchain, the options, and one row per kernel per architecture.
fn resources_md(
    table: &[(String, Vec<Resources>)],
    version: (i32, i32),
    toolchain: &Toolchain,
) -> String {
    let shown = |opts: Vec<String>| -> String {
        opts.iter()
            .map(|o| {
                if o.starts_with("-I") {
                    "-I<toolchain>/nvidia/cuda_runtime/include".to_string()
                } else {
                    o.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::new();
    s.push_str("# Kernel resources\n\n");
    s.push_str("Generated by `cargo xtask kernels` from `kernels/*.cu`; do not edit (a test checks it is fresh).\n\n");
    let _ = writeln!(
        s,
        "- NVRTC {}.{} (PyPI `nvidia-cuda-nvrtc-cu12=={}`)",
        version.0,
        version.1,
        toolchain::CUDA_VERSION
    );
    let mut ptx_opts = vec![format!("-arch={PTX_ARCH}")];
    ptx_opts.extend(base_options(toolchain));
    let _ = writeln!(
        s,
        "- PTX: `{}` (PTX ISA ≤ {}.{})",
        shown(ptx_opts),
        MAX_PTX_ISA.0,
        MAX_PTX_ISA.1
    );
    let mut cubin_opts = vec![format!("-arch={}", CUBIN_ARCHS.join("|"))];
    cubin_opts.extend(base_options(toolchain));
    cubin_opts.push("--ptxas-options=-v".into());
    let _ = writeln!(s, "- cubin (for this table only): `{}`", shown(cubin_opts));
    s.push_str("- Bytes per thread for spills and stack; bytes per block for static shared memory; constant memory is ");
    s.push_str("the sum of the `cmem` banks ptxas reports (kernel parameters included; `–` where ptxas reports none, as for sm_90a).\n\n");
    s.push_str("| module | kernel | arch | registers | spill stores (B) | spill loads (B) | stack frame (B) | static smem (B) | cmem (B) |\n");
    s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (stem, rows) in table {
        for r in rows {
            let _ = writeln!(
                s,
                "| {stem} | `{}` | {} | {} | {} | {} | {} | {} | {} |",
                r.kernel,
                r.arch,
                r.registers,
                r.spill_stores,
                r.spill_loads,
                r.stack_frame,
                r.shared,
                r.constant.map_or("–".to_string(), |c| c.to_string())
            );
        }
    }
    s
}

/// The files among `generated` whose committed contents differ (or that are missing), and committed PTX files
/// that no source produces any more.
pub(crate) fn stale(root: &Path, generated: &Generated) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (path, text) in &generated.files {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        match fs::read_to_string(path) {
            Ok(committed) if committed == *text => {}
            Ok(committed) => problems.push(format!(
                "{rel} is stale ({})",
                first_difference(&committed, text)
            )),
            Err(_) => problems.push(format!("{rel} is missing")),
        }
    }
    for entry in fs::read_dir(root.join(PTX_DIR))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "ptx")
            && !generated.files.iter().any(|(p, _)| *p == path)
        {
            let rel = path.strip_prefix(root).unwrap_or(&path).display();
            problems.push(format!(
                "{rel} has no source in kernels/ (delete it, or restore the .cu)"
            ));
        }
    }
    Ok(problems)
}

/// Where two texts first differ, for the stale-file message.
fn first_difference(committed: &str, fresh: &str) -> String {
    let mut a = committed.lines();
    let mut b = fresh.lines();
    for line in 1.. {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return "differs only in line endings".into(),
            (x, y) => {
                let show = |l: Option<&str>| {
                    l.map_or("<end of file>".to_string(), |l| format!("`{}`", l.trim()))
                };
                return format!("line {line}: committed {}, fresh {}", show(x), show(y));
            }
        }
    }
    unreachable!("the loop returns at the first difference or the end")
}

/// `cargo xtask kernels [--check]`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        [other, ..] => bail!("kernels takes only `--check`, got `{other}`"),
    };
    let toolchain = toolchain::installed()?.context(
        "the pinned NVRTC is not installed; run `cargo xtask cuda-toolchain` first (or set RANKFOLD_CUDA_HOME)",
    )?;
    let generated = generate(root, &toolchain)?;
    if check {
        let mut problems = stale(root, &generated)?;
        problems.extend(generated.spills.iter().cloned());
        if !problems.is_empty() {
            bail!(
                "kernels --check: {} problem(s); run `cargo xtask kernels`:\n  {}",
                problems.len(),
                problems.join("\n  ")
            );
        }
        eprintln!(
            "kernels: {} file(s) fresh, no spills",
            generated.files.len()
        );
        return Ok(());
    }
    for (path, text) in &generated.files {
        if fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
            fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "kernels: wrote {}",
                path.strip_prefix(root).unwrap_or(path).display()
            );
        }
    }
    if !generated.spills.is_empty() {
        bail!(
            "{} kernel(s) spill registers:\n  {}",
            generated.spills.len(),
            generated.spills.join("\n  ")
        );
    }
    eprintln!(
        "kernels: {} file(s) up to date, no spills",
        generated.files.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_ptx_and_resources_are_fresh_and_spill_free() {
        let toolchain = match toolchain::installed() {
            Ok(Some(t)) => t,
            other => {
                // CI installs the toolchain (`.ci/run`), so there a missing one is a failure, not a skip.
                let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
                assert!(
                    !ci,
                    "the pinned NVRTC is not installed ({other:?}); CI must run `cargo xtask cuda-toolchain` so \
                     that the committed PTX is checked for freshness"
                );
                // Written to the process's stderr directly, so that libtest's output capture does not hide it.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"note: kernel freshness not checked: the pinned NVRTC is not installed \
                      (run `cargo xtask cuda-toolchain`)\n",
                );
                return;
            }
        };
        let root = crate::project_root();
        let generated = generate(&root, &toolchain).expect("every kernels/*.cu compiles");
        let mut problems = stale(&root, &generated).expect("the committed files can be read");
        problems.extend(generated.spills);
        assert!(
            problems.is_empty(),
            "run `cargo xtask kernels`:\n  {}",
            problems.join("\n  ")
        );
    }

    #[test]
    fn reads_a_ptxas_report() {
        let log = "ptxas info    : 4 bytes gmem, 8 bytes cmem[4]\n\
            ptxas info    : Compiling entry function 'k_fwd' for 'sm_80'\n\
            ptxas info    : Function properties for k_fwd\n\
            ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
            ptxas info    : Used 40 registers, 2048 bytes smem, 384 bytes cmem[0], 8 bytes cmem[2]\n\
            ptxas info    : Compiling entry function 'k_bwd' for 'sm_90a'\n\
            ptxas info    : Function properties for k_bwd\n\
            ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 25 registers\n";
        let r = parse_ptxas(log).expect("a well-formed report");
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resources {
                kernel: "k_fwd".into(),
                arch: "sm_80".into(),
                registers: 40,
                spill_stores: 8,
                spill_loads: 4,
                stack_frame: 16,
                shared: 2048,
                constant: Some(392),
            }
        );
        assert_eq!(
            (
                r[1].kernel.as_str(),
                r[1].arch.as_str(),
                r[1].registers,
                r[1].constant
            ),
            ("k_bwd", "sm_90a", 25, None)
        );
    }

    #[test]
    fn file_paths_become_repository_relative() {
        let root = Path::new("/some/where/repo");
        let ptx = ".version 8.4\n\tld.param.u64 %rd1, [x];\n\t.file\t1 \"/some/where/repo/kernels/a.cu\"\n\
                   \t.file\t2 \"/some/where/repo/kernels/common.cuh\"\n";
        let ptx = format!(
            "{ptx}\t.file\t3 \"/opt/cuda-cache/nvidia/cuda_runtime/include/cuda_bf16.hpp\"\n"
        );
        let out = relative_file_paths(&ptx, root, Path::new("/opt/cuda-cache"));
        assert!(
            out.contains("\t.file\t3 \"<cuda>/nvidia/cuda_runtime/include/cuda_bf16.hpp\"\n"),
            "{out}"
        );
        assert!(out.contains("\t.file\t1 \"kernels/a.cu\"\n"), "{out}");
        assert!(out.contains("\t.file\t2 \"kernels/common.cuh\"\n"), "{out}");
        assert!(out.starts_with(".version 8.4\n\tld.param.u64"));
    }

    #[test]
    fn ptx_version_is_capped() {
        assert!(check_ptx_version(".version 8.4\n", "a").is_ok());
        assert!(check_ptx_version(".version 7.8\n", "a").is_ok());
        assert!(check_ptx_version(".version 8.5\n", "a").is_err());
        assert!(check_ptx_version(".version 9.0\n", "a").is_err());
        assert!(check_ptx_version(".target sm_80\n", "a").is_err());
    }
}
