//! The dependency rules of ARCHITECTURE.md ("Dependency rules"), checked: crate dependencies read
//! from `cargo metadata`, pack names and module imports read from the sources. Each rule that
//! breaks fails with the edge that broke it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_owned()
}

/// Workspace package → (dependency name, optional) of its normal (non-dev, non-build) dependencies.
fn dependencies() -> BTreeMap<String, Vec<(String, bool)>> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| (d["name"].as_str().unwrap().to_owned(), d["optional"].as_bool().unwrap_or(false)))
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

fn ours(deps: &[(String, bool)]) -> BTreeSet<&str> {
    deps.iter().map(|(n, _)| n.as_str()).filter(|n| n.starts_with("syncfleet-")).collect()
}

fn is_pack(name: &str) -> bool {
    name.starts_with("syncfleet-pack-")
}

#[test]
fn crates_depend_only_as_the_architecture_says() {
    let all = dependencies();
    let deps = |name: &str| all.get(name).unwrap_or_else(|| panic!("no workspace package {name}"));
    let only = |name: &str, allowed: &[&str]| {
        let extra: Vec<&str> = ours(deps(name)).into_iter().filter(|d| !allowed.contains(d)).collect();
        assert!(extra.is_empty(), "{name} may depend only on {allowed:?} among our crates, not on {extra:?}");
    };

    only("syncfleet-shared", &[]);
    let io = [
        "tokio",
        "reqwest",
        "redis",
        "apalis",
        "apalis-redis",
        "apalis-core",
        "axum",
        "opentelemetry-otlp",
        "tracing-subscriber",
        "metrics-exporter-prometheus",
    ];
    let shared_io: Vec<&str> =
        deps("syncfleet-shared").iter().map(|(n, _)| n.as_str()).filter(|n| io.contains(n)).collect();
    assert!(shared_io.is_empty(), "syncfleet-shared does no I/O, yet depends on {shared_io:?}");

    only("syncfleet-runtime", &["syncfleet-shared"]);
    only("syncfleet-store", &["syncfleet-shared", "syncfleet-runtime"]);
    only("syncfleet-sdk", &["syncfleet-shared", "syncfleet-runtime", "syncfleet-store"]);

    let packs: Vec<&String> = all.keys().filter(|n| is_pack(n)).collect();
    assert!(packs.len() >= 4, "the packs: {packs:?}");
    for pack in &packs {
        only(pack, &["syncfleet-sdk"]);
    }
    for (name, d) in &all {
        if name != "syncfleet-registry" && !["syncfleet-tests", "bench"].contains(&name.as_str()) {
            let named: Vec<&str> = ours(d).into_iter().filter(|n| is_pack(n)).collect();
            assert!(named.is_empty(), "only syncfleet-registry depends on packs; {name} depends on {named:?}");
        }
    }
    let registry: Vec<&str> = ours(deps("syncfleet-registry")).into_iter().filter(|n| !is_pack(n)).collect();
    assert_eq!(registry, ["syncfleet-sdk"], "syncfleet-registry: the SDK and the packs");

    let engine = ["syncfleet-shared", "syncfleet-runtime", "syncfleet-store", "syncfleet-sdk", "syncfleet-registry"];
    only("syncfleet-worker", &engine);
    only("syncfleet-producer", &engine);
    only("syncfleet-sandbox", &[]);

    // The production CLI links the worker engine and the sandbox only with its `demo` feature.
    for (dep, optional) in deps("syncfleet-cli") {
        if ["syncfleet-worker", "syncfleet-sandbox"].contains(&dep.as_str()) {
            assert!(optional, "syncfleet-cli depends on {dep} outside its demo feature");
        }
    }
}

/// The `.rs` files under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The text of a source file without its comments (doc links are not dependencies).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_engine_names_no_pack_and_only_main_names_the_registry() {
    let root = root();
    for krate in ["shared", "runtime", "store", "sdk", "worker", "producer"] {
        for file in sources(&root.join(krate).join("src")) {
            let text = code(&file);
            let is_main = file.ends_with("src/main.rs");
            for needle in ["syncfleet_pack_", "syncfleet_registry"] {
                if needle == "syncfleet_registry" && is_main {
                    continue;
                }
                assert!(!text.contains(needle), "{} names `{needle}`", file.display());
            }
        }
    }
}

/// The top-level modules of a crate each file belongs to, and the top-level modules it uses.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = sources(src);
    let module_of = |file: &Path| -> Option<String> {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
        match first.as_str() {
            "lib.rs" | "main.rs" => None,
            f => Some(f.trim_end_matches(".rs").to_owned()),
        }
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file) else { continue };
        let text = code(file);
        for used in crate_paths(&text) {
            if used != from && modules.contains(&used) {
                edges.entry(from.clone()).or_default().insert(used);
            }
        }
    }
    edges
}

/// The first segment of every `crate::…` path, including each item of `crate::{a, b::c}`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            let mut fresh = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !item.is_empty() {
                            out.push(std::mem::take(&mut item));
                        }
                        fresh = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && fresh {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        out.push(std::mem::take(&mut item));
                        fresh = false;
                    }
                }
            }
            if !item.is_empty() {
                out.push(item);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push(name);
        }
    }
    out
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_owned());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_import_cycle_in_an_engine_crate() {
    assert_eq!(crate_paths("use crate::{a::b, c, d::{e, f}};\nlet x = crate::g::h();"), ["a", "c", "d", "g"]);
    let looped = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(cycle(&looped), Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()]));

    let root = root();
    for krate in ["shared", "runtime", "store", "sdk", "worker", "producer"] {
        let edges = module_edges(&root.join(krate).join("src"));
        if let Some(c) = cycle(&edges) {
            panic!("{krate}: modules import each other in a cycle: {}", c.join(" → "));
        }
    }
}

/// Issue #17: the producer's and the CLI's SQL lives in the store (`syncfleet-store`); they call
/// store functions only.
#[test]
fn the_producer_and_the_cli_run_no_sql_of_their_own() {
    let root = root();
    let mut offenders = Vec::new();
    for krate in ["producer", "cli"] {
        for file in sources(&root.join(krate).join("src")) {
            let text = code(&file);
            for needle in ["sqlx::query", "sqlx::raw_sql"] {
                if text.contains(needle) {
                    offenders.push(format!("{} runs `{needle}`", file.strip_prefix(&root).unwrap().display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "SQL belongs in store/src/: {offenders:?}");
}

/// Crates with a RustSec advisory that the build must not link (`paste`, unmaintained:
/// RUSTSEC-2024-0436, came in through `utoipa-axum`).
const REFUSED_CRATES: &[&str] = &["paste"];

#[test]
fn the_lockfile_holds_no_crate_with_an_advisory_we_refuse() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let names: BTreeSet<&str> =
        lock.lines().filter_map(|l| l.strip_prefix("name = \"")).filter_map(|l| l.strip_suffix('"')).collect();
    assert!(names.contains("utoipa"), "the lockfile parses: {} package names", names.len());
    for refused in REFUSED_CRATES {
        assert!(
            !names.contains(refused),
            "Cargo.lock holds `{refused}`; `cargo tree -i {refused}` shows who pulls it in"
        );
    }
}
