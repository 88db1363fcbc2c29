//! The query service's configuration: flags with environment variables.

use std::net::SocketAddr;

use uts_common::config::{ApiArgs, RetentionArgs, StageArgs};

/// Projects jobs and their statuses; serves the job queries and the admin API over HTTP.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-service", version, about)]
pub struct Config {
    /// Address of the public HTTP API.
    #[arg(long = "listen-addr", env = "UTS_QUERY_ADDR", default_value = "127.0.0.1:8090")]
    pub listen_addr: SocketAddr,

    /// Kafka consumer group of the projection; every query-service process shares it.
    #[arg(long = "consumer-group", env = "UTS_QUERY_GROUP", default_value = "uts-query-service")]
    pub group: String,

    /// Requests per second allowed per tenant on the job and aggregate endpoints; 0 turns rate
    /// limiting off. The dashboard polls about one request a second per open page.
    #[arg(long = "rate-limit-per-second", env = "UTS_QUERY_RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,

    /// Burst above the steady rate a tenant may send at once; 0 means one second's worth.
    #[arg(long = "rate-limit-burst", env = "UTS_QUERY_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Lifetime of the tokens the token service issues (`POST /oauth/token`), in seconds.
    #[arg(long = "token-ttl-seconds", env = "UTS_TOKEN_TTL_SECONDS", default_value_t = 1800,
          value_parser = clap::value_parser!(u32).range(60..=i64::from(uts_common::tokens::MAX_TTL_SECONDS)))]
    pub token_ttl_seconds: u32,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub stage: StageArgs,

    #[command(flatten)]
    pub api: ApiArgs,
}
