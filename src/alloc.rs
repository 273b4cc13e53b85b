//! The process's allocator: mimalloc, called the way its own `malloc` is.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`, even at
//! alignment 8. In mimalloc 3 that path takes a block from the size's page only when the
//! page's next free block happens to sit at the alignment; otherwise, and for every block
//! over 1 KiB whose size is not a power of two, it over-allocates and marks the page as
//! holding interior pointers, which makes every later `free` on that page slower. Measured
//! under callgrind, ~10 allocations of each request took that path (docs/PERFORMANCE.md).
//!
//! mimalloc's plain `mi_malloc` already guarantees what Rust asks of most layouts: every
//! block of 16 bytes or more is 16-byte aligned (`MI_MAX_ALIGN_SIZE`, the bins are
//! double words on 64-bit targets), and every block is at least word aligned. So a layout
//! whose alignment is at most 16 and at most its size goes to `mi_malloc`; anything else
//! (over-aligned types, or an alignment above a tiny size) keeps the aligned entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc's guaranteed alignment of a block of at least this many bytes.
const MAX_PLAIN_ALIGN: usize = 16;

/// The global allocator of the gateway's binary (and of the benchmark floor).
pub struct Mimalloc;

/// True when `mi_malloc(size)` is already aligned as the layout asks.
#[inline(always)]
fn plain(align: usize, size: usize) -> bool {
    align <= MAX_PLAIN_ALIGN && align <= size
}

/// mimalloc's plain and aligned entry points for one kind of allocation.
type Plain = unsafe extern "C" fn(usize) -> *mut c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// A block of `layout` from the plain entry point when that already aligns it.
///
/// # Safety
/// `layout` has a non-zero size (GlobalAlloc's contract); the functions are mimalloc's.
#[inline(always)]
unsafe fn block(layout: Layout, plain_fn: Plain, aligned_fn: Aligned) -> *mut u8 {
    // SAFETY: FFI calls with a size and a power-of-two alignment from a valid Layout.
    unsafe {
        if plain(layout.align(), layout.size()) {
            plain_fn(layout.size()).cast()
        } else {
            aligned_fn(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every pointer handed out comes from mimalloc and is freed by `mi_free`, which
// takes blocks from both the plain and the aligned entry points; the alignment asked for
// is met either by mimalloc's guarantee (`plain`) or by the aligned call.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `block` requires (GlobalAlloc's contract).
        unsafe { block(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `block` requires (GlobalAlloc's contract).
        unsafe { block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is ours and `new_size` is valid for `layout.align()` (GlobalAlloc's
        // contract); the new block is aligned by the same rule as `alloc`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned, writable, and
    /// keeps its bytes through growing and shrinking reallocations.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = Mimalloc;
        let sizes = [
            1usize,
            2,
            3,
            7,
            8,
            9,
            15,
            16,
            17,
            24,
            31,
            33,
            48,
            100,
            1000,
            1025,
            1500,
            4095,
            8193,
            70_000,
            1 << 20,
        ];
        for &align in &[1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    // SAFETY: non-zero sizes; the block is freed with the layout it has.
                    unsafe {
                        let p = if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *p.add(i) == 0));
                        }
                        for i in 0..size {
                            *p.add(i) = (i % 251) as u8;
                        }
                        let mut p = p;
                        for new_size in [size * 3 + 5, size.div_ceil(2)] {
                            let q = a.realloc(p, layout, new_size);
                            assert!(!q.is_null());
                            assert_eq!(q as usize % align, 0, "realloc {size}->{new_size}");
                            let kept = size.min(new_size);
                            assert!((0..kept).all(|i| *q.add(i) == (i % 251) as u8));
                            let grown = Layout::from_size_align(new_size, align).unwrap();
                            p = a.realloc(q, grown, size);
                            assert!(!p.is_null());
                            assert_eq!(p as usize % align, 0, "realloc {new_size}->{size}");
                            assert!((0..kept).all(|i| *p.add(i) == (i % 251) as u8));
                            for i in 0..size {
                                *p.add(i) = (i % 251) as u8;
                            }
                        }
                        a.dealloc(p, layout);
                    }
                }
            }
        }
    }
}
