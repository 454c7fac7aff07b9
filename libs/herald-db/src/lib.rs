#![doc = include_str!("../README.md")]

pub mod alerts;
pub mod contacts;
pub mod deliveries;
mod error;
pub mod events;
pub mod failures;
pub mod inbox;
pub mod listen;
pub mod monitor;
pub mod notifications;
pub mod outbox;
mod pool;
pub mod preferences;
pub mod schema;
mod statement;
pub mod templates;
pub mod variants;

pub use error::{Error, Result};
pub use pool::{Connection, Pool, build_pool, connection, run_migrations};
