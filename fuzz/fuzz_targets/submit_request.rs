//! Fuzz target `submit_request`: every input goes through
//! `herald_api_server::check_submit_fuzz_input`, which the corpus test in
//! `./scripts/test` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_api_server::check_submit_fuzz_input(data));
