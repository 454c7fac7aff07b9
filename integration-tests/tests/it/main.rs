//! Herald's cross-service integration tests: one binary, one module per capability.

mod admin;
mod alerts;
mod config;
mod delivery;
mod faults;
mod harness;
mod limits;
mod preferences;
mod priority;
mod security;
mod submit;
mod templates;
