//! The forwarder's settings.

use uts_common::config::StageArgs;

/// Consumer group of every forwarder process.
pub const GROUP: &str = "uts-billing-forwarder";

/// Forwards billable daily aggregates to the billing system.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "billing-forwarder", version, about)]
pub struct Config {
    /// Where billing records are POSTed.
    #[arg(long = "billing-url", env = "UTS_BILLING_URL", default_value = "http://127.0.0.1:18070/billing/v1/records")]
    pub billing_url: String,

    /// Bearer token for the billing endpoint, if it needs one.
    #[arg(long = "billing-token", env = "UTS_BILLING_TOKEN", hide_env_values = true)]
    pub billing_token: Option<String>,

    /// Address of the receipts endpoint (`POST /billing/v1/receipts`), where a billing system
    /// that answered a record with 202 Accepted sends its receipt later.
    #[arg(long = "receipts-addr", env = "UTS_BILLING_RECEIPTS_ADDR", default_value = "127.0.0.1:8086")]
    pub receipts_addr: std::net::SocketAddr,

    /// Bearer token the billing system's receipts must carry; receipts are refused (401) when
    /// unset. Prefer the environment variable: a command-line value is visible to other users.
    #[arg(long = "receipts-token", env = "UTS_BILLING_RECEIPTS_TOKEN", hide_env_values = true)]
    pub receipts_token: Option<String>,

    /// How often the outbox is scanned for records due, in milliseconds, when this process
    /// wrote nothing new (new rows wake the sender at once): retries, cadence boundaries and
    /// rows written by other forwarders are found within this time.
    #[arg(long = "send-interval-ms", env = "UTS_BILLING_SEND_INTERVAL_MS", default_value_t = 200)]
    pub send_interval_ms: u64,

    /// Billing cadence in seconds: 0 sends each bucket's newest version as soon as it is
    /// written (near real time); N > 0 sends at most once per N seconds per bucket, at the
    /// multiples of N since the epoch (3600: at the top of every hour), the newest version
    /// covering all those written meanwhile.
    #[arg(long = "cadence-seconds", env = "UTS_BILLING_CADENCE_SECONDS", default_value_t = 0)]
    pub cadence_seconds: u64,

    /// Records sent at once (different buckets; a bucket has at most one record in flight).
    #[arg(long = "max-in-flight", env = "UTS_BILLING_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_in_flight: u16,

    /// Records claimed per round (each of another bucket), sent --max-in-flight at a time. A
    /// claim reads every unsent row, so a larger round costs less per record when thousands of
    /// buckets are due.
    #[arg(long = "claim-batch", env = "UTS_BILLING_CLAIM_BATCH", default_value_t = 1024,
          value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub claim_batch: u16,

    /// First retry delay after a failed send, in milliseconds; doubles per attempt.
    #[arg(long = "retry-base-ms", env = "UTS_BILLING_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,

    /// Longest retry delay, in milliseconds.
    #[arg(long = "retry-max-ms", env = "UTS_BILLING_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,

    /// Timeout of one billing request, in milliseconds.
    #[arg(long = "request-timeout-ms", env = "UTS_BILLING_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Kafka consumer group; every forwarder process of one deployment shares it.
    #[arg(long = "consumer-group", env = "UTS_BILLING_FORWARDER_GROUP", default_value = GROUP)]
    pub group: String,

    #[command(flatten)]
    pub stage: StageArgs,
}

impl Config {
    /// How long a claimed record is left to the forwarder that claimed it: three requests and
    /// a margin, at least 30 s. A record of the round whose send could not start in time to
    /// finish within the lease is not sent but released (the sender checks before each send),
    /// so an expired lease never lets two forwarders send versions of one bucket at once.
    pub fn lease(&self) -> std::time::Duration {
        (std::time::Duration::from_millis(self.request_timeout_ms) * 3 + std::time::Duration::from_secs(5))
            .max(std::time::Duration::from_secs(30))
    }
}
