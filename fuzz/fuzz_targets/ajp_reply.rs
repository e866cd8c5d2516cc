//! cargo-fuzz target: see `harness::ajp_reply` for what is checked.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::ajp_reply(data));
