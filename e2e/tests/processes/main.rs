//! The tests that run every stage as a real process (the binaries of `cargo build --bins`):
//! the SIGKILL crash test and the trace that follows one job across the processes. One test
//! binary for both.

mod crash;
mod stages;
mod traces;
