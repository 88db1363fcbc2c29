//! # query-service
//!
//! **Consumes** `uts.usage-jobs` and `uts.status` (consumer group `uts-query-service`) and
//! projects them into PostgreSQL ([`projection`]): jobs, usage counts per (job, application,
//! unit, processStatus), terminal counts and job errors, idempotent on job ids and event ids,
//! correct in any arrival order.
//!
//! **Serves**, under `/api/usagetransparency/v3`:
//! - [`jobs_api`]: `GET /usagesJobs`, `/usagesJobs/{id}`, `/usagesJobs/{id}/errors` (scope
//!   `uts.usages.read`), the caller's own 1000 most recent jobs only;
//! - [`monthly_api`]: `GET /aggregatedMonthlyConsumerUsage` and `/aggregatedMonthlyProviderUsage`
//!   (scope `uts.aggregates.read`), computed from the daily aggregates with the KPI's functions;
//! - [`admin_api`] under `/admin`: tenants, provisioning, rules and KPIs (scope `uts.admin`;
//!   admin data is global, it belongs to whoever operates the service);
//! - `/openapi.json`, the OpenAPI document of the whole public API;
//! - the [`token_service`] at the root: `/oauth/token`, `/token_keys`, `/.well-known/jwks.json`;
//! - and the [`dashboard`] under `/ui/`, a client of the endpoints above.
//!
//! **Limits:** the job and aggregate GETs are rate limited per tenant (429 with `Retry-After`);
//! list sizes are capped at 1000; admin bodies at 64 KiB.
//!
//! **Delivery:** a batch of projection updates is applied in one PostgreSQL transaction that
//! also records the applied event ids; offsets are stored only after it committed, so a crash
//! neither loses nor doubles (the crash test kills this process).
//!
//! **Failure modes:** bad input → 4xx in the `mdsp.core.generic.*` format naming the parameter
//! or field; undecodable messages → `uts.dead-letter`, the partition carries on; PostgreSQL down
//! → 503 on the API and the projection backs off without skipping; SIGTERM → stop accepting
//! connections, finish the requests in hand, commit offsets, exit.

pub mod admin_api;
pub mod config;
pub mod dashboard;
pub mod freshness;
pub mod jobs_api;
mod kpi;
pub mod month;
pub mod monthly_api;
pub mod projection;
mod request;
mod routes;
pub mod token_service;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uts_common::admin;
use uts_common::auth::Authenticator;
use uts_common::telemetry;

/// The projection's batch: status events are small and a job's events of several stages net out
/// within one batch (fewer count rows). At 250k usages/s in the 10,000-bucket shape the query
/// service at 256 fell 17,000 messages behind (probe jobs invisible for 35 s) and took the whole
/// pipeline's latency with it; at 1024 every lag stayed under 1,000 and POST→COMPLETED p99 was
/// 1.2 s.
pub const PROJECTION_MAX_BATCH: u32 = 1024;

pub use config::Config;
pub use routes::{app, OPENAPI};

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    pub(crate) auth: Authenticator,
    pub(crate) pool: PgPool,
    /// Per-tenant rate limit of the job and aggregate endpoints (None: off).
    pub(crate) throttle: Option<uts_common::throttle::Throttle>,
    pub(crate) tokens: token_service::TokenIssuer,
    /// Read-your-writes of the job list.
    pub(crate) freshness: freshness::Freshness,
}

impl AppState {
    /// Counts one request of `tenant` against its rate limit: 429 when over.
    pub(crate) fn throttle(&self, tenant: &str) -> Result<(), uts_common::error::ApiError> {
        self.throttle.as_ref().map_or(Ok(()), |throttle| throttle.check(tenant))
    }
}

/// A query service bound to its listener, ready to run.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    admin_addr: SocketAddr,
    /// Consumes uts.usage-jobs and uts.status into the projections.
    runner: uts_common::runner::Runner,
    jobs_topic: String,
    http: uts_common::config::HttpArgs,
    retention_days: u32,
}

impl Application {
    /// Loads the token verification keys and binds the API listener. The pool is passed in so
    /// that tests can hand over their own database.
    pub async fn build(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        // The first replica to start makes the first signing key.
        if let Some(kid) = uts_common::tokens::ensure_signing_key(&pool).await? {
            tracing::info!(%kid, "created the token service's first signing key");
        }
        let auth =
            Authenticator::load(&config.api.auth, pool.clone()).await.context("loading token verification keys")?;
        let throttle = uts_common::throttle::Throttle::new(config.rate_limit_per_second, config.rate_limit_burst);
        let tokens = token_service::TokenIssuer::new(config.token_ttl_seconds);
        // At 0 from the start: "none expired" is not "no data".
        metrics::counter!("uts_query_list_wait_expired_total").increment(0);
        metrics::counter!("uts_query_job_wait_expired_total").increment(0);
        let topics = config.stage.kafka.topics();
        let runner = uts_common::runner::Runner::new(
            &config.stage.kafka,
            uts_common::proto::v1::Stage::QueryService,
            &config.group,
            &[&topics.usage_jobs, &topics.status],
        )?
        .with_default_max_batch(&config.stage.kafka, PROJECTION_MAX_BATCH);
        let freshness = freshness::Freshness::new(runner.producer.clone(), topics.usage_jobs.clone());
        let state = Arc::new(AppState { auth, pool, throttle, tokens, freshness });
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding the API listener on {}", config.listen_addr))?;
        Ok(Self {
            listener,
            state,
            admin_addr: config.stage.admin.addr,
            runner,
            jobs_topic: topics.usage_jobs,
            http: config.api.http,
            retention_days: config.retention.days,
        })
    }

    /// The bound address of the public API (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains the requests in hand.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let metrics = telemetry::metrics_handle();
        // Ready only when both are reachable: a projection that cannot reach Kafka serves stale jobs.
        let ready = admin::with_consumer(
            admin::kafka_and_database(Some(self.runner.producer.clone()), self.state.pool.clone()),
            self.runner.liveness.clone(),
        );
        let (_, admin_task) = admin::serve(self.admin_addr, metrics, ready, shutdown.clone()).await?;

        tracing::info!(addr = %self.local_addr(), "query service listening");
        let projector = projection::Projector { pool: self.state.pool.clone(), jobs_topic: self.jobs_topic };
        let projecting = tokio::spawn(uts_common::shutdown::stopping_the_rest(
            "the projection",
            shutdown.clone(),
            self.runner.run(projector, shutdown.clone()),
        ));
        let refresher = self.state.auth.spawn_refresh(shutdown.clone());
        let pruner = uts_common::db::spawn_pruner(
            self.state.pool.clone(),
            uts_common::db::DedupTable::JobAppliedEvents,
            self.retention_days,
            shutdown.clone(),
        );
        let served = uts_common::http::serve(self.listener, app(self.state), &self.http, shutdown.clone())
            .await
            .context("serving the API");
        // The projection stops on the same token; its result matters as much as the server's.
        shutdown.cancel();
        let projected = projecting.await.context("the projection task panicked")?;
        let _ = admin_task.await;
        pruner.abort();
        refresher.abort();
        served?;
        projected?;
        tracing::info!("query service stopped");
        Ok(())
    }
}

/// Builds and runs the query service with its own pool (the binary's entry point).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = uts_common::runner::start(&config.stage, uts_common::proto::v1::Stage::QueryService).await?;
    Application::build(config, pool).await?.run_until_stopped(shutdown).await
}
