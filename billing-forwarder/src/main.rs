#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<billing_forwarder::Config, _, _>("billing-forwarder", billing_forwarder::run).await
}
