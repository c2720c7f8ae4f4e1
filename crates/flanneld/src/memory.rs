//! Giving freed heap memory back to the kernel.
//!
//! glibc's `free` returns only the top of the heap to the kernel; the pages of freed chunks
//! below it stay resident. After a burst of allocation (the first listing and programming of
//! thousands of peers, each full reconcile) that is a third of flanneld's resident memory:
//! at 5000 peers VmRSS went from 21.4 to 13.8 MiB when trimmed (2026-11-26). `malloc_trim(0)`
//! hands those pages back (`madvise`) without moving anything; it walks the free lists only.

/// Returns the heap's free pages to the kernel (glibc only; elsewhere a no-op).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes a plain size, touches only the allocator's own free lists
    // under its locks, and is documented as safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_after_a_burst_keeps_the_heap_usable() {
        let burst: Vec<Vec<u8>> = (0..10_000).map(|i| vec![i as u8; 512]).collect();
        let kept: Vec<Vec<u8>> = burst.iter().step_by(100).cloned().collect();
        drop(burst);
        release_free_heap();
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, v)| v.len() == 512 && v[0] == (i * 100) as u8));
        let again: Vec<u8> = vec![7; 1 << 20];
        assert_eq!(again.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 << 20);
    }
}
