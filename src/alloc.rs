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

/// Every block `mi_malloc` hands out is aligned to this (its
/// `MI_MAX_ALIGN_SIZE`) once the request is at least this big, and to the
/// machine word below it: mimalloc rounds sizes up to whole 16-byte units
/// (the 24-, 40- and 56-byte classes a word-aligned build would have are not
/// used) and starts every page's blocks on a 16-byte boundary.
const MI_ALIGN: usize = 16;

/// mimalloc, asked the way its plain C entry points are.
///
/// The `mimalloc` crate's allocator passes every request to
/// `mi_malloc_aligned`, even for the alignment every block has anyway. In
/// mimalloc v3 that call serves blocks up to 1 KiB from the fast path, but
/// takes every larger one (a request's boxed future, hyper's read buffers)
/// through its generic aligned path, which over-allocates. `mi_malloc` for
/// ordinary alignments skips that: 1.3 % fewer instructions per proxied
/// request (benches/instructions.sh), 2-3 % less CPU.
struct MiMalloc;

/// Whether `mi_malloc`'s own alignment serves a block of `size` bytes
/// aligned to `align` (at most 16 and not above the size: a word-aligned
/// block serves it when the size is below 16).
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= MI_ALIGN && align <= size
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
            if plain(layout.size(), layout.align()) {
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
            if plain(layout.size(), layout.align()) {
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
            if plain(new_size, layout.align()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 4 KiB and a few larger, with every alignment up to
    /// 64 (hashbrown asks for 16 with sizes that are no multiple of 16),
    /// comes back aligned and usable, zeroed when asked, and keeps its
    /// bytes and alignment when it grows.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let sizes = (1..=4096).chain([5000, 65_536, 100_003, 1 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; the block is written within its
                // size, reallocated with its layout and freed once.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = GLOBAL.realloc(p, layout, size * 2 + 8);
                    assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                    assert_eq!(*grown.add(size - 1), 0xA5);
                    let layout2 = Layout::from_size_align(size * 2 + 8, align).unwrap();
                    let z = GLOBAL.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    GLOBAL.dealloc(z, layout);
                    GLOBAL.dealloc(grown, layout2);
                }
            }
        }
    }
}
