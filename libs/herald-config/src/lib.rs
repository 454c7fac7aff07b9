#![doc = include_str!("../README.md")]

mod sections;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use sections::{
    AmqpSettings, DatabaseSettings, DatabaseTlsMode, DatabaseTlsSettings, EncryptionSettings,
    GrpcServerSettings, LogFormat, PolicySettings, RedisSettings, ServerTlsSettings,
    TelemetrySettings,
};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or a value has the wrong type.
    #[error("could not load settings: {0}")]
    Load(#[from] config::ConfigError),
    /// The extra configuration directory could not be listed.
    #[error("could not read the configuration directory {} (HERALD_CONFIG_EXTRA_DIR): {source}", .dir.display())]
    ExtraDir {
        /// The directory.
        dir: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A file of the extra configuration directory could not be read or parsed.
    #[error("could not load settings from {} (HERALD_CONFIG_EXTRA_DIR): {source}", .path.display())]
    ExtraFile {
        /// The file, as the directory names it.
        path: PathBuf,
        /// Why it could not be loaded.
        source: Box<config::ConfigError>,
    },
    /// The settings loaded but break rules; every problem is listed.
    #[error("invalid settings:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks loaded settings, pushing one readable line per problem.
pub trait Validate {
    /// Appends every problem found to `problems`.
    fn validate(&self, problems: &mut Vec<String>);
}

/// Where settings come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The directory holding `base.toml` and the `{HERALD_ENV}.toml` files.
    pub config_dir: Option<std::path::PathBuf>,
    /// The environment name selecting the optional overlay file.
    pub environment: Option<String>,
    /// A directory whose `*.toml` files are layered, in name order, over the overlay file and
    /// under the environment (`HERALD_CONFIG_EXTRA_DIR`): lists of tables such as
    /// `auth.principals`, which the environment cannot express, from a mounted Secret.
    pub extra_dir: Option<PathBuf>,
    /// Environment variables to read instead of the process environment (tests).
    pub env_override: Option<HashMap<String, String>>,
}

/// Loads `T` from the layers described in the crate docs, then validates it.
pub fn load<T>(sources: &Sources) -> Result<T>
where
    T: DeserializeOwned + Validate,
{
    let mut builder = config::Config::builder();
    if let Some(config_dir) = &sources.config_dir {
        builder = builder.add_source(file(config_dir, "base", true));
        if let Some(environment) = &sources.environment {
            builder = builder.add_source(file(config_dir, environment, false));
        }
    }
    if let Some(extra_dir) = &sources.extra_dir {
        for path in toml_files(extra_dir)? {
            let source = config::File::from(path.clone())
                .format(config::FileFormat::Toml)
                .required(true);
            // Loaded alone first, so that a broken file is named by the path it was given
            // (the combined build names it relative to the working directory).
            if let Err(error) = config::Config::builder().add_source(source.clone()).build() {
                return Err(Error::ExtraFile {
                    path,
                    source: Box::new(error),
                });
            }
            builder = builder.add_source(source);
        }
    }
    let environment = config::Environment::with_prefix("HERALD")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        // Lists given in the environment are comma-separated: HERALD__TLS__CRLS=a.pem,b.pem.
        .list_separator(",")
        .with_list_parse_key("tls.crls")
        .source(sources.env_override.clone());
    let settings: T = builder.add_source(environment).build()?.try_deserialize()?;
    let mut problems = Vec::new();
    settings.validate(&mut problems);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// Loads `T` the way every service binary does: `base.toml` from `config_dir`, the overlay
/// named by `HERALD_ENV`, the `*.toml` files of the directory `HERALD_CONFIG_EXTRA_DIR` names
/// (if set), then the process environment.
pub fn load_from_dir<T>(config_dir: &Path) -> Result<T>
where
    T: DeserializeOwned + Validate,
{
    load(&Sources {
        config_dir: Some(config_dir.to_owned()),
        environment: std::env::var("HERALD_ENV").ok(),
        extra_dir: std::env::var_os("HERALD_CONFIG_EXTRA_DIR").map(PathBuf::from),
        env_override: None,
    })
}

fn file(
    dir: &Path,
    name: &str,
    required: bool,
) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(dir.join(format!("{name}.toml")))
        .format(config::FileFormat::Toml)
        .required(required)
}

/// The `*.toml` files of `dir`, in name order. Names starting with a dot are skipped: a
/// mounted Kubernetes volume keeps its real files in `..data` and timestamped `..` directories
/// beside the links named after its keys.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let unreadable = |source| Error::ExtraDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let name = path.file_name().map(|name| name.to_string_lossy());
        if name.is_some_and(|name| !name.starts_with('.') && name.ends_with(".toml"))
            && path.is_file()
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
