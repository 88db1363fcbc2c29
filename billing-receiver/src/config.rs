//! The receiver's configuration: flags with environment variables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uts_common::config::{AdminArgs, TelemetryArgs};

/// Reference billing system: stores the daily aggregates the billing-forwarder sends, once per
/// Idempotency-Key, and can be told to fail on purpose.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "billing-receiver", version, about)]
pub struct Config {
    /// Address of the billing API (records, failure injection, /healthz).
    #[arg(long = "listen-addr", env = "UTS_BILLING_RECEIVER_ADDR", default_value = "127.0.0.1:18070")]
    pub listen_addr: SocketAddr,

    /// Bearer token every /billing and /admin request must carry; no check when unset. Prefer
    /// the environment variable: a command-line value is visible to other local users.
    #[arg(long = "token", env = "UTS_BILLING_RECEIVER_TOKEN", hide_env_values = true)]
    pub token: Option<BearerToken>,

    /// JSON-lines file the stored records are appended to (fsynced before each 201) and
    /// reloaded from at start, so deduplication survives a restart. In memory only when unset.
    #[arg(long = "data-file", env = "UTS_BILLING_RECEIVER_DATA_FILE")]
    pub data_file: Option<PathBuf>,

    /// Answer 500 to the first N record POSTs, as `POST /admin/failures {"mode":"http500","count":N}`.
    #[arg(long = "fail-first", env = "UTS_BILLING_RECEIVER_FAIL_FIRST", default_value_t = 0)]
    pub fail_first: u64,

    /// How long the `timeout` failure mode holds a request before answering 504, in milliseconds.
    #[arg(long = "timeout-hold-ms", env = "UTS_BILLING_RECEIVER_TIMEOUT_HOLD_MS", default_value_t = 30_000)]
    pub timeout_hold_ms: u64,

    /// Receipts by callback: when set, a new record is answered 202 Accepted and its receipt is
    /// POSTed here afterwards (the billing-forwarder's `/billing/v1/receipts`), retried until
    /// taken. Unset: the 201 answer is the receipt.
    #[arg(long = "receipts-url", env = "UTS_BILLING_RECEIVER_RECEIPTS_URL")]
    pub receipts_url: Option<String>,

    /// Bearer token of the receipt callbacks (the forwarder's `--receipts-token`).
    #[arg(long = "receipts-token", env = "UTS_BILLING_RECEIVER_RECEIPTS_TOKEN", hide_env_values = true)]
    pub receipts_token: Option<String>,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Config {
    pub fn timeout_hold(&self) -> Duration {
        Duration::from_millis(self.timeout_hold_ms)
    }
}

/// The shared bearer token. Its `Debug` never shows the value, so logging the config is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Compares in time independent of where the first difference is, so response timing does
    /// not reveal a prefix of the token.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.as_bytes();
        let presented = presented.as_bytes();
        expected.len() == presented.len() && expected.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for BearerToken {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = Config::parse_from(["billing-receiver", "--token=s3cret-value"]);
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(config.token.as_ref().unwrap().matches("s3cret-value"));
    }

    #[test]
    fn token_comparison_is_exact() {
        let token = BearerToken::from("abc".to_owned());
        assert!(token.matches("abc"));
        for wrong in ["", "ab", "abd", "abcd", "ABC"] {
            assert!(!token.matches(wrong), "{wrong}");
        }
    }

    #[test]
    fn defaults_bind_to_loopback() {
        let config = Config::parse_from(["billing-receiver"]);
        assert_eq!(config.listen_addr.to_string(), "127.0.0.1:18070");
        assert_eq!(config.timeout_hold(), Duration::from_secs(30));
        assert_eq!(config.fail_first, 0);
        assert!(config.token.is_none() && config.data_file.is_none());
    }
}
