//! The binary's global allocator: mimalloc (feature `mimalloc`, on by
//! default): 8-12 % less CPU per request than glibc here (benches/compare.sh).
//! Its arenas are committed on demand (`.cargo/config.toml` sets the
//! compile-time default), and the housekeeper asks it to return free
//! memory after a burst, as it does glibc with `malloc_trim`.

#![allow(unsafe_code)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hand mimalloc's release to the housekeeper.
pub fn install() {
    stickgate::control::housekeeping::set_allocator_release(collect);
}

/// Free pages of every heap and arena back to the system now, not on the
/// heaps' next use (an idle balancer has none).
fn collect() {
    // SAFETY: mi_collect takes a flag, works on mimalloc's own state under
    // its own synchronisation, and may be called from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
