// Decoding and encoding allocate many small strings per usage; glibc's malloc took a third of
// the verifier's CPU in the benchmark's profile and fragments across threads (RSS).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<aggregator::Config, _, _>(aggregator::run).await
}
