//! The source tree's layers import only downward (docs/architecture.md,
//! "Layers"). This test reads every `crate::` path in `src/` and fails when
//! a module names one of a layer above its own, or a module that belongs to
//! no layer. Unit-test code (`tests.rs` files and `#[cfg(test)]` blocks at
//! the end of a file) may build whole plans and is not held to the rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top: each layer may import the ones before it.
const LAYERS: &[&str] = &[
    "log",
    "config",
    "accesslog",
    "net",
    "tls",
    "http",
    "route",
    "policy",
    "integration",
    "openapi",
    "plan",
    "observe",
    "gateway",
    "runtime",
    "portal",
    "admin",
    "cli",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The layer a file belongs to: its first folder under `src/`, or its
/// name for a file directly in `src/` (`lib.rs` and `main.rs` are the top).
fn layer_of(rel: &Path) -> String {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next().unwrap().to_string();
    match first.strip_suffix(".rs") {
        Some(file) => file.to_string(),
        None => first,
    }
}

/// Every module named as `crate::NAME` in the code of `text`, comments and
/// trailing test blocks left out.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::log!` and `crate::log_request!` are the logging
            // macros of the `log` layer.
            if name == "log_request" {
                out.insert("log".to_string());
            } else if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
        if let Some(i) = code.find("log!(") {
            if i == 0 || !code.as_bytes()[i - 1].is_ascii_alphanumeric() {
                out.insert("log".to_string());
            }
        }
    }
    out
}

#[test]
fn layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let layer = layer_of(rel);
        let top = layer == "lib" || layer == "main";
        let own = rank(&layer);
        if own.is_none() && !top {
            problems.push(format!(
                "{}: module {layer:?} is in no layer (add it to LAYERS and docs/architecture.md)",
                rel.display()
            ));
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for name in imports(&text) {
            if name == layer {
                continue;
            }
            match (rank(&name), own) {
                (None, _) => problems.push(format!(
                    "{}: imports crate::{name}, which is in no layer",
                    rel.display()
                )),
                (Some(theirs), Some(mine)) if theirs > mine => problems.push(format!(
                    "{}: layer {layer:?} imports crate::{name}, a layer above it",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} upward or unplaced import(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself: an upward import in a sample is found.
#[test]
fn the_reader_sees_paths_in_use_lines_and_code() {
    let text = "use crate::http::parse::RequestHead;\n\
                // crate::runtime in a comment\n\
                fn f() { crate::plan::load_str(\"\"); }\n\
                #[cfg(test)]\nmod tests { use crate::gateway; }\n";
    let got = imports(text);
    assert!(got.contains("http"));
    assert!(got.contains("plan"));
    assert!(!got.contains("runtime"));
    assert!(!got.contains("gateway"));
}
