//! The admin listener: `/healthz` (the process runs), `/readyz` (its dependencies answer) and
//! `/metrics` (Prometheus text format), on its own port, away from the public API.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A readiness check: `Err(reason)` makes `/readyz` answer 503 with the reason.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    ready: ReadinessCheck,
}

pub fn router(metrics: PrometheusHandle, ready: ReadinessCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|State(state): State<AdminState>| async move { state.metrics.render() }))
        .fallback(|| async {
            crate::error::ApiError::no_match(
                "no such endpoint (the admin listener serves /healthz, /readyz and /metrics)",
            )
        })
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .with_state(AdminState { metrics, ready })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// Ready when Kafka answers a metadata request (if a producer is given) and PostgreSQL answers
/// `SELECT 1`: the readiness of every stage.
pub fn kafka_and_database(producer: Option<crate::kafka::DurableProducer>, pool: sqlx::PgPool) -> ReadinessCheck {
    Arc::new(move || {
        let (producer, pool) = (producer.clone(), pool.clone());
        Box::pin(async move {
            if let Some(producer) = producer {
                crate::kafka::check_reachable(&producer, std::time::Duration::from_secs(2))
                    .await
                    .map_err(|err| format!("Kafka unreachable: {err}"))?;
            }
            sqlx::query("SELECT 1").execute(&pool).await.map_err(|err| format!("PostgreSQL unreachable: {err}"))?;
            Ok(())
        })
    })
}

/// `check`, and also not ready when the consumer loop has stopped or a batch has been in hand
/// longer than the liveness's stall (`--consumer-stall-seconds`, stuck): a stage that consumes
/// nothing is not ready, whatever its dependencies say.
pub fn with_consumer(check: ReadinessCheck, liveness: Arc<crate::runner::Liveness>) -> ReadinessCheck {
    Arc::new(move || {
        let (check, liveness) = (check.clone(), liveness.clone());
        Box::pin(async move {
            liveness.check()?;
            check().await
        })
    })
}

/// Binds the admin listener and serves it until `shutdown` is cancelled. Returns the bound
/// address (useful with port 0) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the admin listener on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "admin listener (/healthz, /readyz, /metrics)");
    let app = router(metrics, ready);
    let task = tokio::spawn(async move {
        let served = crate::http::serve(listener, app, &crate::config::HttpArgs::default(), shutdown).await;
        if let Err(err) = served {
            tracing::error!(%err, "admin listener failed");
        }
    });
    Ok((bound, task))
}
