use clap::Parser;
use query_service::{run, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let shutdown = uts_common::shutdown::on_signal();
    match run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("query-service failed: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
