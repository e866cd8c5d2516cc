//! The binary's global allocator: mimalloc (feature `mimalloc`, on by
//! default): 8-12 % less CPU per request than glibc here (benches/compare.sh).
//! Its arenas are committed on demand (`.cargo/config.toml` sets the
//! compile-time default), and the housekeeper asks it to return free
//! memory after a burst, as it does glibc with `malloc_trim`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Every block mimalloc hands out is aligned to this (`MI_MAX_ALIGN_SIZE`),
/// or to its size when that is smaller.
const MI_ALIGN: usize = 16;

/// mimalloc, asked the way its plain C entry points are.
///
/// The `mimalloc` crate's allocator passes every request to
/// `mi_malloc_aligned`, even for the alignment every block has anyway. In
/// mimalloc v3 that call serves blocks up to 1 KiB from the fast path, but
/// takes every larger one (a request's boxed future, hyper's read buffers)
/// through its generic aligned path, which over-allocates. `mi_malloc` for
/// ordinary alignments skips that: 2-3 % fewer instructions per proxied
/// request (benches/instructions.sh).
struct MiMalloc;

/// Whether `mi_malloc`'s own alignment serves `layout`.
#[inline]
fn plain(layout: &Layout) -> bool {
    layout.align() <= MI_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every pointer returned comes from mimalloc with at least the
// layout's size and alignment (`plain` checks that mi_malloc's guarantee
// covers it, otherwise the aligned entry points are used), and every pointer
// freed or reallocated was returned by one of them: mi_free and the realloc
// functions accept any mimalloc pointer.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; the new size with the old alignment is what
        // must be served.
        unsafe {
            if layout.align() <= MI_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

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
