use clap::Parser;
use ingest_gateway::{run, Config};

// The hot path allocates many small strings per request; mimalloc halves the time spent in
// the allocator compared with glibc's (measured with deploy/local/bench.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let shutdown = uts_common::shutdown::on_signal();
    match run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ingest-gateway failed: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
