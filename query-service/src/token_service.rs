//! The token service (DESIGN.md §8a), at the root of the one address as the official clients
//! expect it:
//!
//! - `POST /oauth/token`: OAuth 2.0 client-credentials grant (RFC 6749 §4.4). The client
//!   authenticates with HTTP Basic (`client_secret_basic`) or with `client_id`/`client_secret`
//!   in the form (`client_secret_post`), not both. The answer is an RS256 JWT with the claims the
//!   services read (`ten`, `scope`, `sub`, `client_id`, `iat`, `exp`, `iss`, `jti`; `kid` in the
//!   header). `scope` may narrow the client's scopes. Errors are RFC 6749 §5.2 answers
//!   (`{"error", "error_description"}`): 400 `invalid_request` / `unsupported_grant_type` /
//!   `invalid_scope`, 401 `invalid_client` (an unknown client and a wrong secret answer alike and
//!   take as long), 429 past [`TOKENS_PER_SECOND`] per client, 503 when PostgreSQL is down.
//! - `GET /token_keys`: the accepted public keys in the shape of the original's UAA
//!   (`{"keys":[{"kid","kty","alg","use","value":PEM,"n","e"}]}`), the current key first: the
//!   official Node client only reads the first entry.
//! - `GET /.well-known/jwks.json`: the same keys as a JWK set (RFC 7517).
//!
//! Secrets are checked with argon2id off the async threads, at most [`HASHING_AT_ONCE`] at a time,
//! so a flood of token requests cannot take the query API's threads.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use uts_common::auth::{Claims, ScopeClaim};
use uts_common::tokens;

use crate::AppState;

/// Token requests allowed per client and second (burst: twice that).
pub const TOKENS_PER_SECOND: u32 = 5;

/// Secret checks running at once; the rest wait (at most [`HASHING_WAIT`]).
pub const HASHING_AT_ONCE: usize = 2;
const HASHING_WAIT: Duration = Duration::from_secs(5);

/// Largest token request body: a form with a grant type, an id, a secret and scopes.
const MAX_BODY_BYTES: usize = 4096;

/// The token service's state, part of the query service's.
pub struct TokenIssuer {
    pub(crate) ttl_seconds: u32,
    hashing: Semaphore,
    throttle: uts_common::throttle::Throttle,
}

impl TokenIssuer {
    pub fn new(ttl_seconds: u32) -> Self {
        Self {
            ttl_seconds,
            hashing: Semaphore::new(HASHING_AT_ONCE),
            throttle: uts_common::throttle::Throttle::new(TOKENS_PER_SECOND, TOKENS_PER_SECOND * 2)
                .expect("a non-zero rate"),
        }
    }
}

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/token_keys", get(token_keys))
        .route("/.well-known/jwks.json", get(jwks))
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// 401 after HTTP Basic: the challenge (RFC 6749 §5.2).
    basic_challenge: bool,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(basic: bool, description: impl Into<String>) -> Self {
        Self { basic_challenge: basic, ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description) }
    }

    fn unavailable(description: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description)
        }
    }

    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into(), basic_challenge: false, retry_after: None }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"error": self.error, "error_description": self.description}))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.basic_challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="uts""#));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        metrics::counter!("uts_query_token_requests_total", "outcome" => self.error).increment(1);
        response
    }
}

/// The parameters of a token request.
#[derive(Debug, Default, PartialEq, Eq)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

/// Parses the form: unknown parameters are ignored (RFC 6749 §3.2), repeated ones refused.
fn parse_form(body: &[u8]) -> Result<TokenRequest, OAuthError> {
    let mut request = TokenRequest::default();
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match name.as_ref() {
            "grant_type" => &mut request.grant_type,
            "client_id" => &mut request.client_id,
            "client_secret" => &mut request.client_secret,
            "scope" => &mut request.scope,
            _ => continue,
        };
        if slot.is_some() {
            return Err(OAuthError::invalid_request(format!("{name} must be given at most once")));
        }
        *slot = Some(value.into_owned());
    }
    Ok(request)
}

/// The client credentials: (id, secret, whether HTTP Basic carried them).
fn credentials(headers: &HeaderMap, form: &mut TokenRequest) -> Result<(String, String, bool), OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().ok().and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")));
            let decoded = text
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    OAuthError::invalid_client(
                        true,
                        "the Authorization header must be 'Basic base64(client_id:client_secret)'",
                    )
                })?;
            let (id, secret) = decoded.split_once(':').ok_or_else(|| {
                OAuthError::invalid_client(true, "the Basic credentials must be client_id:client_secret")
            })?;
            Some((id.to_owned(), secret.to_owned()))
        }
    };
    match (basic, form.client_id.take(), form.client_secret.take()) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(OAuthError::invalid_request(
            "the client authenticated twice: use either HTTP Basic or client_id and client_secret in the body",
        )),
        (Some((id, secret)), None, None) => Ok((id, secret, true)),
        (None, Some(id), Some(secret)) => Ok((id, secret, false)),
        (None, Some(_), None) => Err(OAuthError::invalid_client(false, "client_secret is missing")),
        (None, None, _) => Err(OAuthError::invalid_client(
            false,
            "the client must authenticate: HTTP Basic or client_id and client_secret in the body",
        )),
    }
}

/// The scopes to grant: all of the client's, or those asked for (each one the client has).
fn granted_scopes(client_scopes: &[String], asked: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(asked) = asked.filter(|text| !text.trim().is_empty()) else {
        return Ok(client_scopes.to_vec());
    };
    let mut granted: Vec<String> = Vec::new();
    for scope in asked.split_whitespace() {
        if !client_scopes.iter().any(|have| have == scope) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("the client was not given the scope {scope:?} (it has: {})", client_scopes.join(" ")),
            ));
        }
        if !granted.iter().any(|have| have == scope) {
            granted.push(scope.to_owned());
        }
    }
    Ok(granted)
}

#[derive(Debug, Serialize)]
struct TokenAnswer {
    access_token: String,
    token_type: &'static str,
    expires_in: u32,
    scope: String,
    jti: String,
}

async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, OAuthError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence != "application/x-www-form-urlencoded" {
        return Err(OAuthError::invalid_request(
            "the body must be a form: Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let bytes = uts_common::http::read_body(body, MAX_BODY_BYTES)
        .await
        .map_err(|err| OAuthError::invalid_request(err.message))?;
    let mut form = parse_form(&bytes)?;
    match form.grant_type.as_deref() {
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; this service issues client_credentials tokens"),
            ))
        }
    }
    let (client_id, secret, basic) = credentials(&headers, &mut form)?;
    let issuer = &state.tokens;
    if let Err(err) = issuer.throttle.check(&client_id) {
        return Err(OAuthError {
            retry_after: err.retry_after,
            ..OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request",
                format!("too many token requests for this client; retry after {} s", err.retry_after.unwrap_or(1)),
            )
        });
    }
    let stored = tokens::client_with_hash(&state.pool, &client_id).await.map_err(|err| {
        tracing::warn!(%err, "token request refused: PostgreSQL unavailable");
        OAuthError::unavailable("PostgreSQL is unavailable; retry later")
    })?;
    let hash = stored.as_ref().map_or_else(|| tokens::decoy_hash().to_owned(), |(_, hash)| hash.clone());
    let permit = tokio::time::timeout(HASHING_WAIT, issuer.hashing.acquire())
        .await
        .map_err(|_| OAuthError::unavailable("the token service is busy; retry later"))?
        .expect("the semaphore is never closed");
    let matches = tokio::task::spawn_blocking(move || tokens::secret_matches(&hash, &secret)).await.unwrap_or(false);
    drop(permit);
    let client = match stored {
        Some((client, _)) if matches => client,
        _ => return Err(OAuthError::invalid_client(basic, "unknown client or wrong secret")),
    };
    if client.revoked_at.is_some() {
        return Err(OAuthError::invalid_client(basic, "the client has been revoked"));
    }
    let scopes = granted_scopes(&client.scopes, form.scope.as_deref())?;
    let (access_token, jti) = sign(&state, &client, &scopes).await?;
    metrics::counter!("uts_query_token_requests_total", "outcome" => "issued").increment(1);
    let answer = TokenAnswer {
        access_token,
        token_type: "bearer",
        expires_in: issuer.ttl_seconds,
        scope: scopes.join(" "),
        jti,
    };
    Ok(([(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], Json(answer)).into_response())
}

/// Signs a token for `client` with the current key (creating the first key if there is none).
async fn sign(state: &AppState, client: &tokens::Client, scopes: &[String]) -> Result<(String, String), OAuthError> {
    let unavailable = |err: &dyn std::fmt::Display| {
        tracing::warn!(%err, "token request refused: no signing key");
        OAuthError::unavailable("PostgreSQL is unavailable; retry later")
    };
    let mut current = tokens::current_signing_key(&state.pool).await.map_err(|err| unavailable(&err))?;
    if current.is_none() {
        tokens::ensure_signing_key(&state.pool).await.map_err(|err| unavailable(&err))?;
        current = tokens::current_signing_key(&state.pool).await.map_err(|err| unavailable(&err))?;
    }
    let (kid, private_pem) = current.ok_or_else(|| unavailable(&"no current signing key"))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes())
        .map_err(|err| OAuthError::unavailable(format!("the signing key cannot be read: {err}")))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = Claims {
        ten: Some(client.tenant_id.clone()),
        scope: Some(ScopeClaim::List(scopes.to_vec())),
        user_name: None,
        sub: Some(client.client_id.clone()),
        exp: now + u64::from(state.tokens.ttl_seconds),
        iat: Some(now),
        iss: Some(tokens::ISSUER.to_owned()),
        client_id: Some(client.client_id.clone()),
        jti: Some(jti.clone()),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid);
    let token = jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|err| OAuthError::unavailable(format!("signing failed: {err}")))?;
    Ok((token, jti))
}

async fn accepted(state: &AppState) -> Result<Vec<tokens::PublicKey>, uts_common::error::ApiError> {
    tokens::accepted_keys(&state.pool).await.map_err(crate::request::storage_error)
}

/// `GET /token_keys`.
async fn token_keys(State(state): State<Arc<AppState>>) -> Result<Response, uts_common::error::ApiError> {
    let keys: Vec<_> = accepted(&state)
        .await?
        .into_iter()
        .map(|key| {
            json!({"kid": key.kid, "kty": "RSA", "alg": "RS256", "use": "sig",
                   "value": key.public_key_pem, "n": key.jwk_n, "e": key.jwk_e})
        })
        .collect();
    Ok(([(header::CACHE_CONTROL, "max-age=60")], Json(json!({ "keys": keys }))).into_response())
}

/// `GET /.well-known/jwks.json`.
async fn jwks(State(state): State<Arc<AppState>>) -> Result<Response, uts_common::error::ApiError> {
    let keys: Vec<_> = accepted(&state)
        .await?
        .into_iter()
        .map(|key| json!({"kid": key.kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": key.jwk_n, "e": key.jwk_e}))
        .collect();
    Ok(([(header::CACHE_CONTROL, "max-age=60")], Json(json!({ "keys": keys }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_read_strictly_where_it_matters() {
        let form = parse_form(b"grant_type=client_credentials&scope=uts.usages.read+uts.admin&x=1").unwrap();
        assert_eq!(form.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(form.scope.as_deref(), Some("uts.usages.read uts.admin"));
        let err = parse_form(b"grant_type=a&grant_type=b").unwrap_err();
        assert_eq!((err.status, err.error), (StatusCode::BAD_REQUEST, "invalid_request"));
    }

    #[test]
    fn credentials_come_from_one_place() {
        let basic = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        let encoded = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("acme-app:s3cret:x"));
        let (id, secret, via_basic) = credentials(&basic(&encoded), &mut TokenRequest::default()).unwrap();
        assert_eq!((id.as_str(), secret.as_str(), via_basic), ("acme-app", "s3cret:x", true));
        let mut form =
            TokenRequest { client_id: Some("a".into()), client_secret: Some("b".into()), ..Default::default() };
        assert_eq!(credentials(&HeaderMap::new(), &mut form).unwrap(), ("a".into(), "b".into(), false));
        let mut both =
            TokenRequest { client_id: Some("a".into()), client_secret: Some("b".into()), ..Default::default() };
        assert_eq!(credentials(&basic(&encoded), &mut both).unwrap_err().error, "invalid_request");
        let err = credentials(&basic("Basic %%%"), &mut TokenRequest::default()).unwrap_err();
        assert_eq!((err.status, err.error, err.basic_challenge), (StatusCode::UNAUTHORIZED, "invalid_client", true));
        assert_eq!(credentials(&HeaderMap::new(), &mut TokenRequest::default()).unwrap_err().error, "invalid_client");
    }

    #[test]
    fn asked_scopes_must_be_the_clients() {
        let have = vec!["uts.usages.write".to_owned(), "uts.usages.read".to_owned()];
        assert_eq!(granted_scopes(&have, None).unwrap(), have);
        assert_eq!(granted_scopes(&have, Some(" ")).unwrap(), have);
        assert_eq!(granted_scopes(&have, Some("uts.usages.read uts.usages.read")).unwrap(), vec!["uts.usages.read"]);
        assert_eq!(granted_scopes(&have, Some("uts.admin")).unwrap_err().error, "invalid_scope");
    }
}
