//! Fuzz target `template`: every input goes through
//! `herald_templates::check_fuzz_input`, which the corpus test in
//! `./scripts/test` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_templates::check_fuzz_input(data));
