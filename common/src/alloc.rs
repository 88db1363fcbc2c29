//! How the process's two allocators give freed memory back to the system.
//!
//! The stages allocate through mimalloc (their `#[global_allocator]`), but librdkafka's threads
//! allocate through glibc's malloc: fetched message sets, decompression buffers, produce
//! queues. Left to their defaults, both keep what a busy minute freed, and RSS follows the
//! highest batch a stage ever had in hand rather than what it holds now. The soak measured it
//! (2026-12-03, 80 % of the sustained maximum): a lag spike of one minute raised the query
//! service from 50 to 62 MB and the verifier from 43 to 52 MB, and they stayed there. With the
//! settings below, the glibc part of the query service's RSS went from 20 to 9 MB and that of the
//! verifier from 23 to 7 MB. A later soak at a higher rate still saw the verifier's glibc heap go
//! from 7 to 24 MB in one spike and stay there: the blocks librdkafka had freed (its produce
//! queue, up to 16 MB of message copies below the mapping threshold) sat between blocks still in
//! use, where no heap trim reaches them. Only `malloc_trim` returns such pages, so a thread calls
//! it every few seconds.
//!
//! An operator's environment variable for a setting wins over it: `MALLOC_ARENA_MAX`,
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` (glibc) and `MIMALLOC_PURGE_DELAY`.

/// Largest block glibc serves from its heaps; larger ones are mapped and unmapped on their own.
/// Setting it (or the trim threshold) switches off glibc's sliding threshold, which rises to the
/// size of every mapped block that is freed (up to 32 MB): after the first one, librdkafka's
/// 256 KB to 1 MB fetch buffers came from the heap and stayed there, fragmented.
const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at the top of a glibc heap beyond which it is returned (fixed, like the threshold
/// above, which would otherwise raise it too).
const TRIM_THRESHOLD: i32 = 128 * 1024;
/// glibc arenas: one per thread by default, each keeping what its thread freed. Two: under the
/// benchmark's full load the verifier went from 85 to 60 MB RSS and the aggregator from 130 to
/// 80 MB, at no cost in throughput.
const ARENA_MAX: i32 = 2;
/// Milliseconds mimalloc waits before it returns freed pages (its default: 1000). With batches
/// every few tens of milliseconds, a second kept the pages of the largest recent batches
/// committed; 100 ms still reuses them within a batch.
const PURGE_DELAY_MS: std::ffi::c_long = 100;
/// How often the trimming thread returns the free pages inside glibc's heaps.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (v3 and v2 alike); the Rust bindings do
/// not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the settings; the first thing a process does, before it starts librdkafka's threads.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none();
        // SAFETY: mallopt only sets malloc's parameters (under its own lock).
        unsafe {
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
            if unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
            }
        }
    }
    // SAFETY: sets one integer option; an environment variable already read keeps its value
    // (`set_default` leaves an option that was initialised from the environment alone).
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    trim_every(TRIM_EVERY);
}

/// Starts a thread that hands the free pages inside glibc's heaps back to the system every
/// `interval` (`malloc_trim`, which walks the free blocks of every arena and discards their
/// whole pages; a heap's own trim only releases its top). A no-op on other C libraries.
pub fn trim_every(interval: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = move || loop {
            std::thread::sleep(interval);
            // SAFETY: malloc_trim takes each arena's lock itself; it frees nothing in use.
            unsafe { libc::malloc_trim(0) };
        };
        // Before the config is parsed, so before any log subscriber: straight to stderr.
        if let Err(err) = std::thread::Builder::new().name("malloc-trim".into()).spawn(trim) {
            eprintln!("no malloc-trim thread ({err}); freed heap pages stay resident");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = interval;
}

/// mimalloc's purge delay as it stands, in milliseconds (for a test).
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one integer option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}
