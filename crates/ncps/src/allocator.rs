//! How much memory glibc's allocator keeps after a burst: the process-wide setting made once at
//! start, before any thread exists.
//!
//! glibc maps a block of at least its "mmap threshold" (128 KiB at first) on its own and unmaps it
//! when freed. But each time such a block is freed, glibc raises the threshold to that block's size
//! (up to 32 MiB). After the first large buffer (a 4 MiB one, say) is freed, every allocation up to
//! that size is carved from the arenas instead, and an arena gives memory back only from its top.
//! 100 concurrent chunked downloads then peaked at 110 MiB of RSS instead of 80, and a cold closure
//! at 40 MiB instead of 27 (`docs/benchmarks.md`, "Memory glibc kept"). Fixing the threshold stops
//! that; 1 MiB keeps the 256 KiB run buffers of the chunked path and the 128 KiB read buffers in
//! the arenas, where a freed one is reused. (Fixing the threshold also fixes the trim threshold at
//! glibc's 128 KiB; 2 MiB was tried and dropped, see there.)
#![allow(unsafe_code)]

/// Blocks this large or larger are mapped on their own, and returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`], unless the operator set the allocator's
/// thresholds in `GLIBC_TUNABLES` (theirs wins). Nothing to do on other C libraries.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Either tunable already stops glibc's adjusting of the threshold, the thing fixed here.
        let operator_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| {
            t.contains("malloc.mmap_threshold") || t.contains("malloc.trim_threshold")
        });
        if operator_set {
            return;
        }
        // SAFETY: mallopt only changes the allocator's parameters; called before any thread
        // exists, so no allocation runs concurrently with it. It fails only for a parameter
        // glibc does not know or a value above its maximum (32 MiB), neither the case here.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// Blocks mapped on their own right now.
    fn mapped_blocks() -> usize {
        // SAFETY: reads the allocator's statistics; no pointer is involved.
        unsafe { libc::mallinfo2() }.hblks
    }

    /// Whether allocating `size` bytes maps a block of its own.
    fn is_mapped_on_its_own(size: usize) -> bool {
        let before = mapped_blocks();
        let block = black_box(Vec::<u8>::with_capacity(size));
        let mapped = mapped_blocks() > before;
        drop(block);
        mapped
    }

    #[test]
    fn a_large_block_freed_does_not_make_later_blocks_stay_in_the_arenas() {
        configure();
        // glibc without the fixed threshold: freeing this 8 MiB block raises the threshold to
        // 8 MiB, and the 4 MiB block below comes from an arena, which keeps it after it is freed.
        drop(black_box(Vec::<u8>::with_capacity(8 << 20)));
        assert!(
            is_mapped_on_its_own(4 << 20),
            "a 4 MiB block after an 8 MiB one was freed must still be mapped on its own"
        );
        assert!(
            !is_mapped_on_its_own(256 << 10),
            "a 256 KiB run buffer comes from an arena, to be reused without page faults"
        );
    }
}
