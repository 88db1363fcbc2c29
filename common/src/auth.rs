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

/// The RSA and EC keys of a JWK set (other key types are skipped).
fn jwks_keys(set: &JwkSet) -> anyhow::Result<Vec<VerificationKey>> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithms = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA.to_vec(),
            AlgorithmParameters::EllipticCurve(_) => EC.to_vec(),
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).with_context(|| format!("the key {:?}", jwk.common.key_id))?;
        keys.push(VerificationKey { kid: jwk.common.key_id.clone(), key, algorithms });
    }
    Ok(keys)
}

/// How often the identity provider's JWKS is fetched again.
pub const REMOTE_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// The least time between two fetches of the JWKS (an unknown kid asks for one).
pub const REMOTE_JWKS_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// An external identity provider's keys, from its JWKS URL.
pub struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<Vec<VerificationKey>>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl RemoteJwks {
    /// Fetches the keys now; an error when the URL cannot be read or holds no usable key.
    pub async fn load(url: &str, min_interval: Duration) -> anyhow::Result<Arc<Self>> {
        let remote = Arc::new(Self {
            url: url.to_owned(),
            client: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
            keys: RwLock::new(Arc::default()),
            last_refresh: tokio::sync::Mutex::new(Some(Instant::now())),
            min_interval,
        });
        remote.fetch().await.with_context(|| format!("loading the identity provider's keys from {url}"))?;
        Ok(remote)
    }

    async fn fetch(&self) -> anyhow::Result<()> {
        let response = self.client.get(&self.url).send().await?.error_for_status()?;
        let set: JwkSet = serde_json::from_slice(&response.bytes().await?).context("not a JWK set")?;
        let keys = jwks_keys(&set)?;
        if keys.is_empty() {
            bail!("the JWK set holds no RSA or EC key");
        }
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Vec<VerificationKey>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Fetches again unless a fetch began after `arrived`, at most once per `min_interval`;
    /// a failed fetch keeps the known keys.
    async fn refresh_after(&self, arrived: Instant) {
        let mut last = self.last_refresh.lock().await;
        if let Some(began) = *last {
            if began >= arrived || began.elapsed() < self.min_interval {
                return;
            }
        }
        *last = Some(Instant::now());
        if let Err(err) = self.fetch().await {
            tracing::warn!(%err, url = %self.url, "fetching the identity provider's keys failed; keeping the known ones");
        }
    }
}

/// Runs `refresh` every `period` (the first time one period from now) until `shutdown`.
async fn every<F, Fut>(period: Duration, shutdown: &CancellationToken, mut refresh: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => refresh().await,
        }
    }
}

/// How often every verifier reloads the token service's keys and revoked clients: a revoked
/// client's tokens are refused within this long.
pub const ISSUED_KEYS_REFRESH: Duration = Duration::from_secs(10);

/// The token service's accepted signing keys and recently revoked clients, as one verifier
/// knows them (loaded from PostgreSQL, refreshed every [`ISSUED_KEYS_REFRESH`]).
pub struct IssuedKeys {
    pool: PgPool,
    known: RwLock<Arc<IssuedSnapshot>>,
    /// When the last refresh began: unknown kids trigger a refresh at most once a second.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct IssuedSnapshot {
    keys: Vec<(String, DecodingKey)>,
    revoked: HashSet<String>,
}

impl IssuedKeys {
    /// Loads the keys now (fails when PostgreSQL cannot be read: a verifier must not start blind).
    pub async fn load(pool: PgPool) -> anyhow::Result<Arc<Self>> {
        let issued =
            Arc::new(Self { pool, known: RwLock::new(Arc::default()), last_refresh: tokio::sync::Mutex::new(None) });
        issued.refresh().await.context("loading the token service's signing keys")?;
        Ok(issued)
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let keys = crate::tokens::accepted_keys(&self.pool).await?;
        let revoked = crate::tokens::recently_revoked_clients(&self.pool).await?;
        let mut loaded = Vec::with_capacity(keys.len());
        for key in keys {
            match DecodingKey::from_rsa_pem(key.public_key_pem.as_bytes()) {
                Ok(decoding) => loaded.push((key.kid, decoding)),
                Err(err) => tracing::error!(kid = %key.kid, %err, "a stored signing key cannot be read; skipped"),
            }
        }
        let snapshot = Arc::new(IssuedSnapshot { keys: loaded, revoked: revoked.into_iter().collect() });
        *self.known.write().unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        Ok(())
    }

    fn snapshot(&self) -> Arc<IssuedSnapshot> {
        self.known.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Makes sure the keys were loaded after `arrived` (a token signed by a key rotated a moment
    /// ago then verifies), refreshing at most once a second: a flood of made-up kids costs one
    /// query a second, and each of its requests waits at most about a second.
    async fn refresh_after(&self, arrived: Instant) {
        let mut last = self.last_refresh.lock().await;
        if let Some(began) = *last {
            if began >= arrived {
                return;
            }
            let since = began.elapsed();
            if since < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1) - since).await;
            }
        }
        *last = Some(Instant::now());
        if let Err(err) = self.refresh().await {
            tracing::warn!(%err, "refreshing the token service's keys failed; keeping the known ones");
        }
    }

    /// Refreshes every [`ISSUED_KEYS_REFRESH`] until `shutdown`.
    /// The scheduled refresh (it counts as the last one for [`IssuedKeys::refresh_after`]).
    async fn refresh_now(&self) {
        let mut last = self.last_refresh.lock().await;
        *last = Some(Instant::now());
        if let Err(err) = self.refresh().await {
            tracing::warn!(%err, "refreshing the token service's keys failed; keeping the known ones");
        }
    }

    /// `None` when no issued key has this kid; else the verdict on the token.
    fn verify(&self, kid: &str, algorithm: Algorithm, token: &str, leeway: u64) -> Option<Result<Principal, ApiError>> {
        let known = self.snapshot();
        let (_, key) = known.keys.iter().find(|(have, _)| have == kid)?;
        if algorithm != Algorithm::RS256 {
            return Some(Err(ApiError::unauthorized("the bearer token names a key of this service but is not RS256")));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.set_issuer(&[crate::tokens::ISSUER]);
        Some(match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => {
                let revoked = data.claims.client_id.as_ref().is_some_and(|client| known.revoked.contains(client));
                if revoked {
                    Err(ApiError::unauthorized("the bearer token's client has been revoked"))
                } else {
                    principal_of(data.claims)
                }
            }
            Err(err) => Err(ApiError::unauthorized(refusal_reason(Some(&err)))),
        })
    }
}

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
mod tests {
    use super::*;

    const SECRET: &str = "a-local-test-secret-of-32-bytes!";

    fn authenticator() -> Authenticator {
        Authenticator::from_args(&AuthArgs {
            hs256_secret: Some(SECRET.to_owned()),
            leeway_seconds: 0,
            ..AuthArgs::default()
        })
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies() {
        let token = mint_hs256(SECRET, "acme", "jo@acme", &["uts.usages.write"], 60).unwrap();
        let principal = authenticator().verify(&token).unwrap();
        assert_eq!(principal.tenant, "acme");
        assert_eq!(principal.user, "jo@acme");
        assert!(principal.has_scope(Scope::UsagesWrite));
        assert!(!principal.has_scope(Scope::UsagesRead));
        assert!(principal.require(Scope::Admin).is_err());
    }

    #[test]
    fn super_user_scope_grants_everything() {
        let token = mint_hs256(SECRET, "acme", "", &["uts.su"], 60).unwrap();
        let principal = authenticator().verify(&token).unwrap();
        assert!(principal.has_scope(Scope::Admin) && principal.has_scope(Scope::AggregatesRead));
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let auth = authenticator();
        let expired = mint_hs256(SECRET, "acme", "", &["uts.su"], -120).unwrap();
        assert_eq!(auth.verify(&expired).unwrap_err().message, "the bearer token has expired");
        let forged = mint_hs256("another-secret-of-enough-length", "acme", "", &["uts.su"], 60).unwrap();
        assert_eq!(auth.verify(&forged).unwrap_err().message, "the bearer token's signature is invalid");
        assert_eq!(auth.verify("not.a.jwt").unwrap_err().code, "unauthorized");
    }

    #[test]
    fn a_signed_token_naming_a_tenant_or_user_with_a_control_character_is_refused() {
        let auth = authenticator();
        for (tenant, user) in [("ac\0me", ""), ("acme\n", "svc"), ("acme", "s\u{7f}vc")] {
            let token = mint_hs256(SECRET, tenant, user, &["uts.usages.read"], 60).unwrap();
            let err = auth.verify(&token).unwrap_err();
            assert_eq!((err.status.as_u16(), err.code), (401, "unauthorized"), "{tenant:?} {user:?}");
        }
    }

    /// `iss` and `aud` are required and must match when configured, ignored otherwise; `nbf`
    /// is checked whenever present (README's settings, the module's header).
    #[test]
    fn issuer_audience_and_not_before_are_checked_as_documented() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let signed = |claims: &serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .unwrap()
        };
        let claims = |changes: &[(&str, serde_json::Value)]| {
            let mut claims = serde_json::json!({"ten": "acme", "scope": "uts.usages.read", "sub": "svc",
                "exp": now + 60, "iss": "https://idp.example", "aud": "uts"});
            for (name, value) in changes {
                if value.is_null() {
                    claims.as_object_mut().unwrap().remove(*name);
                } else {
                    claims[*name] = value.clone();
                }
            }
            signed(&claims)
        };
        let configured = Authenticator::from_args(&AuthArgs {
            hs256_secret: Some(SECRET.to_owned()),
            issuer: Some("https://idp.example".to_owned()),
            audience: Some("uts".to_owned()),
            leeway_seconds: 0,
            ..AuthArgs::default()
        })
        .unwrap();
        let refusal = |auth: &Authenticator, token: String| {
            let err = auth.verify(&token).expect_err("refused");
            assert_eq!((err.status.as_u16(), err.code), (401, "unauthorized"));
            err.message
        };
        use serde_json::json;
        assert_eq!(configured.verify(&claims(&[])).unwrap().tenant, "acme");
        assert!(configured.verify(&claims(&[("aud", json!(["other", "uts"]))])).is_ok());
        assert!(configured.verify(&claims(&[("nbf", json!(now - 10))])).is_ok());
        let cases = [
            (vec![("iss", json!("https://evil.example"))], "the bearer token has the wrong issuer"),
            (vec![("iss", json!(null))], "the bearer token lacks the iss claim"),
            (vec![("aud", json!("other"))], "the bearer token has the wrong audience"),
            (vec![("aud", json!(null))], "the bearer token lacks the aud claim"),
            (vec![("nbf", json!(now + 120))], "the bearer token is not valid yet"),
            (vec![("exp", json!(null))], "the bearer token lacks the exp claim"),
        ];
        for (changes, message) in &cases {
            let answer = configured.verify(&claims(changes)).map_err(|err| err.message);
            assert_eq!(answer.err().as_deref(), Some(*message), "{changes:?}");
        }
        // Not configured: any issuer and audience (or none) pass; nbf is still checked.
        let open = authenticator();
        for changes in [vec![("iss", json!("https://any.example")), ("aud", json!("any"))], vec![("iss", json!(null))]]
        {
            assert!(open.verify(&claims(&changes)).is_ok(), "{changes:?}");
        }
        assert_eq!(refusal(&open, claims(&[("nbf", json!(now + 120))])), "the bearer token is not valid yet");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn sign(algorithm: Algorithm, key: EncodingKey, kid: Option<&str>) -> String {
        let claims = Claims {
            ten: Some("acme".into()),
            scope: Some(ScopeClaim::Text("uts.usages.read".into())),
            user_name: None,
            sub: Some("svc".into()),
            exp: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60,
            iat: None,
            iss: None,
            client_id: None,
            jti: None,
        };
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn rsa_and_ec_public_keys_from_pem_verify_their_tokens() {
        let auth = Authenticator::from_args(&AuthArgs {
            public_key_files: vec![fixture("rsa-public.pem"), fixture("ec-public.pem")],
            ..AuthArgs::default()
        })
        .unwrap();
        let rsa = EncodingKey::from_rsa_pem(&fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
        let ec = EncodingKey::from_ec_pem(&fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
        for token in [sign(Algorithm::RS256, rsa, None), sign(Algorithm::ES256, ec, None)] {
            let principal = auth.verify(&token).unwrap();
            assert_eq!((principal.tenant.as_str(), principal.user.as_str()), ("acme", "svc"));
        }
        // An HS256 token is refused when no shared secret is configured (no algorithm confusion).
        let hs = mint_hs256(SECRET, "acme", "", &["uts.su"], 60).unwrap();
        assert_eq!(auth.verify(&hs).unwrap_err().code, "unauthorized");
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let auth = Authenticator::from_args(&AuthArgs { jwks_file: Some(fixture("jwks.json")), ..AuthArgs::default() })
            .unwrap();
        let key = || EncodingKey::from_rsa_pem(&fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
        assert!(auth.verify(&sign(Algorithm::RS256, key(), Some("test-rsa-1"))).is_ok());
        assert!(auth.verify(&sign(Algorithm::RS256, key(), Some("another-key"))).is_err());
    }

    /// Serves `body` (changeable) as a JWK set on 127.0.0.1; its URL.
    async fn jwks_server(body: Arc<RwLock<String>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let body = body.read().unwrap().clone();
                async move { body }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn keys_of_a_jwks_url_verify_and_a_new_kid_is_fetched_when_first_seen() {
        let fixture_set = fs::read_to_string(fixture("jwks.json")).unwrap();
        let body = Arc::new(RwLock::new(fixture_set.clone()));
        let url = jwks_server(body.clone()).await;
        let remote = RemoteJwks::load(&url, Duration::ZERO).await.unwrap();
        let auth = Authenticator { remote: Some(remote), ..Authenticator::from_args(&AuthArgs::default()).unwrap() };
        let key = || EncodingKey::from_rsa_pem(&fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
        let bearer = |token: String| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            headers
        };
        assert!(auth.authenticate(&bearer(sign(Algorithm::RS256, key(), Some("test-rsa-1")))).await.is_ok());
        let rotated = sign(Algorithm::RS256, key(), Some("test-rsa-2"));
        assert!(auth.authenticate(&bearer(rotated.clone())).await.is_err(), "a kid the provider does not publish");
        // The provider publishes the new kid: the next token naming it makes the verifier look again.
        *body.write().unwrap() = fixture_set.replace("test-rsa-1", "test-rsa-2");
        assert!(auth.authenticate(&bearer(rotated)).await.is_ok());
        // A provider that cannot be read at start is an error, not a silent start without keys.
        *body.write().unwrap() = "not json".into();
        assert!(RemoteJwks::load(&url, Duration::ZERO).await.is_err());
    }

    #[test]
    fn space_separated_scopes_are_understood() {
        let claims = ScopeClaim::Text("uts.usages.read uts.admin".into()).into_vec();
        assert_eq!(claims, vec!["uts.usages.read", "uts.admin"]);
    }
}
