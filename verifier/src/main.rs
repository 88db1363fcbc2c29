#[tokio::main]
async fn main() -> std::process::ExitCode {
    uts_common::shutdown::main_with::<verifier::Config, _, _>("verifier", verifier::run).await
}
