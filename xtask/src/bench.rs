//! `cargo xtask bench`: runs the criterion benches in benches/, reads what criterion saved, and prints one table.
//!
//! Every bench records its work per call as a criterion throughput (FLOPs for matmul, bytes for softmax and
//! rms_norm, parameters for adamw). A row's value is that work divided by the **median** time per call, which
//! criterion estimates from its samples (`new/estimates.json`); the work and the bench's id come from
//! `new/benchmark.json`. Only results written by this run are read, so stale directories never leak in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::peers;

/// A bench file in benches/ and the criterion groups it defines.
struct BenchFile {
    file: &'static str,
    groups: &'static [&'static str],
}

/// The bench files, in the order they run and their rows print.
const BENCH_FILES: [BenchFile; 10] = [
    BenchFile { file: "matmul", groups: &["matmul"] },
    BenchFile { file: "ops", groups: &["softmax", "rms_norm"] },
    BenchFile { file: "optim", groups: &["adamw"] },
    BenchFile { file: "nf4", groups: &["nf4"] },
    BenchFile { file: "elementwise", groups: &["elementwise"] },
    BenchFile { file: "softmax", groups: &["softmax_kernel"] },
    BenchFile { file: "gemm", groups: &["gemm"] },
    BenchFile { file: "nf4_gpu", groups: &["nf4_kernel"] },
    BenchFile { file: "ptxsim", groups: &["ptxsim"] },
    BenchFile { file: "train_step", groups: &["train_step"] },
];

/// The group whose work is tokens per training step, reported as tokens/s rather than Gtokens/s.
const TRAIN_STEP: &str = "train_step";

/// The options of `cargo xtask bench`.
#[derive(Debug)]
pub(crate) struct Options {
    quick: bool,
    filter: Option<String>,
    json: Option<PathBuf>,
    peers: bool,
    threads: usize,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options { quick: false, filter: None, json: None, peers: false, threads: 2 };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--peers" => o.peers = true,
                "--filter" => o.filter = Some(crate::flag_value(arg, &mut it)?),
                "--json" => o.json = Some(PathBuf::from(crate::flag_value(arg, &mut it)?)),
                "--threads" => {
                    let v = crate::flag_value(arg, &mut it)?;
                    o.threads = v.parse().ok().filter(|&n| n > 0).with_context(|| format!("bad --threads `{v}`"))?;
                }
                other => bail!("unknown bench option `{other}` (see `cargo xtask help`)"),
            }
        }
        Ok(o)
    }
}

/// One result row; its JSON form `{name, shape, metric, value, unit}` is a stable interface (docs/conventions.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) shape: String,
    pub(crate) metric: String,
    pub(crate) value: f64,
    pub(crate) unit: String,
}

/// A bench's measured result: its row, the work per call and the median seconds per call.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) row: Row,
    pub(crate) work: f64,
    pub(crate) seconds: f64,
}

/// The parts of criterion's `new/benchmark.json` that are read here.
#[derive(Debug, Deserialize)]
struct SavedId {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<serde_json::Value>,
}

/// The parts of criterion's `new/estimates.json` that are read here (times in nanoseconds).
#[derive(Debug, Deserialize)]
struct SavedEstimates {
    median: SavedEstimate,
}

#[derive(Debug, Deserialize)]
struct SavedEstimate {
    point_estimate: f64,
}

pub(crate) fn run(root: &Path, o: Options) -> Result<()> {
    let criterion_home = target_dir(root).join("criterion");
    let files = selected_files(o.filter.as_deref());
    let start = SystemTime::now();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).arg("bench");
    for f in &files {
        cmd.args(["--bench", f.file]);
    }
    cmd.arg("--").arg("--noplot");
    if o.quick {
        cmd.arg("--quick");
    }
    cmd.args(o.filter.iter());
    // Criterion writes where it is told; rankfold's GEMM and row ops use rayon's pool of `threads`.
    cmd.env("CRITERION_HOME", &criterion_home).env("RAYON_NUM_THREADS", o.threads.to_string());
    // Criterion's own report goes to stderr, so that stdout carries only the table.
    cmd.stdout(Stdio::from(std::io::stderr()));
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed: {status}");
    }

    let measured = collect(&criterion_home, &files, start)?;
    if measured.is_empty() {
        bail!("no benchmark matched {:?}; the groups are {}", o.filter, all_groups().join(", "));
    }

    let memory = peak_memory_row(&criterion_home, &measured, start)?;
    let peers = if o.peers { peers::run(root, &measured, o.quick, o.threads)? } else { None };
    for line in peers.iter().flat_map(|p| p.describe()) {
        println!("peers: {line}");
    }
    print!("{}", table(&measured, peers.as_ref()));
    println!(
        "value = work per call / median time per call{}",
        if peers.is_some() {
            "; peer value = the same work / the peer's median time; ratio = rankfold / peer, above 1 when rankfold \
             is faster"
        } else {
            ""
        }
    );

    if let Some(r) = &memory {
        println!("{}  {}  {}: {:.1} {}", r.name, r.shape, r.metric, r.value, r.unit);
    }

    if let Some(path) = &o.json {
        let mut rows: Vec<Row> = measured.iter().map(|m| m.row.clone()).collect();
        rows.extend(memory.iter().cloned());
        if let Some(p) = &peers {
            rows.extend(measured.iter().filter_map(|m| p.row_for(m)).map(|(_, row)| row));
        }
        let text = serde_json::to_string_pretty(&rows)? + "\n";
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: wrote {} rows to {}", rows.len(), path.display());
    }
    Ok(())
}

/// The training step's peak tensor memory as a row (`train_step/peak_memory`, MB), when benches/train_step.rs
/// ran in this run and wrote `train_step/peak_memory.json` beside criterion's results.
fn peak_memory_row(home: &Path, measured: &[Measured], start: SystemTime) -> Result<Option<Row>> {
    let Some(step) = measured.iter().find(|m| m.row.name.starts_with("train_step/")) else { return Ok(None) };
    let path = home.join(TRAIN_STEP).join("peak_memory.json");
    let fresh = fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t >= start);
    if !fresh {
        eprintln!("xtask: note: {} was not written by this run; no peak memory row", path.display());
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    let bytes = v["peak_bytes"].as_f64().with_context(|| format!("{} has no peak_bytes", path.display()))?;
    Ok(Some(Row {
        name: format!("{TRAIN_STEP}/peak_memory"),
        shape: step.row.shape.clone(),
        metric: "peak tensor memory".into(),
        value: bytes / 1e6,
        unit: "MB".into(),
    }))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` under the root.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn all_groups() -> Vec<&'static str> {
    BENCH_FILES.iter().flat_map(|f| f.groups.iter().copied()).collect()
}

/// The bench files to run: those with a group that the filter names (or that names the filter), else all of
/// them, leaving the filtering to criterion (a filter such as `1024x1024` matches ids in any group).
fn selected_files(filter: Option<&str>) -> Vec<&'static BenchFile> {
    let all: Vec<&BenchFile> = BENCH_FILES.iter().collect();
    let Some(filter) = filter else { return all };
    let some: Vec<&BenchFile> =
        all.iter().copied().filter(|f| f.groups.iter().any(|g| filter.contains(g) || g.contains(filter))).collect();
    if some.is_empty() {
        all
    } else {
        some
    }
}

/// How a group's throughput is reported: (metric, unit). A value is work per nanosecond, i.e. giga-work per second.
fn metric_of(group: &str, throughput_kind: &str) -> (&'static str, &'static str) {
    match (group, throughput_kind) {
        ("matmul", _) => ("compute", "GFLOP/s"),
        ("adamw", _) => ("update rate", "Gparam/s"),
        (TRAIN_STEP, _) => ("throughput", "tokens/s"),
        (_, "Bytes" | "BytesDecimal") => ("bandwidth", "GB/s"),
        (_, "Bits") => ("bandwidth", "Gbit/s"),
        _ => ("throughput", "Gelem/s"),
    }
}

/// Reads the results that criterion saved after `start` under the selected files' groups.
fn collect(home: &Path, files: &[&BenchFile], start: SystemTime) -> Result<Vec<Measured>> {
    let mut found = Vec::new();
    for (gi, group) in files.iter().flat_map(|f| f.groups.iter()).enumerate() {
        let mut saved = Vec::new();
        find_saved(&home.join(group), &mut saved)?;
        for path in saved {
            let modified = fs::metadata(&path)?.modified()?;
            if modified < start {
                continue;
            }
            let m = read_measured(&path).with_context(|| format!("reading {}", path.display()))?;
            found.push((gi, modified, m));
        }
    }
    // Criterion saves each bench as it finishes, so the write times give the order in which they ran.
    found.sort_by_key(|&(gi, modified, _)| (gi, modified));
    Ok(found.into_iter().map(|(_, _, m)| m).collect())
}

/// Every `new/benchmark.json` below `dir` (none when `dir` does not exist).
fn find_saved(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            find_saved(&path, out)?;
        } else if path.ends_with("new/benchmark.json") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_measured(benchmark_json: &Path) -> Result<Measured> {
    let id: SavedId = serde_json::from_str(&fs::read_to_string(benchmark_json)?)?;
    let est_path = benchmark_json.with_file_name("estimates.json");
    let est: SavedEstimates = serde_json::from_str(&fs::read_to_string(&est_path)?)?;
    let (kind, work) =
        throughput(id.throughput.as_ref()).with_context(|| format!("bench {} records no throughput", id.group_id))?;
    let ns = est.median.point_estimate;
    // A value is work per nanosecond; counting a training step's tokens in units of 1e-9 makes it tokens/s (and
    // a peer's value, the same work over the peer's time, too).
    let work = if id.group_id == TRAIN_STEP { work * 1e9 } else { work };
    let (metric, unit) = metric_of(&id.group_id, &kind);
    let name = match &id.function_id {
        Some(f) => format!("{}/{f}", id.group_id),
        None => id.group_id.clone(),
    };
    let row = Row {
        name,
        shape: id.value_str.unwrap_or_default(),
        metric: metric.into(),
        value: work / ns,
        unit: unit.into(),
    };
    Ok(Measured { row, work, seconds: ns * 1e-9 })
}

/// Criterion's serialized `Throughput` (e.g. `{"Elements": 2147483648}`) as (kind, amount).
fn throughput(v: Option<&serde_json::Value>) -> Option<(String, f64)> {
    let obj = v?.as_object()?;
    let (kind, amount) = obj.iter().next()?;
    let amount = match amount {
        serde_json::Value::Number(n) => n.as_f64()?,
        // `ElementsAndBytes { elements, bytes }` counts elements, as criterion does.
        serde_json::Value::Object(o) => o.get("elements")?.as_f64()?,
        _ => return None,
    };
    Some((kind.clone(), amount))
}

/// Seconds as a short human-readable duration.
fn fmt_time(s: f64) -> String {
    match s {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s if s >= 1e-6 => format!("{:.1} µs", s * 1e6),
        s => format!("{:.0} ns", s * 1e9),
    }
}

/// The table: one line per bench, with the peer's library, its value and rankfold/peer beside the rows that
/// have one.
fn table(measured: &[Measured], peers: Option<&peers::Report>) -> String {
    let mut header = vec!["name", "shape", "metric", "value", "unit", "median time"];
    if peers.is_some() {
        header.extend(["peer", "peer value", "ratio"]);
    }
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for m in measured {
        let r = &m.row;
        let mut cells = vec![
            r.name.clone(),
            r.shape.clone(),
            r.metric.clone(),
            format!("{:.2}", r.value),
            r.unit.clone(),
            fmt_time(m.seconds),
        ];
        if let Some(p) = peers {
            match p.row_for(m) {
                Some((library, pr)) => cells.extend([
                    library.label().to_string(),
                    format!("{:.2}", pr.value),
                    format!("{:.2}x", r.value / pr.value),
                ]),
                None => cells.extend(["-", "-", "-"].map(String::from)),
            }
        }
        lines.push(cells);
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    // Column 6, when there is one, names the peer's library; the others from 5 on are numbers.
    let numeric = |c: usize| c == 3 || c == 5 || c >= 7;
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(
                |(c, s)| if numeric(c) { format!("{s:>w$}", w = widths[c]) } else { format!("{s:<w$}", w = widths[c]) },
            )
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
        if i == 0 {
            out += &widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  ");
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_selects_files() {
        let names = |f: Option<&str>| selected_files(f).iter().map(|b| b.file).collect::<Vec<_>>();
        let all: Vec<&str> = BENCH_FILES.iter().map(|b| b.file).collect();
        assert_eq!(names(None), all);
        assert_eq!(names(Some("matmul")), ["matmul"]);
        assert_eq!(names(Some("rms")), ["ops"]);
        assert_eq!(names(Some("adamw/f32")), ["optim"]);
        assert_eq!(names(Some("softmax")), ["ops", "softmax"]);
        assert_eq!(names(Some("rms_norm/f32")), ["ops"]);
        assert_eq!(names(Some("4096x1024")), all);
    }

    #[test]
    fn reads_criterion_throughput() {
        let v: serde_json::Value = serde_json::from_str(r#"{"Elements": 2147483648}"#).unwrap();
        assert_eq!(throughput(Some(&v)), Some(("Elements".into(), 2147483648.0)));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"ElementsAndBytes": {"elements": 3, "bytes": 12}}"#).unwrap();
        assert_eq!(throughput(Some(&v)), Some(("ElementsAndBytes".into(), 3.0)));
        assert_eq!(throughput(None), None);
    }

    #[test]
    fn reads_a_saved_result() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let new = dir.join("matmul/f32/8x8x8/new");
        fs::create_dir_all(&new).unwrap();
        let id = r#"{"group_id":"matmul","function_id":"f32","value_str":"8x8x8","throughput":{"Elements":1024},
            "full_id":"matmul/f32/8x8x8","directory_name":"matmul/f32/8x8x8","title":"matmul/f32/8x8x8"}"#;
        fs::write(new.join("benchmark.json"), id).unwrap();
        let est = r#"{"mean":{"point_estimate":600.0},"median":{"point_estimate":512.0}}"#;
        fs::write(new.join("estimates.json"), est).unwrap();
        let files = selected_files(Some("matmul"));
        let got = collect(&dir, &files, SystemTime::UNIX_EPOCH).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), 1);
        let r = &got[0].row;
        assert_eq!(
            (r.name.as_str(), r.shape.as_str(), r.unit.as_str(), r.value),
            ("matmul/f32", "8x8x8", "GFLOP/s", 2.0)
        );
        assert!(table(&got, None).contains("512 ns"));
    }

    #[test]
    fn train_step_reads_as_tokens_per_second_with_peak_memory() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-step-{}", std::process::id()));
        let new = dir.join("train_step/lora_f32/8x128/new");
        fs::create_dir_all(&new).unwrap();
        let id = r#"{"group_id":"train_step","function_id":"lora_f32","value_str":"8x128",
            "throughput":{"Elements":1024}}"#;
        fs::write(new.join("benchmark.json"), id).unwrap();
        // 0.4 s per step of 1024 tokens is 2560 tokens/s.
        fs::write(new.join("estimates.json"), r#"{"median":{"point_estimate":4e8}}"#).unwrap();
        let got = collect(&dir, &selected_files(Some("train_step")), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(got.len(), 1);
        let r = &got[0].row;
        assert_eq!((r.name.as_str(), r.unit.as_str()), ("train_step/lora_f32", "tokens/s"));
        assert!((r.value - 2560.0).abs() < 1e-9, "{}", r.value);
        let start = SystemTime::now() - std::time::Duration::from_secs(60);
        assert!(peak_memory_row(&dir, &got, start).unwrap().is_none(), "no memory file yet");
        fs::write(dir.join("train_step/peak_memory.json"), r#"{"peak_bytes": 380500000, "live_bytes": 1}"#).unwrap();
        let m = peak_memory_row(&dir, &got, start).unwrap().expect("a fresh memory file");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!((m.name.as_str(), m.shape.as_str(), m.value, m.unit.as_str()), ("train_step/peak_memory", "8x128", 380.5, "MB"));
        // A peer that takes twice as long reads as half the tokens/s.
        let report = peers::Report::from_json(
            r#"{"numpy": "2", "blas": "b", "results": [
                {"name": "train_step/lora_f32", "shape": "8x128", "seconds": 0.8, "library": "peft"}]}"#,
        );
        assert!((report.row_for(&got[0]).unwrap().1.value - 1280.0).abs() < 1e-9);
    }

    #[test]
    fn table_names_each_rows_peer() {
        let measured = |name: &str, shape: &str, value: f64| Measured {
            row: Row { name: name.into(), shape: shape.into(), metric: "m".into(), value, unit: "u".into() },
            work: 6e9,
            seconds: 1.0,
        };
        let got = [
            measured("matmul/f32", "2x2x2", 6.0),
            measured("nf4/quantize", "bf16/64", 6.0),
            measured("nf4/memcpy", "f32/64", 6.0),
        ];
        let report = peers::Report::from_json(
            r#"{"numpy": "2", "blas": "b", "bnb": "bitsandbytes 9", "results": [
                {"name": "matmul/f32", "shape": "2x2x2", "seconds": 3.0, "library": "numpy"},
                {"name": "nf4/quantize", "shape": "bf16/64", "seconds": 4.0, "library": "bnb"}]}"#,
        );
        let text = table(&got, Some(&report));
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0][lines[0].len() - 4..], ["peer", "peer", "value", "ratio"][..], "{text}");
        // 6e9 work per call over 3 s is 2 G/s for numpy (ratio 3) and over 4 s is 1.5 G/s for bitsandbytes (4).
        assert_eq!(lines[2][lines[2].len() - 3..], ["numpy", "2.00", "3.00x"][..], "{text}");
        assert_eq!(lines[3][lines[3].len() - 3..], ["bnb", "1.50", "4.00x"][..], "{text}");
        assert_eq!(lines[4][lines[4].len() - 3..], ["-", "-", "-"][..], "{text}");
    }
}
