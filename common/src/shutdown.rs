//! Graceful shutdown: one [`CancellationToken`] per process, cancelled by SIGINT or SIGTERM.
//! Loops check it only between units of work, so the unit in hand is finished and committed.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// The body of every binary's `main`: parse the config, install the shutdown signal, run, and
/// print the error chain and exit non-zero on failure.
pub async fn main_with<C, F, Fut>(name: &str, run: F) -> ExitCode
where
    C: clap::Parser,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = C::parse();
    match run(config, on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name} failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns a token that is cancelled when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: finishing the work in hand");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
