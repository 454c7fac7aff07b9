//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`: the seeds, and each
//! input a fuzzer crashed on, kept once fixed) through the function its fuzz target calls,
//! as plain code without instrumentation, so `./scripts/test` keeps them all passing.

use std::path::{Path, PathBuf};

fn replay(target: &str, check: fn(&[u8])) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("reading {}: {error}", directory.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "fuzz/corpus/{target} holds seeds");
    for input in inputs {
        let data = std::fs::read(&input).expect("a readable corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its checks", input.display());
    }
}

#[test]
fn the_submit_request_corpus_is_validated_without_a_failed_check() {
    replay("submit_request", herald_api_server::check_submit_fuzz_input);
}

#[test]
fn the_template_corpus_compiles_and_renders_without_a_failed_check() {
    replay("template", herald_templates::check_fuzz_input);
}

#[test]
fn the_tracking_token_corpus_verifies_without_a_failed_check() {
    replay("tracking_token", herald_tracking::Signer::check_fuzz_input);
}

#[test]
fn the_smtp_reply_corpus_is_classified_without_a_failed_check() {
    replay("smtp_reply", herald_smtp::check_fuzz_input);
}
