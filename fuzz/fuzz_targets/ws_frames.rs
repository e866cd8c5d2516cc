//! cargo-fuzz target: see `harness::ws_frames` for what is checked.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::ws_frames(data));
