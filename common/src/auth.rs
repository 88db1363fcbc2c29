//! JWT bearer authentication and scopes.
//!
//! Tokens carry the tenant in `ten`, the scopes in `scope` (a list, or one space-separated
//! string), and the user in `user_name` or `sub`. Keys come from two places: the service's own
//! token service ([`IssuedKeys`]: RS256 keys in PostgreSQL, chosen by `kid`, refreshed every few
//! seconds and at once when a token names a key not seen yet; tokens of a revoked client are
//! refused), and configuration: an HS256 shared secret for local use, RSA/EC public keys from PEM
//! files or a JWKS document of an external identity provider. `exp` is required; `nbf`, `iss`
//! and `aud` are checked when present/configured.

use std::collections::HashSet;
use std::fs;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::AuthArgs;
use crate::error::ApiError;

/// Scopes of the API (DESIGN.md §3). `uts.su` grants all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    UsagesWrite,
    UsagesRead,
    AggregatesRead,
    /// The service operator's: every tenant, rule, KPI, client and key.
    Admin,
    /// A provider's: the rules and KPIs it owns, its own tenant and its IoT tenants'
    /// provisioning (`query-service/src/admin_api`).
    ProviderAdmin,
}

impl Scope {
    pub const SUPER_USER: &'static str = "uts.su";
    pub const ALL: [Scope; 5] =
        [Scope::UsagesWrite, Scope::UsagesRead, Scope::AggregatesRead, Scope::Admin, Scope::ProviderAdmin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsagesWrite => "uts.usages.write",
            Scope::UsagesRead => "uts.usages.read",
            Scope::AggregatesRead => "uts.aggregates.read",
            Scope::Admin => "uts.admin",
            Scope::ProviderAdmin => "uts.provider.admin",
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// `user_name`, else `sub`; empty when the token has neither.
    pub user: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| s == scope.as_str() || s == Scope::SUPER_USER)
    }

    /// 403 unless the token carries `scope` (or `uts.su`).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("the token lacks the scope {} required by this operation", scope.as_str())))
        }
    }
}

/// The claims this service reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ten: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token service's client (tokens it issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// `scope` as a JSON list (MindSphere style) or an OAuth2 space-separated string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    List(Vec<String>),
    Text(String),
}

impl ScopeClaim {
    fn into_vec(self) -> Vec<String> {
        match self {
            ScopeClaim::List(list) => list,
            ScopeClaim::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

#[derive(Clone)]
struct VerificationKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifies bearer tokens against the configured keys and those of the token service.
pub struct Authenticator {
    keys: Vec<VerificationKey>,
    issued: Option<Arc<IssuedKeys>>,
    remote: Option<Arc<RemoteJwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

/// Why a token was refused, and whether a key refresh could change that.
struct Refusal {
    error: ApiError,
    /// The token names a key id no configured or issued key has (maybe a key rotated a moment ago).
    unknown_kid: bool,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self { error, unknown_kid: false }
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256];
const RSA: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

impl Authenticator {
    pub fn from_args(args: &AuthArgs) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        if let Some(secret) = &args.hs256_secret {
            if secret.len() < 16 {
                bail!("the HS256 secret must be at least 16 bytes long");
            }
            keys.push(VerificationKey {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: HMAC.to_vec(),
            });
        }
        for path in &args.public_key_files {
            let pem = fs::read(path).with_context(|| format!("reading public key file {}", path.display()))?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                VerificationKey { kid: None, key, algorithms: RSA.to_vec() }
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                VerificationKey { kid: None, key, algorithms: EC.to_vec() }
            } else {
                bail!("{} holds neither an RSA nor an EC public key in PEM", path.display());
            };
            keys.push(key);
        }
        if let Some(path) = &args.jwks_file {
            let text = fs::read_to_string(path).with_context(|| format!("reading JWKS file {}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).with_context(|| format!("parsing JWKS file {}", path.display()))?;
            keys.extend(jwks_keys(&set).with_context(|| format!("loading a key of JWKS file {}", path.display()))?);
        }
        Ok(Self {
            keys,
            issued: None,
            remote: None,
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            leeway: args.leeway_seconds,
        })
    }

    /// Also accepts the tokens of the service's own token service.
    fn with_issued_keys(mut self, issued: Arc<IssuedKeys>) -> Self {
        self.issued = Some(issued);
        self
    }

    /// Everything a serving process verifies with: the configured keys, the token service's
    /// keys from `pool`, and the identity provider's JWKS URL when configured (fetched now: a
    /// process must not start blind).
    pub async fn load(args: &AuthArgs, pool: PgPool) -> anyhow::Result<Self> {
        let mut auth = Self::from_args(args)?.with_issued_keys(IssuedKeys::load(pool).await?);
        if let Some(url) = &args.jwks_url {
            auth.remote = Some(RemoteJwks::load(url, REMOTE_JWKS_MIN_INTERVAL).await?);
        }
        Ok(auth)
    }

    /// Keeps the token service's keys (every 10 s) and the remote JWKS (every 5 min) fresh
    /// until `shutdown`.
    pub fn spawn_refresh(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (issued, remote) = (self.issued.clone(), self.remote.clone());
        // One task for both loops: aborting it stops them.
        tokio::spawn(async move {
            let issued = async {
                if let Some(issued) = issued {
                    every(ISSUED_KEYS_REFRESH, &shutdown, || issued.refresh_now()).await;
                }
            };
            let remote = async {
                if let Some(remote) = remote {
                    every(REMOTE_JWKS_REFRESH, &shutdown, || remote.refresh_after(Instant::now())).await;
                }
            };
            tokio::join!(issued, remote);
        })
    }

    /// Authenticates the `Authorization: Bearer` header: 401 when it is missing, malformed,
    /// forged, expired, of a revoked client or lacks the tenant claim.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization header with a Bearer token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        let arrived = Instant::now();
        match self.check(token) {
            Err(Refusal { unknown_kid: true, .. }) if self.issued.is_some() || self.remote.is_some() => {
                // Maybe a key rotated since the last refresh: look again.
                if let Some(issued) = &self.issued {
                    issued.refresh_after(arrived).await;
                }
                if let Some(remote) = &self.remote {
                    remote.refresh_after(arrived).await;
                }
                self.verify(token)
            }
            outcome => outcome.map_err(|refusal| refusal.error),
        }
    }

    /// Verifies a token against the keys known now.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        self.check(token).map_err(|refusal| refusal.error)
    }

    fn check(&self, token: &str) -> Result<Principal, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("the bearer token is not a well-formed JWT"))?;
        if let (Some(issued), Some(kid)) = (&self.issued, &header.kid) {
            if let Some(principal) = issued.verify(kid, header.alg, token, self.leeway) {
                return Ok(principal?);
            }
        }
        let mut last_error = None;
        let mut tried = false;
        let remote = self.remote.as_ref().map(|remote| remote.snapshot()).unwrap_or_default();
        for key in self.keys.iter().chain(remote.iter()).filter(|k| k.algorithms.contains(&header.alg)) {
            if let (Some(wanted), Some(have)) = (&header.kid, &key.kid) {
                if wanted != have {
                    continue;
                }
            }
            tried = true;
            let mut validation = Validation::new(header.alg);
            validation.leeway = self.leeway;
            validation.validate_nbf = true;
            // A configured issuer or audience is required, not only compared when present
            // (jsonwebtoken checks only the claims it is told are required for presence).
            let mut required = vec!["exp"];
            match &self.audience {
                Some(aud) => {
                    validation.set_audience(&[aud]);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(principal_of(data.claims)?),
                Err(err) => last_error = Some(err),
            }
        }
        let reason = refusal_reason(last_error.as_ref());
        Err(Refusal { error: ApiError::unauthorized(reason), unknown_kid: !tried && header.kid.is_some() })
    }
}

fn refusal_reason(last_error: Option<&jsonwebtoken::errors::Error>) -> &'static str {
    match last_error.map(|e| e.kind()) {
        Some(ErrorKind::ExpiredSignature) => "the bearer token has expired",
        Some(ErrorKind::ImmatureSignature) => "the bearer token is not valid yet",
        Some(ErrorKind::InvalidIssuer) => "the bearer token has the wrong issuer",
        Some(ErrorKind::InvalidAudience) => "the bearer token has the wrong audience",
        Some(ErrorKind::MissingRequiredClaim(claim)) => match claim.as_str() {
            "iss" => "the bearer token lacks the iss claim",
            "aud" => "the bearer token lacks the aud claim",
            _ => "the bearer token lacks the exp claim",
        },
        Some(ErrorKind::InvalidSignature) => "the bearer token's signature is invalid",
        None => "the bearer token is signed with an algorithm or key this service does not accept",
        // The claims are read into `Claims` (whose `exp` is required) before jsonwebtoken checks
        // which claims are present.
        Some(ErrorKind::Json(err)) if err.to_string().contains("missing field `exp`") => {
            "the bearer token lacks the exp claim"
        }
        Some(_) => "the bearer token is invalid",
    }
}

mod keys;
use keys::{every, jwks_keys};
pub use keys::{IssuedKeys, RemoteJwks, ISSUED_KEYS_REFRESH, REMOTE_JWKS_MIN_INTERVAL, REMOTE_JWKS_REFRESH};

fn principal_of(claims: Claims) -> Result<Principal, ApiError> {
    let tenant = claims
        .ten
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the bearer token lacks the tenant claim ten"))?;
    let user = claims.user_name.or(claims.sub).unwrap_or_default();
    // A signed token is still input: a tenant or user with a NUL (or any control character)
    // names no one and must not reach PostgreSQL (it was answered 503 "retry later").
    if crate::domain::has_control_character(&tenant) || crate::domain::has_control_character(&user) {
        return Err(ApiError::unauthorized("the bearer token's ten or user claim holds a control character"));
    }
    Ok(Principal { tenant, user, scopes: claims.scope.map(ScopeClaim::into_vec).unwrap_or_default() })
}

/// Mints an HS256 token (local runs, tests, the quick start). `ttl_seconds` may be negative to
/// make an already expired token.
pub fn mint_hs256(secret: &str, tenant: &str, user: &str, scopes: &[&str], ttl_seconds: i64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let exp = now.checked_add_signed(ttl_seconds).context("token lifetime out of range")?;
    let claims = Claims {
        ten: Some(tenant.to_owned()),
        scope: Some(ScopeClaim::List(scopes.iter().map(|s| (*s).to_owned()).collect())),
        user_name: (!user.is_empty()).then(|| user.to_owned()),
        sub: (!user.is_empty()).then(|| user.to_owned()),
        exp,
        iat: Some(now),
        iss: Some("uts-local".to_owned()),
        client_id: None,
        jti: None,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .context("signing the token")
}

#[cfg(test)]
mod tests;
