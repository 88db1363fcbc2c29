// The projection decodes and drops many small strings per job (200 usages each); mimalloc
// keeps that off the critical path as in the gateway.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<query_service::Config, _, _>(query_service::run).await
}
