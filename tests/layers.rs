//! The architecture's dependency directions, checked: every `crate::` path in the library's
//! code (tests left out) must point at a module its layer may use (docs/architecture.md), no
//! two files may import each other (directly or round a longer circle), and the HTTP core must
//! name no service, user or polkit.

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
        // What the coordinator and its gates share: the protocol, the socket, the gate's path.
        "admission" => &[],
        // A transient unit's gate and refusal status; a queued experiment's status text.
        "experiment" => &["admission"],
        // An experiment's limits come from its .env, parsed by the experiment module.
        "coordinator" => &["experiment", "admission"],
        "cli" => &[
            "http",
            "shutdown",
            "inference",
            "experiment",
            "coordinator",
            "admission",
        ],
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

/// The code of a file without its unit tests (everything from the `#[cfg(test)]` of its
/// `mod tests`; another `#[cfg(test)]` item, such as a test-only module, stays).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let tests = text.match_indices("#[cfg(test)]").find(|(i, m)| {
        text[i + m.len()..]
            .trim_start()
            .strip_prefix("mod tests")
            .is_some()
    });
    match tests {
        Some((i, _)) => text[..i].to_string(),
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

/// A file's code with its line comments removed: a doc link is not an import.
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a piece of code names after `at` (the text right after a `crate::`, `super::`,
/// `self::` or a child module's `name::`): `a::b::C`, and each of `{a::b, c}` (one level).
fn paths_after(rest: &str) -> Vec<Vec<String>> {
    fn one(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = s.trim_start();
        loop {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if name.is_empty() {
                break;
            }
            rest = &rest[name.len()..];
            out.push(name);
            match rest.strip_prefix("::") {
                Some(r) if !r.starts_with('{') => rest = r,
                _ => break,
            }
        }
        out
    }
    match rest.strip_prefix('{') {
        Some(group) => group[..group.find('}').unwrap_or(group.len())]
            .split(',')
            .map(one)
            .filter(|p| !p.is_empty())
            .collect(),
        None => vec![one(rest)]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect(),
    }
}

/// The module path of a file under `src/` (`a/b.rs` and `a/b/mod.rs` are `a::b`).
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The file-level import graph of `files` (path under `src/`, code without tests): an edge
/// from each file to every other file whose module (or re-exported item) it names through
/// `crate::`, `super::`, `self::` or a child module it declares.
fn import_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<Vec<String>, &str> = files
        .iter()
        .map(|(rel, _)| (module_of(rel), rel.as_str()))
        .collect();
    // `pub use child::{A, B}` in a module's own file: where A and B really are.
    let mut reexports: BTreeMap<(Vec<String>, String), Vec<String>> = BTreeMap::new();
    for (rel, code) in files {
        let module = module_of(rel);
        let code = without_comments(code);
        for (i, m) in code.match_indices("pub use ") {
            let rest = &code[i + m.len()..];
            let (child, items) = match rest.split_once("::") {
                Some(split) => split,
                None => continue,
            };
            let mut target = module.clone();
            target.push(child.to_string());
            for path in paths_after(items) {
                if let Some(item) = path.last() {
                    let mut full = target.clone();
                    full.extend(path[..path.len() - 1].iter().cloned());
                    reexports.insert((module.clone(), item.clone()), full);
                }
            }
        }
    }
    let resolve = |path: &[String]| -> Option<&str> {
        let mut path: Vec<String> = path.to_vec();
        if path.first().is_some_and(|p| p.starts_with("log_")) {
            path = vec!["log".to_string()];
        }
        let (len, file) = (1..=path.len())
            .rev()
            .find_map(|n| by_module.get(&path[..n]).map(|f| (n, *f)))?;
        if let Some(item) = path.get(len)
            && let Some(real) = reexports.get(&(path[..len].to_vec(), item.clone()))
        {
            return by_module.get(real).copied().or(Some(file));
        }
        Some(file)
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in files {
        let module = module_of(rel);
        let code = without_comments(code);
        let children: Vec<String> = code
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                l.strip_prefix("mod ")?
                    .strip_suffix(';')
                    .map(str::to_string)
            })
            .collect();
        let parent = &module[..module.len().saturating_sub(1)];
        let mut prefixes: Vec<(String, Vec<String>)> = vec![
            ("crate::".into(), vec![]),
            ("super::".into(), parent.to_vec()),
            ("self::".into(), module.clone()),
        ];
        for child in &children {
            let mut m = module.clone();
            m.push(child.clone());
            prefixes.push((format!("{child}::"), m));
        }
        let edges = graph.entry(rel.clone()).or_default();
        for (prefix, base) in &prefixes {
            for (i, _) in code.match_indices(prefix.as_str()) {
                // A whole word: `self::` is not the end of `myself::`, nor `super::` of `x_super::`.
                let before = code[..i].chars().next_back();
                if before.is_some_and(|c| is_ident(c) || c == ':') {
                    continue;
                }
                for path in paths_after(&code[i + prefix.len()..]) {
                    let mut full = base.clone();
                    full.extend(path);
                    if let Some(file) = resolve(&full)
                        && file != rel
                        && !faces(rel, file)
                    {
                        edges.insert(file.to_string());
                    }
                }
            }
        }
    }
    graph
}

/// Whether `from` is the `mod.rs` of a module that holds `to`: a module's face naming its own
/// rooms (re-exporting them, calling into them) is its structure, not an import; what counts is
/// a room that reaches back up, or rooms that reach each other.
fn faces(from: &str, to: &str) -> bool {
    from.strip_suffix("mod.rs")
        .is_some_and(|dir| !dir.is_empty() && to.starts_with(dir))
}

/// The circles of `graph`: its strongly connected parts of more than one file.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two files are in one circle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(f) = todo.pop() {
            for next in graph.get(&f).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|f| (f, reach(f))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for (f, from_f) in &reached {
        let mut circle: Vec<String> = from_f
            .iter()
            .filter(|g| reached.get(g).is_some_and(|r| r.contains(*f)))
            .cloned()
            .collect();
        if !circle.contains(f) || circle.len() < 2 {
            continue;
        }
        circle.sort();
        if !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

fn library_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .map(|f| {
            (
                f.strip_prefix(&src).unwrap().to_string_lossy().into_owned(),
                f,
            )
        })
        .filter(|(rel, _)| !rel.starts_with("bin/") && rel != "lib.rs")
        .map(|(rel, f)| (rel, code(f)))
        .collect()
}

#[test]
fn no_two_files_import_each_other() {
    let graph = import_graph(&library_files());
    // The check sees the code: the edges that are there.
    assert!(
        graph["coordinator/gates.rs"].contains("admission/protocol.rs"),
        "{:?}",
        graph["coordinator/gates.rs"]
    );
    assert!(graph["experiment/manager.rs"].contains("experiment/config.rs"));
    assert!(graph["systemd/fake.rs"].contains("systemd/seam.rs"));
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "files that import each other (each reaches the other):\n{}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_graph_finds_circles_through_every_form() {
    let files = [
        (
            "a/mod.rs",
            "pub mod b;\npub mod c;\npub use b::Thing;\npub fn top() { c::f(); }",
        ),
        ("a/b.rs", "use super::c::f;\npub struct Thing;"),
        ("a/x.rs", "fn y() { super::top(); }"),
        (
            "a/c.rs",
            "// a doc link is no import: [`super::top`]\npub fn f() {}",
        ),
        ("d.rs", "use crate::{a::Thing, e};"),
        ("e.rs", "fn g() { crate::d::h(); }"),
    ]
    .map(|(f, c)| (f.to_string(), c.to_string()));
    let graph = import_graph(&files);
    // A module's face naming its rooms is no import.
    assert!(graph["a/mod.rs"].is_empty(), "{:?}", graph["a/mod.rs"]);
    assert_eq!(graph["a/b.rs"], ["a/c.rs"].map(String::from).into());
    assert!(graph["a/c.rs"].is_empty(), "{:?}", graph["a/c.rs"]);
    // A room that reaches back up to its module's own items.
    assert_eq!(graph["a/x.rs"], ["a/mod.rs"].map(String::from).into());
    // The re-exported Thing is b's: d names b, not a's own file.
    assert_eq!(graph["d.rs"], ["a/b.rs", "e.rs"].map(String::from).into());
    assert_eq!(
        circles(&graph),
        [vec!["d.rs".to_string(), "e.rs".to_string()]]
    );
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
