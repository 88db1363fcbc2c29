#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<query_service::Config, _, _>("query-service", query_service::run).await
}
