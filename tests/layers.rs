//! The architecture's dependency directions, checked: every `crate::` path in the library's
//! code (tests left out) must point at a module its layer may use (docs/architecture.md), and
//! the HTTP core must name no service, user or polkit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The small shared modules at the bottom, beside `systemd`: they use only each other.
const BOTTOM: &[&str] = &[
    "systemd",
    "log",
    "time",
    "statefile",
    "envfile",
    "exec",
    "signals",
    "metrics",
];

/// What each top-level module may use besides itself. Bottom: the bottom; `http`: the bottom;
/// the services and the coordinator: the bottom, `http` where they serve it, and the few
/// sideways uses named here; `cli` (what the binaries share) is on top with the binaries.
fn allowed(module: &str) -> Option<BTreeSet<&'static str>> {
    let mut set: BTreeSet<&'static str> = BOTTOM.iter().copied().collect();
    let extra: &[&'static str] = match module {
        m if BOTTOM.contains(&m) => &[],
        "http" => &[],
        // The idle power-off is scheduled by the shutdown module, the owner of scheduling.
        "inference" => &["http", "shutdown"],
        // GET /shutdown/status lists running experiments by their unit names.
        "shutdown" => &["http", "experiment"],
        // The gate's process name and the queue's status text are the coordinator's protocol.
        "experiment" => &["coordinator"],
        // An experiment's limits come from its .env, parsed by the experiment module.
        "coordinator" => &["experiment"],
        "cli" => &["http", "shutdown", "inference", "experiment", "coordinator"],
        // Shell completion scripts, generated from brainctl's command line.
        "completions" => &[],
        _ => return None,
    };
    set.extend(extra);
    Some(set)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests (everything from the first `#[cfg(test)]`).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The top-level modules `code` names through `crate::` (`crate::a::b`, `crate::{a, b::c}`); the
/// `log_*` macros belong to `log`.
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<String> = match rest.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .map(|item| ident(item.trim()))
                .collect(),
            None => vec![ident(rest)],
        };
        for name in names.into_iter().filter(|n| !n.is_empty()) {
            out.insert(if name.starts_with("log_") {
                "log".to_string()
            } else {
                name
            });
        }
    }
    out
}

#[test]
fn modules_use_only_the_layers_they_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        if first == "bin" || first == "lib.rs" {
            continue; // the binaries are on top; lib.rs only declares the modules
        }
        let module = first.trim_end_matches(".rs").to_string();
        let Some(may) = allowed(&module) else {
            wrong.push(format!(
                "{}: module {module} has no layer: add it to tests/layers.rs and docs/architecture.md",
                rel.display()
            ));
            continue;
        };
        for used in used_modules(&code(file)) {
            if used != module && !may.contains(used.as_str()) {
                wrong.push(format!("{} ({module}) uses crate::{used}", rel.display()));
            }
            uses.entry(module.clone()).or_default().insert(used);
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layers:\n{}",
        wrong.join("\n")
    );
    // The check sees the code: the edges docs/architecture.md names are there.
    assert!(uses["inference"].contains("shutdown"), "{uses:?}");
    assert!(uses["http"].contains("systemd"), "{uses:?}");
}

#[test]
fn the_http_core_names_no_service_user_or_polkit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(!files.is_empty());
    for file in files {
        let code = code(&file);
        for word in [
            "polkit",
            "abc",
            "minutes",
            "shutdown-service",
            "inference",
            "experiment",
            "50-homelab",
        ] {
            assert!(
                !code.contains(word),
                "{} names {word:?}: the service gives its own text",
                file.display()
            );
        }
    }
}

#[test]
fn the_parser_finds_every_form() {
    let found = used_modules(
        "use crate::http::{self, ApiError};\nuse crate::{log_info, systemd::dbus};\nlet t = crate::time::now();",
    );
    let found: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(found, ["http", "log", "systemd", "time"]);
    assert!(!allowed("http").unwrap().contains("shutdown"));
    assert!(allowed("nonesuch").is_none());
}
