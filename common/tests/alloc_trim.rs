//! `uts_common::alloc::trim_every`: pages freed in the middle of a glibc heap go back to the
//! system. A binary of its own: it measures the process's RSS.
// malloc/free: the heap under test is glibc's, reached through its C API.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_pages_inside_the_heap_are_returned() {
    use std::time::{Duration, Instant};

    const BLOCK: usize = 8 * 1024;
    const BLOCKS: usize = 4096; // 32 MB, below glibc's mapping threshold one by one
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    };
    let before = rss();
    // SAFETY: plain malloc/free pairs on blocks this test alone owns.
    let blocks: Vec<usize> = (0..BLOCKS)
        .map(|_| unsafe {
            let block = libc::malloc(BLOCK);
            assert!(!block.is_null());
            std::ptr::write_bytes(block.cast::<u8>(), 1, BLOCK);
            block as usize
        })
        .collect();
    // Every block but the last is freed: the last keeps the heap's top from shrinking, as a
    // block still in use does in a stage.
    for &block in &blocks[..BLOCKS - 1] {
        unsafe { libc::free(block as *mut libc::c_void) };
    }
    let held = rss().saturating_sub(before);
    assert!(held > 24 << 20, "glibc already returned the freed blocks ({held} bytes still resident)");

    uts_common::alloc::trim_every(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = rss().saturating_sub(before);
        if left < 8 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} bytes still resident 10 s after the free");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::free(blocks[BLOCKS - 1] as *mut libc::c_void) };
}
