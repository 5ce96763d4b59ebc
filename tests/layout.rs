//! The tree shows the line: data flows one way, and so do imports. A module may use the shared
//! types at the bottom and anything in a layer below its own, never a layer above.

use std::path::{Path, PathBuf};

mod common;

/// Layers, bottom first: shared types, the model file, sources → stages → sinks, the line that
/// wires them, and the commands that run without a line.
const LAYERS: &[&[&str]] = &[
    &[
        "clock", "config", "events", "files", "frame", "gpio", "priority", "tally",
    ],
    &["model"],
    &["sources"],
    &["stages"],
    &["sinks"],
    &["line"],
    &["offline"],
];

fn layer(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::NAME` paths in the production part of a file (unit tests may reach anywhere).
fn crate_paths(text: &str) -> Vec<String> {
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn nothing_imports_upwards() {
    let src = common::root().join("runtime/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut seen = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = first.trim_end_matches(".rs");
        // Unit tests in their own file (`mod tests;`) may reach anywhere, as inline ones may.
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let Some(own) = layer(top) else {
            // lib.rs, main.rs and the test doubles (`sim`) sit above every layer.
            continue;
        };
        for target in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            seen += 1;
            match layer(&target) {
                Some(l) if l > own => {
                    upward.push(format!("{} uses crate::{target}", rel.display()))
                }
                Some(_) => {}
                None if target == "sim" => {
                    upward.push(format!("{} uses the test doubles", rel.display()))
                }
                None => {}
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} crate paths found: is the parser still right?"
    );
    assert!(
        upward.is_empty(),
        "imports against the flow:\n{}",
        upward.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = common::root().join("runtime/src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let unplaced: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .filter(|m| layer(m).is_none() && *m != "sim")
        .collect();
    assert!(unplaced.is_empty(), "modules outside LAYERS: {unplaced:?}");
}
