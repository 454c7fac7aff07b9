//! Herald's cross-service integration tests: one binary, one module per capability.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom, set-up included"
)]

mod admin;
mod alerts;
mod bad_input;
mod batch;
mod certificates;
mod channels;
mod chat;
mod clients;
mod config;
mod delivery;
mod erasure;
mod faults;
mod fuzz_corpus;
mod harness;
mod inbox;
mod limits;
mod monitoring;
mod namespaces;
mod observability;
mod packs;
mod preferences;
mod prefetch;
mod priority;
mod privacy;
mod probes;
mod push;
mod reconcile;
mod retention;
mod security;
mod sms;
mod submit;
mod templates;
mod tracking;
mod variants;
