// The hot path allocates many small strings per request; mimalloc halves the time spent in
// the allocator compared with glibc's (measured with deploy/local/bench.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<ingest_gateway::Config, _, _>(ingest_gateway::run).await
}
