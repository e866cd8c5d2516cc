//! cargo-fuzz target: see `harness::modjk_import` for what is checked.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::modjk_import(data));
