//! Graceful shutdown: one [`CancellationToken`] per process, cancelled by SIGINT or SIGTERM.
//! Loops check it only between units of work, so the unit in hand is finished and committed.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// The body of every binary's `main`: set how the allocators return freed memory
/// ([`crate::alloc`]), parse the config, install the shutdown signal, run, and
/// print the error chain under the command's name (its clap `name`) and exit non-zero on
/// failure.
pub async fn main_with<C, F, Fut>(run: F) -> ExitCode
where
    C: clap::Parser,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::alloc::return_freed_memory();
    let name = C::command().get_name().to_owned();
    let config = C::parse();
    let result = run(config, on_signal()).await;
    // The batch exporter waits on its own thread; not on a runtime worker.
    let _ = tokio::task::spawn_blocking(crate::trace::shutdown).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name} failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one of a process's tasks (its consumer loop, its sender…) and cancels `shutdown` when it
/// ends, however it ends: a task that stops outside a shutdown (an error) stops the others with
/// it, so the process exits non-zero instead of living on with a healthy `/readyz` and nothing
/// consuming (the admin listener only ends on shutdown).
pub async fn stopping_the_rest<T>(
    what: &'static str,
    shutdown: CancellationToken,
    task: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let result = task.await;
    if !shutdown.is_cancelled() {
        shutdown.cancel();
        return match result {
            Ok(_) => {
                tracing::error!(task = what, "ended outside a shutdown; stopping the process");
                // Not a success: the process must exit non-zero so that it is restarted.
                Err(anyhow::anyhow!("{what} ended outside a shutdown"))
            }
            Err(err) => {
                tracing::error!(task = what, error = format!("{err:#}"), "failed; stopping the process");
                Err(err.context(format!("{what} stopped")))
            }
        };
    }
    result.map_err(|err| err.context(format!("{what} stopped")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_outside_a_shutdown_stops_the_others() {
        let shutdown = CancellationToken::new();
        let failed = stopping_the_rest("the consumer", shutdown.clone(), async {
            anyhow::bail!("broken") as anyhow::Result<()>
        });
        let err = failed.await.unwrap_err();
        assert!(shutdown.is_cancelled(), "the other tasks are told to stop");
        assert_eq!(format!("{err:#}"), "the consumer stopped: broken");

        // A task that ends "well" outside a shutdown is a failure too: the process exits
        // non-zero, so that whatever supervises it restarts it.
        let shutdown = CancellationToken::new();
        let err = stopping_the_rest("the sender", shutdown.clone(), async { Ok(()) }).await.unwrap_err();
        assert!(shutdown.is_cancelled(), "even a task that ends well outside a shutdown stops the rest");
        assert_eq!(err.to_string(), "the sender ended outside a shutdown");

        // During a shutdown, ending is what it should do.
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        stopping_the_rest("the sender", shutdown.clone(), async { Ok(()) }).await.unwrap();
    }
}
