//! Configuration groups shared by the binaries, `#[command(flatten)]`ed into each binary's own
//! clap config. Every flag also reads an environment variable; secrets hide their values from
//! `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach Kafka and how the topics are named.
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long = "kafka-brokers", env = "UTS_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,

    /// Extra librdkafka properties as key=value, comma-separated; they win over every other
    /// setting.
    #[arg(long = "kafka-property", env = "UTS_KAFKA_PROPERTIES", value_delimiter = ',')]
    pub properties: Vec<String>,

    /// How to talk to the brokers: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long = "kafka-security-protocol", env = "UTS_KAFKA_SECURITY_PROTOCOL", default_value = "plaintext",
          value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])]
    pub security_protocol: String,

    /// CA certificates (PEM) that verify the brokers' certificates (default: the system's).
    #[arg(long = "kafka-ssl-ca-file", env = "UTS_KAFKA_SSL_CA_FILE")]
    pub ssl_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for brokers that require mutual TLS (with --kafka-ssl-key-file).
    #[arg(long = "kafka-ssl-cert-file", env = "UTS_KAFKA_SSL_CERT_FILE", requires = "ssl_key_file")]
    pub ssl_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "kafka-ssl-key-file", env = "UTS_KAFKA_SSL_KEY_FILE", requires = "ssl_cert_file")]
    pub ssl_key_file: Option<PathBuf>,

    /// SASL mechanism (with the sasl_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long = "kafka-sasl-mechanism", env = "UTS_KAFKA_SASL_MECHANISM",
          value_parser = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])]
    pub sasl_mechanism: Option<String>,

    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "UTS_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password.
    #[arg(long = "kafka-sasl-password", env = "UTS_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,

    /// Prefix of every topic name: `<prefix>.usage-jobs`, `<prefix>.status`, ...
    #[arg(long = "topic-prefix", env = "UTS_TOPIC_PREFIX", default_value = "uts")]
    pub topic_prefix: String,

    /// Partitions of each topic when it is created; bounds the parallelism of every stage.
    #[arg(long = "topic-partitions", env = "UTS_TOPIC_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,

    /// Replication factor of each topic when it is created.
    #[arg(long = "topic-replication", env = "UTS_TOPIC_REPLICATION", default_value_t = 1)]
    pub replication: i32,

    /// How long a produce may wait for the brokers' acknowledgement before it fails, in
    /// milliseconds. Bounds how long a POST waits when Kafka is unreachable.
    #[arg(long = "kafka-produce-timeout-ms", env = "UTS_KAFKA_PRODUCE_TIMEOUT_MS", default_value_t = 5000)]
    pub produce_timeout_ms: u64,

    /// Most messages a consumer stage handles in one batch (one transaction, one wait for the
    /// brokers' acknowledgements): larger batches spread those fixed costs over more messages.
    /// Default: 256, and 1024 for the query service, whose messages are small status events
    /// that net out within a batch (see `KafkaArgs::max_batch`).
    #[arg(long = "consumer-max-batch", env = "UTS_CONSUMER_MAX_BATCH",
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub consumer_max_batch: Option<u32>,

    /// Most kilobytes of message payloads in one consumer batch, beside `--consumer-max-batch`:
    /// a stage that falls behind takes full batches, and what it holds in memory then grows with
    /// its messages' size (a job of 200 usages weighs about 100 times a status event). The
    /// message that crosses the limit still joins the batch, so a larger one is taken alone.
    #[arg(long = "consumer-max-batch-kbytes", env = "UTS_CONSUMER_MAX_BATCH_KBYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub consumer_max_batch_kbytes: u32,

    /// Most kilobytes a consumer prefetches (librdkafka's `queued.max.messages.kbytes`, whose
    /// default of 64 MB per consumer, plus fetch buffers, took workers past 200 MB RSS).
    #[arg(long = "kafka-consumer-queue-kbytes", env = "UTS_KAFKA_CONSUMER_QUEUE_KBYTES", default_value_t = 2048)]
    pub consumer_queue_kbytes: u32,

    /// Most kilobytes one fetch of a consumer brings (librdkafka's `fetch.max.bytes`; a quarter
    /// of it per partition, `max.partition.fetch.bytes`). The limit counts compressed bytes, and
    /// each fetched message set is decompressed whole and kept until its last message is done:
    /// with 2 MB fetches the aggregator held 43 MB of decompressed sets (heaptrack) and reached
    /// 136 MB RSS under full load; with 1 MB it stayed at 90 MB, as fast. A message larger than
    /// the limit is still fetched (alone).
    #[arg(long = "kafka-consumer-fetch-kbytes", env = "UTS_KAFKA_CONSUMER_FETCH_KBYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1000..=52_428))]
    pub consumer_fetch_kbytes: u32,

    /// Most kilobytes a producer keeps queued for the brokers (`queue.buffering.max.kbytes`;
    /// librdkafka's default is 1 GB). A full queue makes a produce wait, never drops.
    #[arg(long = "kafka-producer-queue-kbytes", env = "UTS_KAFKA_PRODUCER_QUEUE_KBYTES", default_value_t = 16384)]
    pub producer_queue_kbytes: u32,

    /// Seconds one consumer batch may be in hand (handled, retried) before `/readyz` calls the
    /// stage stuck and answers 503.
    #[arg(long = "consumer-stall-seconds", env = "UTS_CONSUMER_STALL_SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub consumer_stall_seconds: u64,
}

/// Without the SASL password.
impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("topic_prefix", &self.topic_prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaArgs {
    /// `--consumer-max-batch`, or the stage's own default when it is not set.
    pub fn max_batch(&self, default: u32) -> usize {
        self.consumer_max_batch.unwrap_or(default) as usize
    }

    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }
}

/// The names of the five topics of DESIGN.md §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub usage_jobs: String,
    pub usages_verified: String,
    pub aggregates: String,
    pub status: String,
    pub dead_letter: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            usage_jobs: format!("{prefix}.usage-jobs"),
            usages_verified: format!("{prefix}.usages.verified"),
            aggregates: format!("{prefix}.aggregates"),
            status: format!("{prefix}.status"),
            dead_letter: format!("{prefix}.dead-letter"),
        }
    }

    pub fn all(&self) -> [&str; 5] {
        [&self.usage_jobs, &self.usages_verified, &self.aggregates, &self.status, &self.dead_letter]
    }
}

/// The flags every stage process has: Kafka, PostgreSQL, its admin listener and telemetry (the
/// billing receiver, a stand-in for the billing system, is not a stage).
#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The flags of a process that serves the API: how tokens are verified and the HTTP limits.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// How to reach PostgreSQL.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub url: String,

    /// Maximum connections in this process's pool.
    #[arg(long = "database-max-connections", env = "UTS_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub max_connections: u32,
}

/// The admin listener (`/healthz`, `/readyz`, `/metrics`), kept off the public port.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin listener; port 0 picks a free port (logged at start-up).
    #[arg(long = "admin-addr", env = "UTS_ADMIN_ADDR", default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
}

/// How long a stage keeps its dedup rows (`uts_common::db::prune`).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Days a dedup row (decision, applied batch, applied event) is kept; must exceed the
    /// gateway's Idempotency-Key window plus the topics' retention. 0 keeps them forever.
    #[arg(long = "dedup-retention-days", env = "UTS_DEDUP_RETENTION_DAYS", default_value_t = 90)]
    pub days: u32,
}

/// Limits of an HTTP listener (`uts_common::http::serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// How long a client may take to send a request's headers, in milliseconds; slower
    /// connections are closed.
    #[arg(long = "http-header-timeout-ms", env = "UTS_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// How long a request may take, body read included, in milliseconds; then 503.
    #[arg(long = "http-request-timeout-ms", env = "UTS_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Open connections at most; further clients wait in the listen backlog.
    #[arg(long = "http-max-connections", env = "UTS_HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub connection_limit: usize,
}

impl Default for HttpArgs {
    fn default() -> Self {
        Self { header_timeout_ms: 10_000, request_timeout_ms: 30_000, connection_limit: 4096 }
    }
}

/// Logging and traces.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format: `text` for people, `json` for log collectors. The filter comes from RUST_LOG.
    #[arg(long = "log-format", env = "UTS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint (base URL, e.g. `http://collector:4318`) to export traces to; traces
    /// are off without it (or with it empty).
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces starting in this process that are sampled (0 to 1); a trace that
    /// arrives with a message or request keeps its sampling decision.
    #[arg(long = "trace-sample-ratio", env = "UTS_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Keys that verify bearer tokens besides the token service's own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// Shared HS256 secret (local runs and tests).
    #[arg(long = "jwt-hs256-secret", env = "UTS_JWT_HS256_SECRET", hide_env_values = true)]
    pub hs256_secret: Option<String>,

    /// PEM files with RSA or EC public keys (RS256/RS384/RS512, ES256/ES384), comma-separated.
    #[arg(long = "jwt-public-key-file", env = "UTS_JWT_PUBLIC_KEY_FILES", value_delimiter = ',')]
    pub public_key_files: Vec<PathBuf>,

    /// A JWKS document (JSON Web Key Set) with the issuer's public keys.
    #[arg(long = "jwt-jwks-file", env = "UTS_JWT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// The JWKS URL of an external identity provider (http or https): fetched at start, every
    /// 5 minutes, and when a token names a key not seen yet (at most every 10 s).
    #[arg(long = "jwt-jwks-url", env = "UTS_JWT_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Required `iss` claim, when set.
    #[arg(long = "jwt-issuer", env = "UTS_JWT_ISSUER")]
    pub issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long = "jwt-audience", env = "UTS_JWT_AUDIENCE")]
    pub audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long = "jwt-leeway-seconds", env = "UTS_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    pub leeway_seconds: u64,
}
