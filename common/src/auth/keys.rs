//! Where verification keys come from besides configuration: an identity provider's JWKS URL
//! ([`RemoteJwks`]) and the service's own token service ([`IssuedKeys`]).

use super::*;

/// The RSA and EC keys of a JWK set (other key types are skipped).
pub(super) fn jwks_keys(set: &JwkSet) -> anyhow::Result<Vec<VerificationKey>> {
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

    pub(super) async fn fetch(&self) -> anyhow::Result<()> {
        let response = self.client.get(&self.url).send().await?.error_for_status()?;
        let set: JwkSet = serde_json::from_slice(&response.bytes().await?).context("not a JWK set")?;
        let keys = jwks_keys(&set)?;
        if keys.is_empty() {
            bail!("the JWK set holds no RSA or EC key");
        }
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    pub(super) fn snapshot(&self) -> Arc<Vec<VerificationKey>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Fetches again unless a fetch began after `arrived`, at most once per `min_interval`;
    /// a failed fetch keeps the known keys.
    pub(super) async fn refresh_after(&self, arrived: Instant) {
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
pub(super) async fn every<F, Fut>(period: Duration, shutdown: &CancellationToken, mut refresh: F)
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
pub(super) struct IssuedSnapshot {
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

    pub(super) async fn refresh(&self) -> anyhow::Result<()> {
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

    pub(super) fn snapshot(&self) -> Arc<IssuedSnapshot> {
        self.known.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Makes sure the keys were loaded after `arrived` (a token signed by a key rotated a moment
    /// ago then verifies), refreshing at most once a second: a flood of made-up kids costs one
    /// query a second, and each of its requests waits at most about a second.
    pub(super) async fn refresh_after(&self, arrived: Instant) {
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
    pub(super) async fn refresh_now(&self) {
        let mut last = self.last_refresh.lock().await;
        *last = Some(Instant::now());
        if let Err(err) = self.refresh().await {
            tracing::warn!(%err, "refreshing the token service's keys failed; keeping the known ones");
        }
    }

    /// `None` when no issued key has this kid; else the verdict on the token.
    pub(super) fn verify(
        &self,
        kid: &str,
        algorithm: Algorithm,
        token: &str,
        leeway: u64,
    ) -> Option<Result<Principal, ApiError>> {
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
