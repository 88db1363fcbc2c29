#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<aggregator::Config, _, _>("aggregator", aggregator::run).await
}
