#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<billing_receiver::Config, _, _>("billing-receiver", billing_receiver::run).await
}
