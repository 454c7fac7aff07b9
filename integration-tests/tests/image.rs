//! The container image against the workspace, both ways, without a Docker engine: every binary
//! target (`cargo metadata`) is built and copied by the root `Dockerfile` or named dev-only
//! below, the Dockerfile builds and copies nothing else, and `.dockerignore` keeps the
//! development certificates and local build output out of the build context.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Binaries that never ship in the image: the development certificate and key generator, and
/// the bench tools (the SMTP/HTTP sink and the naive per-item pipeline).
const DEV_ONLY: [&str; 3] = ["herald-certs-dev", "herald-sink", "herald-naive"];

/// Where the runtime stage puts the binaries.
const BIN_DIR: &str = "/usr/local/bin/";

/// Paths `.dockerignore` must leave out of the build context.
const IGNORED: [&str; 5] = ["certs-dev/generated", "target", "target*", ".venv", ".dev"];

/// What the rules read from the Dockerfile and `.dockerignore`.
#[derive(Debug, Clone, Default)]
struct Image {
    /// Binaries named by `--bin` in the build stage.
    built: BTreeSet<String>,
    /// Binaries copied from the build stage into `BIN_DIR`, by their destination name.
    copied: BTreeSet<String>,
    /// `COPY --from=builder` lines whose source and destination names differ, or whose
    /// destination is not in `BIN_DIR`.
    odd_copies: Vec<String>,
    /// Sources of the last stage's `COPY` lines that read from the build context.
    context_copies: Vec<String>,
    /// The last stage's `USER`, if it sets one.
    user: Option<String>,
    /// The lines of `.dockerignore` that are not comments.
    ignored: BTreeSet<String>,
}

fn parse_image(dockerfile: &str, dockerignore: &str) -> Image {
    let mut image = Image::default();
    // Backslash continuations make one instruction of several lines.
    let joined = dockerfile.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words
            .first()
            .map(|word| word.to_ascii_uppercase())
            .as_deref()
        {
            // What the context copies and the user are counted in the last stage only: the
            // build stage copies the whole (ignore-filtered) context.
            Some("FROM") => {
                image.context_copies.clear();
                image.user = None;
            }
            Some("RUN") => {
                for pair in words.windows(2) {
                    if pair[0] == "--bin" {
                        image.built.insert(pair[1].to_owned());
                    }
                }
            }
            Some("COPY") if words.get(1).is_some_and(|word| word.starts_with("--from=")) => {
                let (source, destination) = (words[words.len() - 2], words[words.len() - 1]);
                let name = destination.strip_prefix(BIN_DIR);
                let source_name = source.rsplit('/').next();
                match name {
                    Some(name) if source_name == Some(name) => {
                        image.copied.insert(name.to_owned());
                    }
                    _ => image.odd_copies.push(line.to_owned()),
                }
            }
            Some("COPY") => {
                let sources = &words[1..words.len().saturating_sub(1)];
                image.context_copies.extend(
                    sources
                        .iter()
                        .filter(|word| !word.starts_with("--"))
                        .map(|word| (*word).to_owned()),
                );
            }
            Some("USER") => image.user = words.get(1).map(|word| (*word).to_owned()),
            _ => {}
        }
    }
    image.ignored = dockerignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    image
}

/// Every broken rule, one sentence each: `binaries` are the workspace's binary targets.
fn violations(image: &Image, binaries: &BTreeSet<String>) -> Vec<String> {
    let dev_only: BTreeSet<String> = DEV_ONLY.iter().map(|name| (*name).to_owned()).collect();
    let mut broken = Vec::new();
    for name in binaries {
        if !image.copied.contains(name) && !dev_only.contains(name) {
            broken.push(format!(
                "the binary {name} is neither copied into the image nor listed as dev-only"
            ));
        }
    }
    for name in &image.copied {
        if !binaries.contains(name) {
            broken.push(format!(
                "the Dockerfile copies {name}, which is no binary target of the workspace"
            ));
        }
        if dev_only.contains(name) {
            broken.push(format!("the Dockerfile copies the dev-only binary {name}"));
        }
        if !image.built.contains(name) {
            broken.push(format!("the Dockerfile copies {name} without building it"));
        }
    }
    for name in image.built.difference(&image.copied) {
        broken.push(format!("the Dockerfile builds {name} without copying it"));
    }
    for name in dev_only.difference(binaries) {
        broken.push(format!(
            "the dev-only binary {name} is no binary target of the workspace"
        ));
    }
    for line in &image.odd_copies {
        broken.push(format!(
            "the Dockerfile copies a binary under another name or outside {BIN_DIR}: {line}"
        ));
    }
    for source in &image.context_copies {
        if source.starts_with("certs-dev") || source == "." || source == "./" {
            broken.push(format!(
                "the runtime image copies {source} from the context"
            ));
        }
    }
    match image.user.as_deref() {
        Some(user)
            if user
                .split(':')
                .all(|id| id.parse::<u32>().is_ok_and(|id| id > 0)) => {}
        user => broken.push(format!(
            "the image's last USER is {user:?}, not a numeric non-root uid:gid"
        )),
    }
    for path in IGNORED {
        if !image.ignored.contains(path) {
            broken.push(format!(".dockerignore does not leave out {path}"));
        }
    }
    broken
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The names of the workspace's binary targets.
fn binary_targets(root: &Path) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--no-deps"])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    packages
        .iter()
        .flat_map(|package| package["targets"].as_array().expect("targets"))
        .filter(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .map(|target| target["name"].as_str().expect("a target name").to_owned())
        .collect()
}

fn read_image(root: &Path) -> Image {
    let read = |name: &str| {
        std::fs::read_to_string(root.join(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
    };
    parse_image(&read("Dockerfile"), &read(".dockerignore"))
}

#[test]
fn the_image_ships_every_binary_target_that_is_not_dev_only_and_nothing_else() {
    let root = root();
    let binaries = binary_targets(&root);
    let image = read_image(&root);
    assert!(
        binaries.contains("herald-api-server") && image.copied.contains("herald-api-server"),
        "the workspace or the Dockerfile was not read: {binaries:?} {image:?}"
    );
    let broken = violations(&image, &binaries);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn each_image_rule_reports_what_breaks_it() {
    let root = root();
    let mut binaries = binary_targets(&root);
    let mut image = read_image(&root);
    // A new binary target nobody shipped, a copied binary whose target was removed, and a
    // dev-only binary that sneaked into the image.
    binaries.insert("herald-new".into());
    binaries.remove("herald-tracker");
    image.copied.insert("herald-sink".into());
    image.built.insert("herald-sink".into());
    image.built.remove("herald-relay");
    image.built.insert("herald-extra".into());
    image
        .context_copies
        .push("certs-dev/generated/ca.pem".into());
    image.user = Some("0".into());
    image.ignored.remove("certs-dev/generated");

    assert_eq!(
        violations(&image, &binaries),
        [
            "the binary herald-new is neither copied into the image nor listed as dev-only",
            "the Dockerfile copies herald-relay without building it",
            "the Dockerfile copies the dev-only binary herald-sink",
            "the Dockerfile copies herald-tracker, which is no binary target of the workspace",
            "the Dockerfile builds herald-extra without copying it",
            "the runtime image copies certs-dev/generated/ca.pem from the context",
            "the image's last USER is Some(\"0\"), not a numeric non-root uid:gid",
            ".dockerignore does not leave out certs-dev/generated",
        ]
    );
}

#[test]
fn a_dockerfile_is_read_across_continuation_lines() {
    let image = parse_image(
        "FROM rust AS builder\nCOPY . .\nUSER 0\nRUN cargo build \\\n  --bin a \\\n  --bin b\nFROM scratch\n\
         COPY --from=builder /out/a /usr/local/bin/a\nCOPY --from=builder /out/b /opt/b\n\
         COPY config/base.toml /etc/herald/config/base.toml\nUSER 65532:65532\n",
        "# comment\ntarget\n",
    );
    assert_eq!(image.built, BTreeSet::from(["a".into(), "b".into()]));
    assert_eq!(image.copied, BTreeSet::from(["a".into()]));
    assert_eq!(
        image.odd_copies,
        ["COPY --from=builder /out/b /opt/b".to_owned()]
    );
    assert_eq!(image.context_copies, ["config/base.toml".to_owned()]);
    assert_eq!(image.user.as_deref(), Some("65532:65532"));
    assert_eq!(image.ignored, BTreeSet::from(["target".into()]));
}
