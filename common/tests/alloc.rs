//! `uts_common::alloc`: its allocator settings take effect, and an operator's environment
//! variable wins over each. One test in this binary, alone: glibc's counters are process-wide.
// mallinfo2 and malloc/free: glibc's counters are only reachable through its C API.
#![allow(unsafe_code)]

use std::process::Command;

use uts_common::alloc::{purge_delay_ms, return_freed_memory};

/// Set in the child run of this test, with the operator's variables.
const CHILD: &str = "UTS_ALLOC_TEST_CHILD";
const MB: usize = 1 << 20;

/// Whether a block of `size` bytes is mapped on its own (not carved from a glibc heap).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mapped_on_its_own(size: usize) -> bool {
    // SAFETY: a plain malloc/free pair; mallinfo2 only reads malloc's counters.
    unsafe {
        let before = libc::mallinfo2().hblks;
        let block = libc::malloc(size);
        assert!(!block.is_null());
        let mapped = libc::mallinfo2().hblks == before + 1;
        libc::free(block);
        mapped
    }
}

#[test]
fn freed_memory_goes_back_and_an_operator_variable_wins() {
    return_freed_memory();
    if std::env::var_os(CHILD).is_some() {
        // The operator's values: mimalloc read its variable into the option this module sets
        // (so the option number is the right one), and glibc kept a threshold above 1 MB.
        assert_eq!(purge_delay_ms(), 250);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            assert!(!mapped_on_its_own(MB), "MALLOC_MMAP_THRESHOLD_=4 MB was overridden");
        }
        return;
    }
    assert_eq!(purge_delay_ms(), 100);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's default threshold slides up to the size of a mapped block once it is freed:
        // the second 1 MB block would come from the heap, and stay there after its free.
        assert!(mapped_on_its_own(MB), "a 1 MB block was not mapped");
        assert!(mapped_on_its_own(MB), "after one 1 MB block was freed, the next came from the heap");
    }

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "freed_memory_goes_back_and_an_operator_variable_wins", "--nocapture"])
        .env(CHILD, "1")
        .env("MIMALLOC_PURGE_DELAY", "250")
        .env("MALLOC_MMAP_THRESHOLD_", (4 * MB).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The child really ran the test (a filter that matched nothing would succeed too).
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}
