//! The query service's configuration: flags with environment variables.

use std::net::SocketAddr;

use uts_common::config::{AdminArgs, AuthArgs, DatabaseArgs, TelemetryArgs};

/// Serves the admin API (tenants, provisioning, rules, KPIs) over HTTP.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-service", version, about)]
pub struct Config {
    /// Address of the public HTTP API.
    #[arg(long = "listen-addr", env = "UTS_QUERY_ADDR", default_value = "127.0.0.1:8090")]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
