#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<billing_receiver::Config, _, _>(billing_receiver::run).await
}
