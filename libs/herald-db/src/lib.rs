#![doc = include_str!("../README.md")]

pub mod alerts;
mod connect;
pub mod contacts;
pub mod deliveries;
pub mod erasure;
mod error;
pub mod events;
pub mod failures;
pub mod inbox;
pub mod listen;
pub mod monitor;
pub mod notifications;
pub mod outbox;
pub mod personal;
mod pool;
pub mod preferences;
pub mod retention;
pub mod schema;
mod statement;
pub mod templates;
pub mod variants;

/// A JSONB object of strings (caller metadata, a stored trace context) as a map; values that
/// are not strings are left out (Herald writes none).
fn string_map<M: FromIterator<(String, String)>>(value: serde_json::Value) -> M {
    match value {
        serde_json::Value::Object(object) => object
            .into_iter()
            .filter_map(|(key, value)| match value {
                serde_json::Value::String(text) => Some((key, text)),
                _ => None,
            })
            .collect(),
        _ => std::iter::empty().collect(),
    }
}

pub use connect::Connector;
pub use error::{Error, Result};
pub use pool::{Connection, Pool, build_pool, connection, ping, readiness, run_migrations};
