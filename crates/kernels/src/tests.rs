//! Crate-level tests: the typed kernel ids and the `.entry` points of the committed PTX agree both ways.

use std::collections::BTreeSet;

use crate::{KernelId, PtxModule};

/// The names of every `.entry` in a PTX text, read independently of any parser in the crate.
fn entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == ".entry")?;
            let name = words.get(at + 1)?;
            Some(name.split('(').next().unwrap_or(name).to_string())
        })
        .collect()
}

#[test]
fn every_ptx_entry_has_a_kernel_id_in_its_module() {
    let mut missing = Vec::new();
    for &module in PtxModule::ALL {
        let found = entries(module.ptx());
        assert!(
            !found.is_empty(),
            "ptx/{}.ptx declares no .entry",
            module.stem()
        );
        for name in found {
            if !KernelId::ALL
                .iter()
                .any(|k| k.name() == name && k.module() == module)
            {
                missing.push(format!(
                    "ptx/{}.ptx: .entry {name} has no KernelId",
                    module.stem()
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_kernel_id_names_an_entry_of_its_module() {
    let mut missing = Vec::new();
    for &kernel in KernelId::ALL {
        let module = kernel.module();
        if !entries(module.ptx()).iter().any(|e| e == kernel.name()) {
            missing.push(format!(
                "KernelId::{kernel:?}: no .entry {} in ptx/{}.ptx",
                kernel.name(),
                module.stem()
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn ids_and_modules_are_listed_once_and_in_index_order() {
    for (i, &module) in PtxModule::ALL.iter().enumerate() {
        assert_eq!(
            module.index(),
            i,
            "PtxModule::ALL is out of index order at {module:?}"
        );
    }
    let names: BTreeSet<&str> = KernelId::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(
        names.len(),
        KernelId::ALL.len(),
        "two KernelIds share an entry name"
    );
    let stems: BTreeSet<&str> = PtxModule::ALL.iter().map(|m| m.stem()).collect();
    assert_eq!(
        stems.len(),
        PtxModule::ALL.len(),
        "two PtxModules share a stem"
    );
}

#[test]
fn entries_reader_finds_only_entries() {
    let ptx =
        ".visible .func helper(\n)\n.visible .entry first(\n\t.param .u64 p\n)\n.entry second()\n";
    assert_eq!(entries(ptx), ["first", "second"]);
}

#[test]
fn every_kernel_has_a_readable_parameter_list() {
    // CudaRuntime checks each launch's argument sizes against these lists; a `None` would skip that check.
    let unreadable: Vec<&str> = KernelId::ALL
        .iter()
        .filter(|k| crate::cuda::entry_param_sizes(k.module().ptx(), k.name()).is_none())
        .map(|k| k.name())
        .collect();
    assert!(
        unreadable.is_empty(),
        "parameter lists not understood: {unreadable:?}"
    );
}
