//! Memory given back after a burst (issue 16).
//!
//! glibc's allocator keeps what a burst freed: large request bodies raise
//! its mmap threshold, so later ones come from the arenas, whose free
//! pages are given back only from the top of each heap. After a burst of
//! 64 connections of 2 MB batches the sidecar stayed at 26 MiB (10 at
//! rest). The allocators and settings measured against it (BENCHMARKS.md,
//! "Memory given back after a burst"): a fixed mmap threshold gives memory
//! back at once but costs 50 % more CPU per large batch (every buffer a
//! fresh mapping); jemalloc with its background thread gives it back too
//! but costs 9-12 MiB more at rest with 100 subscriptions. So the arenas
//! stay as fast as they are under load, and once the sidecar has been
//! quiet for a while ([`QUIET`]: nothing published or delivered) it asks
//! glibc once to return the free pages of every arena (`malloc_trim`).
//! Under load it never does: trimming then would only make the next
//! requests fault the same pages back in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long nothing must have happened before memory is given back.
pub const QUIET: Duration = Duration::from_secs(5);

/// Publishes and deliveries begun, process-wide; only compared between
/// looks, so a relaxed count is enough.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Notes that a publish or a delivery began.
pub fn touch() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// Gives memory back after every burst, `QUIET` after it ended; runs for
/// as long as the runtime does (spawned once per process, by `main`).
pub async fn give_back_when_quiet() {
    let mut seen = ACTIVITY.load(Ordering::Relaxed);
    // Whatever start-up allocated counts as a burst too.
    let mut given_back = false;
    let mut every = tokio::time::interval(QUIET);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let now = ACTIVITY.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            given_back = false;
            continue;
        }
        if given_back {
            continue;
        }
        given_back = true;
        // It walks every arena: off the runtime's threads.
        let before = resident_kib();
        if tokio::task::spawn_blocking(release).await.unwrap_or(false) {
            tracing::debug!(
                before_kib = before,
                after_kib = resident_kib(),
                "gave free memory back to the system"
            );
        }
    }
}

/// Makes glibc use one arena for every thread, unless `GLIBC_TUNABLES`
/// says otherwise (the operator's choice wins). Call first thing in `main`,
/// before any other thread starts. glibc gives each thread that meets a
/// locked arena one of its own (up to 8 per core), and each keeps its own
/// free memory; a burst of large batches on 64 connections then peaked at
/// 30 MiB and kept 17-19 MiB afterwards, against 22 and 13 MiB with one
/// arena, at the same batches per second and CPU per batch (BENCHMARKS.md,
/// "Memory"). jetway's allocations are few and short, and its runtime has
/// two worker threads per two cores: one lock is not a bottleneck.
pub fn use_one_arena() {
    let chosen = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if !chosen {
        one_arena();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_arena() {
    // SAFETY: mallopt takes two integers and only changes glibc's own
    // settings, under its lock; M_ARENA_MAX caps arenas created from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_arena() {}

/// Resident memory of this process, from `/proc/self/statm` (0 where
/// there is none).
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// Asks glibc to return the free pages of every arena (`malloc_trim(0)`);
/// whether it returned any. With `one_arena`, jetway's only `unsafe`
/// blocks: foreign calls without pointers or preconditions, which glibc
/// serializes with every other allocator call. Elsewhere (musl) there is
/// nothing to ask.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() -> bool {
    // SAFETY: malloc_trim takes a plain integer (the padding to keep at
    // the top of the main heap) and touches only glibc's own free lists,
    // under their locks; it is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_goes_back() {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return;
        }
        // 32 MiB in 64 KiB blocks (below glibc's mmap threshold: from an
        // arena), all written; then 7 of every 8 freed. Each run of 7 freed
        // blocks lies between two kept ones (the last block allocated is
        // kept), so no free can shrink the heap from its top: only
        // `release` can give those pages back. Other tests run in this
        // process at the same time, hence the margins of several MiB.
        let mut blocks: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 64 * 1024]).collect();
        let peak = resident_kib();
        let mut index = 0;
        blocks.retain(|_| {
            index += 1;
            index % 8 == 0
        });
        let freed = resident_kib();
        assert!(
            freed + 8 * 1024 >= peak,
            "glibc gave back what was freed by itself: {peak} -> {freed} KiB"
        );
        assert!(release(), "malloc_trim gave nothing back");
        let after = resident_kib();
        assert!(
            after + 16 * 1024 <= freed,
            "{freed} KiB resident after the free, {after} KiB after giving back"
        );
        assert_eq!(blocks.len(), 64);
    }
}
