//! The tests that run every stage as a real process (the binaries of `cargo build --bins`):
//! the SIGKILL crash test, the infrastructure faults (a replicated Kafka cluster losing brokers,
//! PostgreSQL restarting), a stuck stage whose partitions move mid-batch, an admin change
//! reaching the verifier, and the trace that follows one job across the processes. One test
//! binary for all of them; the load and the oracle are shared.

mod admin;
mod crash;
mod faults;
mod liveness;
mod load;
mod oracle;
mod stages;
mod traces;
