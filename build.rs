//! Link-time layout of the release binary (issue 19, idle footprint).
//!
//! A running balancer executes about 1.2 MiB of the binary's 5.4 MiB of
//! code (start-up, the request path, health checks, the admin API). Left
//! where the compiler puts them, those functions are spread over ~74
//! different 64 KiB windows, and the kernel maps a whole window around
//! every page it faults in: 4.6 MiB of code resident in an idle process.
//! `scripts/hot-symbols.txt` lists them (made by `scripts/hot-symbols.sh`
//! from a real run under callgrind); the linker places them first and
//! together, which made 22 windows (1.4 MiB) resident and idle RSS 5.0
//! instead of 7.9 MiB, measured.
//!
//! The list names symbols as this toolchain and lock file mangle them: a
//! name it does not find is skipped, so a stale list costs only memory
//! (`benches/footprint.sh` prints how much of it still matches). Only
//! rust-lld reads it: applied to release builds for x86_64 Linux with
//! Rust 1.90 or later (whose default linker that is) and no linker
//! chosen in RUSTFLAGS. `STICKGATE_SYMBOL_ORDER=off` skips it.

use std::env;
use std::path::Path;
use std::process::Command;

/// The list, relative to the package root.
const LIST: &str = "scripts/hot-symbols.txt";

fn main() {
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-env-changed=STICKGATE_SYMBOL_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = ["linker", "fuse-ld", "link-self-contained"]
        .iter()
        .any(|f| flags.contains(f));
    let wanted = var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("PROFILE") == "release"
        && var("STICKGATE_SYMBOL_ORDER") != "off"
        && !own_linker
        && rustc_links_with_lld(&var("RUSTC"));
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join(LIST);
    if wanted && list.is_file() {
        let list = list.display();
        println!("cargo:rustc-link-arg-bin=stickgate=-Wl,--symbol-ordering-file={list}");
        println!("cargo:rustc-link-arg-bin=stickgate=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether `rustc` is 1.90 or later, where x86_64 Linux links with
/// rust-lld by default (GNU ld does not know the option).
fn rustc_links_with_lld(rustc: &str) -> bool {
    let rustc = if rustc.is_empty() { "rustc" } else { rustc };
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
