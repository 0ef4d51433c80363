//! glibc's malloc thresholds stay fixed in a coregate process
//! (`http::conn::fix_malloc_thresholds`, called first thing by `main`).
//! Its own test binary: the check reads process-wide malloc counters,
//! which no other test may move meanwhile.

use std::hint::black_box;

/// Bytes malloc holds in blocks of their own mapping.
fn mapped() -> usize {
    // SAFETY: mallinfo2 only reads malloc's counters.
    unsafe { libc::mallinfo2().hblkhd }
}

/// After a 1 MiB block is freed, a 512 KiB one is still mapped on its
/// own. With glibc's moving thresholds the free raises the mmap threshold
/// to 1 MiB (and the trim threshold to 2 MiB), and the 512 KiB block
/// comes from the heap instead: that is what kept a burst's freed memory
/// resident in a shard's arena.
#[test]
fn large_blocks_stay_mapped_after_a_larger_one_is_freed() {
    assert!(coregate::http::conn::fix_malloc_thresholds());
    let big: Vec<u8> = black_box(Vec::with_capacity(1 << 20));
    assert!(mapped() >= 1 << 20, "a 1 MiB block is mapped");
    drop(big);
    let before = mapped();
    let half: Vec<u8> = black_box(Vec::with_capacity(512 << 10));
    let after = mapped();
    assert!(
        after >= before + (512 << 10),
        "the 512 KiB block is not mapped: {before} -> {after} bytes mapped"
    );
    drop(half);
}
