//! # ingest-gateway
//!
//! **Serves** `POST /api/usagetransparency/v3/usagesJobs` and the older `POST …/usages`, and is
//! the service's one address: every other request (the GETs, the admin API, the dashboard, the
//! OpenAPI document, the token service) is forwarded to the query service ([`forward`]), so a
//! client needs one base URL, as with the original, while the stages stay separate processes.
//!
//! **Produces** each accepted request as one `uts.v1.UsageJob` to `uts.usage-jobs`, keyed by
//! job id. Nothing is written anywhere else on the hot path (the `Idempotency-Key` claim in
//! PostgreSQL is the one exception, and only when the header is sent).
//!
//! **Delivery guarantee:** the 202 (or 200) is sent only after Kafka acknowledged the job with
//! `acks=all` through an idempotent producer, so an acknowledged job is durable. A job is one
//! message, so nothing is ever half-written. When Kafka is unreachable the produce fails within
//! `--kafka-produce-timeout-ms` and the client gets 503; it may retry, with the same
//! `Idempotency-Key` to be sure nothing is counted twice (see [`idempotency`]).
//!
//! **Failure modes:** bad input → 4xx in the `mdsp.core.generic.*` format naming the field, and
//! nothing produced; PostgreSQL down → tenant checks and idempotency claims fail with 503 (a
//! tenant type already cached keeps requests without `Idempotency-Key` flowing); SIGTERM →
//! stop accepting connections, finish the requests in hand, flush the producer, exit.

pub mod config;
mod forward;
pub mod idempotency;
pub mod payload;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::Producer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uts_common::admin;
use uts_common::auth::Authenticator;
use uts_common::tenants::TenantDirectory;
use uts_common::{kafka, telemetry};

pub use config::Config;
pub use routes::app;

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    pub(crate) auth: Authenticator,
    /// Tenant types, cached: the hot path must not query PostgreSQL per request.
    pub(crate) tenants: TenantDirectory,
    pub(crate) producer: kafka::DurableProducer,
    /// Refuse at once (503) while the brokers are known to be unreachable, instead of letting
    /// every request wait for the delivery timeout.
    pub(crate) kafka_health: kafka::KafkaHealth,
    pub(crate) jobs_topic: String,
    pub(crate) produce_timeout: Duration,
    pub(crate) pool: PgPool,
    pub(crate) idempotency_window: chrono::Duration,
    pub(crate) max_body_bytes: usize,
    /// `None` when rate limiting is off.
    pub(crate) throttle: Option<uts_common::throttle::Throttle>,
    /// Where every request other than the two POSTs goes (the query service).
    pub(crate) upstream: forward::Upstream,
}

/// A gateway bound to its listeners, ready to run.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    admin_addr: SocketAddr,
    config: Config,
}

impl Application {
    /// Connects the producer and binds the listeners. The pool is passed in so that tests can
    /// hand over their own database.
    pub async fn build(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        let auth =
            Authenticator::load(&config.api.auth, pool.clone()).await.context("loading token verification keys")?;
        let upstream = forward::Upstream::new(&config.query_service_url)?;
        let (producer, kafka_health) = kafka::durable_producer(&config.stage.kafka)?;
        // Failure counters exist from the start at 0 ("no failures", not "no data").
        metrics::counter!("uts_gateway_kafka_produce_failures_total").increment(0);
        metrics::counter!("uts_gateway_forward_failures_total").increment(0);
        let state = Arc::new(AppState {
            auth,
            tenants: TenantDirectory::new(pool.clone(), config.tenant_cache_ttl()),
            producer,
            kafka_health,
            jobs_topic: config.stage.kafka.topics().usage_jobs,
            produce_timeout: config.stage.kafka.produce_timeout(),
            pool,
            idempotency_window: chrono::Duration::days(i64::from(config.idempotency_window_days)),
            max_body_bytes: config.max_body_bytes,
            throttle: uts_common::throttle::Throttle::new(config.rate_limit_per_second, config.rate_limit_burst),
            upstream,
        });
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding the API listener on {}", config.listen_addr))?;
        Ok(Self { listener, state, admin_addr: config.stage.admin.addr, config })
    }

    /// The bound address of the public API (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains the requests in hand and flushes the
    /// producer.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let metrics = telemetry::metrics_handle();
        let ready = admin::kafka_and_database(Some(self.state.producer.clone()), self.state.pool.clone());
        let (_, admin_task) = admin::serve(self.admin_addr, metrics, ready, shutdown.clone()).await?;
        let refresher = self.state.auth.spawn_refresh(shutdown.clone());
        let pruner = tokio::spawn(prune_idempotency_keys(self.state.clone(), shutdown.clone()));
        let prober = tokio::spawn(self.state.kafka_health.clone().probe_while_down(
            self.state.producer.clone(),
            Duration::from_millis(500),
            shutdown.clone(),
        ));

        tracing::info!(
            addr = %self.local_addr(),
            topic = %self.state.jobs_topic,
            rate_limit = self.config.rate_limit_per_second,
            "ingest gateway listening"
        );
        let state = self.state.clone();
        uts_common::http::serve(self.listener, app(state.clone()), &self.config.api.http, shutdown)
            .await
            .context("serving the API")?;

        // Every acknowledged request already waited for its delivery; this only bounds the
        // exit when a client went away mid-request.
        let producer = state.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await?
            .context("flushing the Kafka producer")?;
        pruner.abort();
        prober.abort();
        refresher.abort();
        let _ = admin_task.await;
        tracing::info!("ingest gateway stopped");
        Ok(())
    }
}

/// Builds and runs the gateway with its own pool (the binary's entry point).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = uts_common::runner::start(&config.stage, uts_common::proto::v1::Stage::Gateway).await?;
    Application::build(config, pool).await?.run_until_stopped(shutdown).await
}

async fn prune_idempotency_keys(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match idempotency::prune(&state.pool, state.idempotency_window).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned expired idempotency keys"),
            Err(err) => tracing::warn!(%err, "pruning idempotency keys failed; will retry"),
        }
    }
}
