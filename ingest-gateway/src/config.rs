//! The gateway's configuration: flags with environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use uts_common::config::{ApiArgs, StageArgs};

/// Accepts usage batches over HTTP and makes them durable in Kafka.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ingest-gateway", version, about)]
pub struct Config {
    /// Address of the public HTTP API.
    #[arg(long = "listen-addr", env = "UTS_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Largest accepted request body, in bytes (larger → 413). 200 usages take well under this.
    #[arg(long = "max-body-bytes", env = "UTS_GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Requests per second allowed per tenant; 0 turns rate limiting off.
    #[arg(long = "rate-limit-per-second", env = "UTS_GATEWAY_RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub rate_limit_per_second: u32,

    /// Burst above the steady rate a tenant may send at once; 0 means one second's worth.
    #[arg(long = "rate-limit-burst", env = "UTS_GATEWAY_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Days during which a retry with the same Idempotency-Key returns the original job.
    #[arg(long = "idempotency-window-days", env = "UTS_IDEMPOTENCY_WINDOW_DAYS", default_value_t = 35)]
    pub idempotency_window_days: u32,

    /// How long a tenant's type is cached, in milliseconds.
    #[arg(long = "tenant-cache-ttl-ms", env = "UTS_TENANT_CACHE_TTL_MS", default_value_t = 10_000)]
    pub tenant_cache_ttl_ms: u64,

    /// The query service every request other than the two POSTs is forwarded to (its API
    /// listener's base URL).
    #[arg(long = "query-service-url", env = "UTS_QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8090")]
    pub query_service_url: String,

    #[command(flatten)]
    pub stage: StageArgs,

    #[command(flatten)]
    pub api: ApiArgs,
}

impl Config {
    pub fn tenant_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.tenant_cache_ttl_ms)
    }
}
