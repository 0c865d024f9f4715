//! The module's allocator: free lists by size class in front of the default one.
//!
//! A flatten allocates and frees the same few dozen blocks for every record (the parse tree's
//! objects and arrays, the output, the decoded input). The default allocator (dlmalloc)
//! spends a few hundred WASM operations on each `malloc`/`free`: measured with
//! `examples/profile_wasm.rs`, allocation was ~16% of the module's fuel per record. Here a
//! block of up to 64 KiB is rounded up to a power of two and, once freed, kept on its size's
//! free list for the next request of that size: a pop and a push. Larger or over-aligned
//! blocks go to the default allocator as before.
//!
//! Memory: a block on a free list is never given back, so the module keeps, per size, the
//! most blocks it ever held at once (its peak per call, since every call frees what it
//! allocated). WASM memory never shrinks anyway.
//!
//! Single-threaded: `wasm32-unknown-unknown` without the `atomics` feature has no threads
//! (the same assumption std's own allocator makes there).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Smallest block: 16 bytes (room for the free list's link, and the largest alignment
/// served here).
const MIN_SHIFT: u32 = 4;
/// Largest block served from the free lists: 64 KiB.
const MAX_SHIFT: u32 = 16;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
const MAX_ALIGN: usize = 1 << MIN_SHIFT;

struct SizeClasses {
    /// Per class, the first free block; each free block holds the address of the next.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: the module runs on one thread (see the module docs).
unsafe impl Sync for SizeClasses {}

#[global_allocator]
static ALLOCATOR: SizeClasses = SizeClasses {
    free: UnsafeCell::new([ptr::null_mut(); CLASSES]),
};

/// The size class of `layout`, or `None` for the default allocator.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > MAX_ALIGN {
        return None;
    }
    let shift = layout
        .size()
        .max(1 << MIN_SHIFT)
        .next_power_of_two()
        .trailing_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

/// The layout of a block of class `class`, as it is asked of the default allocator.
#[inline]
fn class_layout(class: usize) -> Layout {
    // SAFETY: a power of two of at most 64 KiB, aligned to 16 (a power of two).
    unsafe { Layout::from_size_align_unchecked(1 << (class as u32 + MIN_SHIFT), MAX_ALIGN) }
}

unsafe impl GlobalAlloc for SizeClasses {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded, and no other reference to the lists is alive.
        let free = unsafe { &mut *self.free.get() };
        let head = free[class];
        if head.is_null() {
            return unsafe { System.alloc(class_layout(class)) };
        }
        // SAFETY: a free block of this class holds the next free block's address.
        free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`; the block is at least 16 bytes, aligned to 16, and ours.
        let free = unsafe { &mut *self.free.get() };
        unsafe { block.cast::<*mut u8>().write(free[class]) };
        free[class] = block;
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` is non-zero and fits `isize` (GlobalAlloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // Same block size: nothing to move (a growing Vec often stays in its class).
            (Some(old), Some(new)) if old == new => block,
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks are at least this long and do not overlap.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}
