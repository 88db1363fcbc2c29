//! # billing-receiver
//!
//! The **reference billing system** of DESIGN.md §8: a stand-in for a real billing endpoint in
//! local runs, demos and tests of the billing-forwarder. It is not a pipeline stage: it
//! consumes no topic and uses no database.
//!
//! **Serves** on `--listen-addr` (default 127.0.0.1:18070):
//! - `POST /billing/v1/records` with a required `Idempotency-Key`: one version of one daily
//!   bucket ([`record`]). `201 Created` `{recordId, receivedAt, duplicate: false}` the first
//!   time a key is seen; `200 OK` with the *original* `recordId` and `receivedAt` and
//!   `duplicate: true` when it is seen again with the same body; `409 Conflict` when it is seen
//!   again with a different body.
//! - `GET /billing/v1/records` (everything, in arrival order) and `GET /billing/v1/records/{id}`:
//!   what billing received, for tests and demos.
//! - `GET|POST|DELETE /admin/failures`: failure injection ([`failures`]).
//! - `/healthz`; and on `--admin-addr` the usual `/healthz`, `/readyz`, `/metrics`
//!   (`uts_billing_receiver_records_total{outcome="stored|duplicate|conflict|injected_failure"}`).
//!
//! With `--token`, every `/billing` and `/admin` request needs `Authorization: Bearer <token>`.
//!
//! **Guarantees:** at most one record per `Idempotency-Key`, ever (keys do not expire). With
//! `--data-file` the record's line is appended and fsynced before the 201, and the file is
//! reloaded at start, so a record acknowledged before a crash or restart (`kill -9` included)
//! is still there and its key still deduplicates. Without it everything is gone at exit.
//!
//! **Failure modes:** a bad body → 400 naming the field; missing or wrong token → 401; an
//! injected failure → 500, 503 or (after `--timeout-hold-ms`) 504, nothing read or stored; the
//! data file cannot be written → 500 and nothing stored, so the sender retries; a complete line
//! of the data file that does not parse → the receiver refuses to start (skipping it would
//! forget a key); a partial last line (a crash mid-append, never acknowledged) is dropped at
//! start. SIGTERM → stop accepting connections, finish the requests in hand (a request held by
//! the `timeout` mode is answered 503 at once), exit. One process per data file: the
//! deduplication lives in this process's memory.

pub mod config;
pub mod failures;
pub mod record;
mod routes;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uts_common::admin::{self, ReadinessCheck};
use uts_common::telemetry;

pub use config::{BearerToken, Config};
pub use routes::{app, FAILURES_PATH, RECORDS_PATH};

use failures::{FailureInjector, FailureMode, FailurePlan};
use store::RecordStore;

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    pub(crate) store: Arc<RecordStore>,
    pub(crate) failures: FailureInjector,
    /// `None`: no token check.
    pub(crate) token: Option<BearerToken>,
    pub(crate) timeout_hold: Duration,
    /// Cancelled when graceful shutdown starts, so requests held by the `timeout` failure mode
    /// answer at once instead of delaying the exit by the whole hold time.
    pub(crate) stopping: CancellationToken,
    /// Receipts by callback, when configured.
    pub(crate) receipts: Option<routes::ReceiptCallback>,
}

/// A receiver bound to its listeners, with its records loaded, ready to run.
pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    state: Arc<AppState>,
    config: Config,
}

impl Application {
    /// Loads the data file (if any) and binds both listeners.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.token.as_ref().is_some_and(BearerToken::is_empty) {
            anyhow::bail!("--token (UTS_BILLING_RECEIVER_TOKEN) is set but empty; unset it to turn the check off");
        }
        let store = match config.data_file.clone() {
            Some(path) => {
                tokio::task::spawn_blocking(move || {
                    RecordStore::open(&path).with_context(|| format!("loading the data file {}", path.display()))
                })
                .await??
            }
            None => RecordStore::in_memory(),
        };
        let failures = FailureInjector::default();
        if config.fail_first > 0 {
            let plan = FailurePlan { mode: FailureMode::Http500, count: Some(config.fail_first), duration: None };
            failures.set(&plan, Instant::now());
        }
        let state = Arc::new(AppState {
            store: Arc::new(store),
            failures,
            token: config.token.clone(),
            timeout_hold: config.timeout_hold(),
            stopping: CancellationToken::new(),
            receipts: config.receipts_url.clone().map(|url| routes::ReceiptCallback {
                url,
                token: config.receipts_token.clone(),
                http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a plain HTTP client"),
            }),
        });
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding the billing API listener on {}", config.listen_addr))?;
        let admin_listener = TcpListener::bind(config.admin.addr)
            .await
            .with_context(|| format!("binding the admin listener on {}", config.admin.addr))?;
        Ok(Self { listener, admin_listener, state, config })
    }

    /// The bound address of the billing API (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The bound address of `/healthz`, `/readyz` and `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in hand.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (addr, admin_addr) = (self.local_addr(), self.admin_addr());
        // The records are loaded by `build`, and nothing else can be unavailable.
        let ready: ReadinessCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        let admin_shutdown = shutdown.clone();
        let admin_server = axum::serve(self.admin_listener, admin::router(telemetry::metrics_handle(), ready))
            .with_graceful_shutdown(async move { admin_shutdown.cancelled().await });
        let admin_task = tokio::spawn(async move {
            if let Err(err) = admin_server.await {
                tracing::error!(%err, "admin listener failed");
            }
        });

        tracing::info!(
            %addr,
            %admin_addr,
            data_file = ?self.config.data_file,
            records = self.state.store.len(),
            token_required = self.state.token.is_some(),
            fail_first = self.config.fail_first,
            "billing receiver listening"
        );
        let stopping = self.state.stopping.clone();
        axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                stopping.cancel();
            })
            .await
            .context("serving the billing API")?;
        let _ = admin_task.await;
        tracing::info!("billing receiver stopped");
        Ok(())
    }
}

/// Builds and runs the receiver (the binary's entry point).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    telemetry::init(&config.telemetry, "billing-receiver");
    Application::build(config).await?.run_until_stopped(shutdown).await
}
