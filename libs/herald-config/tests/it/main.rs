//! The layers of `herald_config::load`, from files on disk and an environment given in code.

use std::collections::HashMap;
use std::path::Path;

use herald_config::{Error, Sources, Validate};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct Settings {
    auth: Auth,
    server: Server,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct Auth {
    principals: Vec<Principal>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
struct Principal {
    identity: String,
    roles: Vec<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct Server {
    name: String,
    port: u16,
}

impl Validate for Settings {
    fn validate(&self, _problems: &mut Vec<String>) {}
}

const BASE: &str = r#"
[auth]
principals = [
  { identity = "spiffe://herald.local/service/orders", roles = ["submit"] },
  { identity = "spiffe://herald.local/admin/ops", roles = ["admin"] },
]

[server]
name = "base"
port = 1
"#;

/// A config directory holding `base.toml` and `production.toml`, and an extra directory
/// holding `files`.
struct Layout {
    config: tempfile::TempDir,
    extra: tempfile::TempDir,
}

impl Layout {
    fn new(production: &str, files: &[(&str, &str)]) -> Self {
        let layout = Self {
            config: tempfile::tempdir().unwrap(),
            extra: tempfile::tempdir().unwrap(),
        };
        write(&layout.config.path().join("base.toml"), BASE);
        write(&layout.config.path().join("production.toml"), production);
        for (name, text) in files {
            write(&layout.extra.path().join(name), text);
        }
        layout
    }

    fn load(&self, env: &[(&str, &str)]) -> herald_config::Result<Settings> {
        herald_config::load(&Sources {
            config_dir: Some(self.config.path().to_owned()),
            environment: Some("production".into()),
            extra_dir: Some(self.extra.path().to_owned()),
            env_override: Some(
                env.iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect::<HashMap<_, _>>(),
            ),
        })
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn principal(identity: &str, roles: &[&str]) -> Principal {
    Principal {
        identity: identity.into(),
        roles: roles.iter().map(|&role| role.to_owned()).collect(),
    }
}

#[test]
fn a_list_of_tables_from_the_extra_directory_replaces_the_one_in_base_toml() {
    let layout = Layout::new(
        "[server]\nname = \"production\"\n",
        &[(
            "principals.toml",
            r#"
[[auth.principals]]
identity = "spiffe://example.com/service/shop"
roles = ["submit", "inbox"]
"#,
        )],
    );
    let settings = layout.load(&[]).unwrap();
    // The whole list is replaced: base.toml's second principal is not kept.
    assert_eq!(
        settings.auth.principals,
        [principal(
            "spiffe://example.com/service/shop",
            &["submit", "inbox"]
        )]
    );
    assert_eq!(
        settings.server.name, "production",
        "the profile still applies"
    );
    assert_eq!(settings.server.port, 1, "base.toml still applies");
}

#[test]
fn the_extra_files_layer_over_the_profile_in_name_order_and_the_environment_over_them() {
    let layout = Layout::new(
        "[server]\nname = \"production\"\nport = 2\n",
        &[
            ("10-server.toml", "[server]\nname = \"ten\"\nport = 10\n"),
            ("20-server.toml", "[server]\nport = 20\n"),
            // Neither a TOML file nor a visible one: ignored.
            ("notes.txt", "[server]\nport = 30\n"),
            ("..data/principals.toml", "[server]\nport = 40\n"),
            (".hidden.toml", "[server]\nport = 50\n"),
        ],
    );
    let settings = layout.load(&[]).unwrap();
    assert_eq!(
        settings.server,
        Server {
            name: "ten".into(),
            port: 20
        }
    );
    let settings = layout.load(&[("HERALD__SERVER__PORT", "99")]).unwrap();
    assert_eq!(settings.server.port, 99, "the environment wins");
    assert_eq!(settings.server.name, "ten");
}

#[test]
fn a_broken_file_in_the_extra_directory_is_named_in_the_error() {
    let layout = Layout::new(
        "",
        &[("principals.toml", "[[auth.principals]\nidentity = ")],
    );
    let error = layout.load(&[]).unwrap_err();
    assert!(matches!(error, Error::ExtraFile { .. }), "{error:?}");
    let path = layout.extra.path().join("principals.toml");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn a_missing_extra_directory_is_an_error_naming_it() {
    let layout = Layout::new("", &[]);
    let missing = layout.extra.path().join("absent");
    let error = herald_config::load::<Settings>(&Sources {
        extra_dir: Some(missing.clone()),
        env_override: Some(HashMap::new()),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(matches!(error, Error::ExtraDir { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&missing.display().to_string())
            && message.contains("HERALD_CONFIG_EXTRA_DIR"),
        "{message}"
    );
}
