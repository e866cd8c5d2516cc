//! A short, bounded run of the fuzz harnesses (`fuzz/harness.rs`) on
//! stable Rust, so every `cargo test` checks the parsers that read
//! untrusted bytes against the same invariants as the cargo-fuzz targets
//! (`scripts/fuzz.sh` runs those for longer).
//!
//! Each target gets its seed files (`fuzz/seeds/<target>/`), then mutated
//! seeds and random bytes from a fixed-seed RNG, so a failure reproduces
//! exactly; the failing input is written to `target/fuzz-smoke-<target>`
//! (usable as a cargo-fuzz input) and printed.

#[path = "../fuzz/harness.rs"]
mod harness;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generated inputs per target (after the seeds).
const RUNS: usize = 20_000;
/// Time cap per target, so a slow machine still finishes quickly.
const TIME_CAP: Duration = Duration::from_secs(3);
/// Longest generated input (the fuzz targets' default is 4096).
const MAX_LEN: usize = 4096;
/// Bytes that matter to the parsers, inserted by the mutator.
const TOKENS: &[&[u8]] = &[
    b";",
    b"=",
    b".",
    b",",
    b"\"",
    b"\n",
    b"\r",
    b"\0",
    b"\\",
    b"/",
    b"?",
    b"#",
    b" ",
    b"$(",
    b")",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xc3\xa9",
    b"jsessionid",
    b"JSESSIONID=",
    b";jsessionid=",
    b".tomcat1",
    b"worker.",
    b".type=lb",
    b".balance_workers=",
    b".host=",
    b".port=",
    b"worker.list=",
    b"SGMC\x01",
    b"\x82\x7e",
    b"\x8a\x80",
    b"\x7f\xff\xff",
];

/// The seed files of `target`, sorted by name so runs are reproducible.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// A random range `[start, end)` of a buffer of length `len` (> 0).
fn range(rng: &mut StdRng, len: usize) -> (usize, usize) {
    let start = rng.random_range(0..len);
    let end = rng.random_range(start..=len.min(start + 64));
    (start, end)
}

/// One to four libFuzzer-style edits of a seed.
fn mutate(rng: &mut StdRng, seed: &[u8], all: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            b.push(rng.random());
        }
        match rng.random_range(0..8) {
            0 => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            2 | 3 => {
                let i = rng.random_range(0..=b.len());
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                b.splice(i..i, t.iter().copied());
            }
            4 => {
                let (s, e) = range(rng, b.len());
                b.drain(s..e);
            }
            5 => {
                let (s, e) = range(rng, b.len());
                let copy = b[s..e].to_vec();
                let i = rng.random_range(0..=b.len());
                b.splice(i..i, copy);
            }
            6 => {
                let other = &all[rng.random_range(0..all.len())];
                if !other.is_empty() {
                    let (s, e) = range(rng, other.len());
                    let i = rng.random_range(0..=b.len());
                    b.splice(i..i, other[s..e].iter().copied());
                }
            }
            _ => b.truncate(rng.random_range(0..=b.len())),
        }
    }
    b.truncate(MAX_LEN);
    b
}

/// Random bytes of a random length, half of them printable ASCII (text
/// parsers reject most binary at the first byte).
fn random_input(rng: &mut StdRng) -> Vec<u8> {
    let mut b = vec![0u8; rng.random_range(0..512)];
    rng.fill_bytes(&mut b);
    if rng.random_bool(0.5) {
        for x in &mut b {
            *x = b' ' + *x % 95;
        }
    }
    b
}

/// Run `check` on one input; on a panic save the input and fail with it.
fn run_one(target: &str, check: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        let out = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("fuzz-smoke-{target}"));
        let _ = std::fs::create_dir_all(out.parent().unwrap());
        let _ = std::fs::write(&out, input);
        panic!(
            "{target}: invariant broken on input {:?} (saved as {}; replay with \
             `cargo fuzz run {target} {}` in fuzz/)",
            String::from_utf8_lossy(input),
            out.display(),
            out.display()
        );
    }
}

/// Seeds, then up to [`RUNS`] mutated or random inputs within [`TIME_CAP`].
/// Returns how many generated inputs ran.
fn drive(target: &str, check: fn(&[u8])) -> usize {
    let all = seeds(target);
    for s in &all {
        run_one(target, check, s);
    }
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = StdRng::seed_from_u64(0x5EED_F022 ^ salt);
    let started = Instant::now();
    let mut n = 0;
    while n < RUNS && started.elapsed() < TIME_CAP {
        let input = if rng.random_bool(0.2) {
            random_input(&mut rng)
        } else {
            let seed = &all[rng.random_range(0..all.len())];
            mutate(&mut rng, seed, &all)
        };
        run_one(target, check, &input);
        n += 1;
    }
    eprintln!(
        "{target}: {} seeds, {n} generated inputs in {:?}",
        all.len(),
        started.elapsed()
    );
    assert!(n >= 500, "{target}: only {n} inputs within {TIME_CAP:?}");
    n
}

#[test]
fn session_id_parsers_hold_their_invariants() {
    drive("session_id", harness::session_id);
}

#[test]
fn websocket_frame_follower_holds_its_invariants() {
    drive("ws_frames", harness::ws_frames);
}

#[test]
fn multicast_decoder_holds_its_invariants() {
    drive("multicast_datagram", harness::multicast_datagram);
}

#[test]
fn ajp_reply_decoder_holds_its_invariants() {
    drive("ajp_reply", harness::ajp_reply);
}

#[test]
fn modjk_import_holds_its_invariants() {
    drive("modjk_import", harness::modjk_import);
}
