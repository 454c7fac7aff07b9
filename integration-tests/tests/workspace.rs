//! The dependency rules ARCHITECTURE.md states, checked on the workspace as it is: the
//! dependencies each crate declares (`cargo metadata`) and the crates a build compiles
//! (`cargo tree`, which resolves features as a build does).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Crates allowed to depend on tonic directly; everyone else goes through `herald-proto`'s
/// generated code and `herald-tls`.
const TONIC_USERS: [&str; 6] = [
    "herald-proto",
    "herald-tls",
    "herald-api-server",
    "herald-cli",
    "herald-integration-tests",
    "herald-test-support",
];

/// Channel providers that only talk to a provider's network API: they get everything from
/// `herald_worker::DeliveryContext` and never reach the database (their tests may).
const WITHOUT_DATABASE: [&str; 4] = ["herald-sms", "herald-push", "herald-webhook", "herald-smtp"];

/// Crates that must never be compiled: one rustls crypto provider (aws-lc-rs), no OpenSSL.
const FORBIDDEN: [&str; 4] = ["ring", "openssl", "openssl-sys", "native-tls"];

/// One declared dependency of a workspace crate on another workspace crate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    /// `None` for a normal dependency, else `dev` or `build`.
    kind: Option<String>,
}

/// What the rules read from the workspace.
#[derive(Debug, Clone)]
struct Workspace {
    /// Each workspace crate's name and its folder relative to the root (`libs/herald-db`).
    crates: Vec<(String, String)>,
    /// Declared dependencies between workspace crates.
    edges: Vec<Edge>,
    /// Workspace crates that declare tonic, with the dependency kind.
    tonic: Vec<(String, Option<String>)>,
    /// Every crate a build of the workspace compiles (normal and build dependencies).
    compiled: BTreeSet<String>,
}

/// Every broken rule, one sentence each.
fn violations(workspace: &Workspace) -> Vec<String> {
    let folder = |name: &str| {
        workspace
            .crates
            .iter()
            .find(|(crate_name, _)| crate_name == name)
            .map(|(_, folder)| folder.as_str())
            .unwrap_or_default()
    };
    let mut broken = Vec::new();
    for edge in &workspace.edges {
        let built = edge.kind.as_deref() != Some("dev");
        let (from, to) = (folder(&edge.from), folder(&edge.to));
        if built && from.starts_with("libs/") && to.starts_with("services/") {
            broken.push(format!(
                "the library {} depends on the service {}",
                edge.from, edge.to
            ));
        }
        if built && from.starts_with("services/") && to.starts_with("services/") {
            broken.push(format!(
                "the service {} depends on the service {}",
                edge.from, edge.to
            ));
        }
        if edge.from == "herald-domain" {
            broken.push(format!(
                "herald-domain depends on the workspace crate {}",
                edge.to
            ));
        }
        if built && edge.to == "herald-db" && WITHOUT_DATABASE.contains(&edge.from.as_str()) {
            broken.push(format!(
                "the channel provider {} depends on herald-db",
                edge.from
            ));
        }
        if built && edge.to == "herald-test-support" {
            broken.push(format!(
                "{} depends on herald-test-support outside its dev-dependencies",
                edge.from
            ));
        }
    }
    for (name, _) in &workspace.tonic {
        if !TONIC_USERS.contains(&name.as_str()) {
            broken.push(format!(
                "{name} depends on tonic directly (allowed: {})",
                TONIC_USERS.join(", ")
            ));
        }
    }
    for name in FORBIDDEN {
        if workspace.compiled.contains(name) {
            broken.push(format!("the build compiles {name}"));
        }
    }
    broken
}

fn cargo(root: &Path, arguments: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(arguments)
        .current_dir(root)
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "cargo {}: {}",
        arguments.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo prints UTF-8")
}

fn read_workspace() -> Workspace {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let metadata: Value = serde_json::from_str(&cargo(
        &root,
        &["metadata", "--format-version", "1", "--locked", "--no-deps"],
    ))
    .expect("cargo metadata prints JSON");
    let root_prefix = format!("{}/", root.display());
    let mut crates = Vec::new();
    let mut edges = Vec::new();
    let mut tonic = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("a name").to_owned();
        let manifest = package["manifest_path"].as_str().expect("a manifest path");
        let folder = manifest
            .trim_start_matches(&root_prefix)
            .trim_end_matches("/Cargo.toml")
            .to_owned();
        for dependency in package["dependencies"].as_array().expect("dependencies") {
            let kind = dependency["kind"].as_str().map(str::to_owned);
            let to = dependency["name"].as_str().expect("a dependency name");
            if dependency["path"].is_string() {
                edges.push(Edge {
                    from: name.clone(),
                    to: to.to_owned(),
                    kind,
                });
            } else if to == "tonic" {
                tonic.push((name.clone(), kind));
            }
        }
        crates.push((name, folder));
    }
    let compiled = cargo(
        &root,
        &[
            "tree",
            "--locked",
            "--workspace",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ],
    )
    .lines()
    .filter_map(|line| line.split_whitespace().next())
    .map(str::to_owned)
    .collect();
    Workspace {
        crates,
        edges,
        tonic,
        compiled,
    }
}

#[test]
fn the_workspace_keeps_the_dependency_rules_of_architecture_md() {
    let workspace = read_workspace();
    assert!(
        workspace.crates.len() > 20 && workspace.compiled.contains("rustls"),
        "the workspace was not read: {workspace:?}"
    );
    let broken = violations(&workspace);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn each_rule_reports_the_edge_that_breaks_it() {
    let mut workspace = read_workspace();
    let edge = |from: &str, to: &str, kind: Option<&str>| Edge {
        from: from.into(),
        to: to.into(),
        kind: kind.map(str::to_owned),
    };
    workspace.edges.extend([
        edge("herald-db", "herald-relay", None),
        edge("herald-relay", "herald-api-server", Some("build")),
        edge("herald-domain", "herald-config", None),
        edge("herald-sms", "herald-db", None),
        edge("herald-worker", "herald-test-support", None),
        // A dev-dependency on a service, on the test support or (a provider's) on the
        // database is allowed.
        edge("herald-db", "herald-api-server", Some("dev")),
        edge("herald-push", "herald-db", Some("dev")),
    ]);
    workspace.tonic.push(("herald-worker".into(), None));
    workspace.compiled.insert("ring".into());

    assert_eq!(
        violations(&workspace),
        [
            "the library herald-db depends on the service herald-relay",
            "the service herald-relay depends on the service herald-api-server",
            "herald-domain depends on the workspace crate herald-config",
            "the channel provider herald-sms depends on herald-db",
            "herald-worker depends on herald-test-support outside its dev-dependencies",
            "herald-worker depends on tonic directly (allowed: herald-proto, herald-tls, \
             herald-api-server, herald-cli, herald-integration-tests, herald-test-support)",
            "the build compiles ring",
        ]
    );
}

/// The most lines a source file under `services/*/src` or `libs/*/src` may have, unless its
/// first lines say why it needs more (a comment containing "over 600 lines").
const MAX_FILE_LINES: usize = 600;

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines_without_saying_why() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let mut files = Vec::new();
    for group in ["services", "libs"] {
        for crate_dir in std::fs::read_dir(root.join(group))
            .expect("the crate folders")
            .flatten()
        {
            rust_files(&crate_dir.path().join("src"), &mut files);
        }
    }
    assert!(files.len() > 100, "read only {} source files", files.len());
    let too_long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).expect("a source file");
            let lines = text.lines().count();
            let explained = text
                .lines()
                .take(10)
                .any(|line| line.contains("over 600 lines"));
            (lines > MAX_FILE_LINES && !explained).then(|| {
                format!(
                    "{} ({lines} lines)",
                    path.strip_prefix(&root).unwrap_or(path).display()
                )
            })
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "split these files, or say at their top why they are over 600 lines: {too_long:?}"
    );
}
