//! The public API as `utsctl send` and `utsctl jobs` use it: one base URL (the gateway), a token
//! from the token service (client credentials, renewed before it expires) or given as is, and
//! retries of 429/503 and connection failures with backoff (honouring `Retry-After`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;

/// How the commands reach the service.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The service's base URL (the gateway: the one address).
    #[arg(long = "url", env = "UTS_URL", default_value = "http://127.0.0.1:18080")]
    pub url: String,
    /// Client id of the token service (with --client-secret).
    #[arg(long, env = "UTS_CLIENT_ID")]
    pub client_id: Option<String>,
    #[arg(long, env = "UTS_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// A bearer token to use as is, instead of client credentials.
    #[arg(long, env = "UTS_TOKEN", hide_env_values = true, conflicts_with = "client_id")]
    pub token: Option<String>,
}

/// Attempts of one request before giving up (429, 503, connection failures).
const ATTEMPTS: u32 = 10;

pub struct Api {
    http: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
    /// The token and when to renew it.
    token: Mutex<Option<(String, Instant)>>,
    /// Retries made (for the summary).
    pub retries: std::sync::atomic::AtomicU64,
}

/// An answer: status, headers we care about, JSON body (Null when none).
pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub body: Value,
}

impl Api {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let credentials = match (&args.client_id, &args.client_secret, &args.token) {
            (Some(id), Some(secret), None) => Some((id.clone(), secret.clone())),
            (None, None, Some(_)) => None,
            (Some(_), None, _) | (None, Some(_), _) => bail!("--client-id and --client-secret go together"),
            _ => {
                bail!("give --client-id and --client-secret (UTS_CLIENT_ID, UTS_CLIENT_SECRET) or --token (UTS_TOKEN)")
            }
        };
        let token = args.token.clone().map(|token| (token, Instant::now() + Duration::from_secs(100 * 365 * 86_400)));
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            base: args.url.trim_end_matches('/').to_owned(),
            credentials,
            token: Mutex::new(token),
            retries: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The current token, fetched from `/oauth/token` when there is none or it expires soon.
    async fn bearer(&self, renew: bool) -> anyhow::Result<String> {
        let mut token = self.token.lock().await;
        if let Some((value, renew_at)) = token.as_ref() {
            if !renew && Instant::now() < *renew_at {
                return Ok(value.clone());
            }
        }
        let Some((id, secret)) = &self.credentials else {
            return token.as_ref().map(|(value, _)| value.clone()).context("the given token was refused");
        };
        let response = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .basic_auth(id, Some(secret))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .with_context(|| format!("asking {}/oauth/token for a token", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != StatusCode::OK {
            bail!(
                "the token service answered {status}: {}",
                body["error_description"].as_str().unwrap_or("no reason given")
            );
        }
        let value = body["access_token"].as_str().context("the token service answered no access_token")?.to_owned();
        let lifetime = body["expires_in"].as_u64().unwrap_or(300);
        // Renewed a minute before it expires (or at half its life when it is short).
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60).max(lifetime / 2));
        *token = Some((value.clone(), renew_at));
        Ok(value)
    }

    /// Sends a request under `path` (relative to the base URL), retrying what may be retried.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut renewed = false;
        for attempt in 1..=ATTEMPTS {
            let token = self.bearer(false).await?;
            let mut request = self.http.request(method.clone(), &url).bearer_auth(&token);
            if let Some(body) = body {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let wait = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let replayed = response.headers().get("idempotent-replayed").is_some();
                    if status == StatusCode::UNAUTHORIZED && self.credentials.is_some() && !renewed {
                        // The token expired or was revoked meanwhile: one fresh token, then give up.
                        renewed = true;
                        self.bearer(true).await?;
                        continue;
                    }
                    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
                        let text = response.text().await.unwrap_or_default();
                        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                        return Ok(Answer { status, replayed, body });
                    }
                    retry_after.map_or_else(|| backoff(attempt), Duration::from_secs)
                }
                Err(err) if err.is_connect() || err.is_timeout() || err.is_request() => backoff(attempt),
                Err(err) => return Err(err).with_context(|| format!("{method} {url}")),
            };
            if attempt == ATTEMPTS {
                break;
            }
            self.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
        bail!("{method} {url}: still refused after {ATTEMPTS} attempts (429/503 or unreachable)")
    }

    /// GET a JSON answer; an error unless 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let answer = self.call(Method::GET, path, None, None).await?;
        if answer.status != StatusCode::OK {
            bail!("GET {path} answered {}: {}", answer.status, error_text(&answer.body));
        }
        Ok(answer.body)
    }
}

/// 0.5 s, 1 s, 2 s … at most 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)).min(30_000))
}

/// The message of an `mdsp` error answer (or the body as text).
pub fn error_text(body: &Value) -> String {
    body["errors"][0]["message"].as_str().map_or_else(|| body.to_string(), str::to_owned)
}
