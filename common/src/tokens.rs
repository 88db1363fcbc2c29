//! The token service's data (DESIGN.md §8a): RS256 signing keys and OAuth 2.0 client-credentials
//! clients, in PostgreSQL.
//!
//! The query service signs tokens with [`current_signing_key`] and publishes [`accepted_keys`];
//! every process that verifies tokens loads the accepted keys and the revoked clients through
//! [`crate::auth::IssuedKeys`]; the admin API and `utsctl` manage clients and keys with the
//! functions here, so both apply the same rules. Secrets are random 256-bit values shown once and
//! stored only as argon2id hashes.

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::auth::Scope;
use crate::domain::name_problem;

/// The `iss` of every token the service issues; verifiers require it on tokens signed by an
/// issued key.
pub const ISSUER: &str = "uts-token-service";

/// The longest token lifetime the service issues: verifiers keep revoked clients this long.
pub const MAX_TTL_SECONDS: u32 = 86_400;

/// Longest client id (the name rule of the API's other ids).
pub const MAX_CLIENT_ID_LEN: usize = crate::domain::MAX_NAME_LEN;

/// Serialises key rotations and the first key's creation among replicas.
const KEY_LOCK: i64 = 0x7574_735f_6b65_7973; // "uts_keys"

/// A freshly generated RSA key.
struct NewKey {
    kid: String,
    private_pem: String,
    public_pem: String,
    n: String,
    e: String,
}

/// Generates a 2048-bit RSA key; its kid is its RFC 7638 thumbprint.
fn generate_key() -> anyhow::Result<NewKey> {
    let rsa = openssl::rsa::Rsa::generate(2048).context("generating an RSA key")?;
    let n = URL_SAFE_NO_PAD.encode(rsa.n().to_vec());
    let e = URL_SAFE_NO_PAD.encode(rsa.e().to_vec());
    let private_pem = String::from_utf8(rsa.private_key_to_pem()?)?;
    let public_pem = String::from_utf8(rsa.public_key_to_pem()?)?;
    Ok(NewKey { kid: thumbprint(&n, &e), private_pem, public_pem, n, e })
}

/// RFC 7638: the SHA-256 of the key's required members in lexicographic order, base64url.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

async fn generate_key_off_thread() -> anyhow::Result<NewKey> {
    tokio::task::spawn_blocking(generate_key).await.context("the key generation task panicked")?
}

async fn insert_key(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, key: &NewKey) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO token_signing_keys (kid, private_key_pem, public_key_pem, jwk_n, jwk_e)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&key.kid)
    .bind(&key.private_pem)
    .bind(&key.public_pem)
    .bind(&key.n)
    .bind(&key.e)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Creates the first signing key unless there is a current one; the key's kid when it made one.
pub async fn ensure_signing_key(pool: &PgPool) -> anyhow::Result<Option<String>> {
    if current_signing_key(pool).await?.is_some() {
        return Ok(None);
    }
    let key = generate_key_off_thread().await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_LOCK).execute(&mut *tx).await?;
    let current: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM token_signing_keys WHERE accept_until IS NULL)")
            .fetch_one(&mut *tx)
            .await?;
    if current {
        return Ok(None);
    }
    insert_key(&mut tx, &key).await?;
    tx.commit().await?;
    Ok(Some(key.kid))
}

/// Makes a new key the current one. The previous keys stay accepted for `previous_valid_for`
/// (the longest lifetime of a token they signed), then drop out of the published keys.
pub async fn rotate_signing_key(pool: &PgPool, previous_valid_for: Duration) -> anyhow::Result<String> {
    let key = generate_key_off_thread().await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_LOCK).execute(&mut *tx).await?;
    sqlx::query(
        "UPDATE token_signing_keys SET accept_until = now() + make_interval(secs => $1)
         WHERE accept_until IS NULL",
    )
    .bind(previous_valid_for.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    insert_key(&mut tx, &key).await?;
    tx.commit().await?;
    Ok(key.kid)
}

/// The key new tokens are signed with: (kid, private key PEM).
pub async fn current_signing_key(pool: &PgPool) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "SELECT kid, private_key_pem FROM token_signing_keys WHERE accept_until IS NULL
         ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// A signing key's public half.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PublicKey {
    pub kid: String,
    pub public_key_pem: String,
    pub jwk_n: String,
    pub jwk_e: String,
    pub created_at: DateTime<Utc>,
    /// `None` for the current key.
    pub accept_until: Option<DateTime<Utc>>,
}

impl PublicKey {
    pub fn is_current(&self) -> bool {
        self.accept_until.is_none()
    }
}

/// The keys tokens are verified with: the current key first (the official Node client reads
/// only the first entry of `/token_keys`), then the previous ones, newest first.
pub async fn accepted_keys(pool: &PgPool) -> sqlx::Result<Vec<PublicKey>> {
    sqlx::query_as(
        "SELECT kid, public_key_pem, jwk_n, jwk_e, created_at, accept_until FROM token_signing_keys
         WHERE accept_until IS NULL OR accept_until > now()
         ORDER BY accept_until IS NULL DESC, created_at DESC",
    )
    .fetch_all(pool)
    .await
}

/// Every key, retired ones included, newest first (the admin list).
pub async fn all_keys(pool: &PgPool) -> sqlx::Result<Vec<PublicKey>> {
    sqlx::query_as(
        "SELECT kid, public_key_pem, jwk_n, jwk_e, created_at, accept_until FROM token_signing_keys
         ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await
}

/// Clients revoked within the longest token lifetime: their tokens may still be unexpired.
pub async fn recently_revoked_clients(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT client_id FROM token_clients
         WHERE revoked_at IS NOT NULL AND revoked_at > now() - make_interval(secs => $1)",
    )
    .bind(f64::from(MAX_TTL_SECONDS) + 300.0)
    .fetch_all(pool)
    .await
}

/// A client of the token service, as stored (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Client {
    pub client_id: String,
    pub tenant_id: String,
    pub scopes: Vec<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub secret_rotated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const CLIENT_COLUMNS: &str = "client_id, tenant_id, scopes, description, created_at, secret_rotated_at, revoked_at";

/// What a client is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub client_id: String,
    pub tenant_id: String,
    pub scopes: Vec<String>,
    pub description: Option<String>,
}

/// Why a client operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tenant {0} is not registered")]
    UnknownTenant(String),
    #[error("a client with the id {0} exists already (revoked ids stay taken)")]
    Exists(String),
    #[error("no client with the id {0}")]
    NotFound(String),
    #[error("client {0} is revoked")]
    Revoked(String),
    #[error("PostgreSQL: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("hashing the secret: {0}")]
    Hashing(String),
}

/// The problem with a client id, if any (the API's name rule).
pub fn client_id_problem(id: &str) -> Option<String> {
    name_problem(id, MAX_CLIENT_ID_LEN).map(|problem| problem.to_string())
}

/// The scopes a client may be given: the API's scopes and `uts.su`.
pub fn grantable_scopes() -> Vec<&'static str> {
    let mut scopes: Vec<&'static str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
    scopes.push(Scope::SUPER_USER);
    scopes
}

/// The problem with a client's scope list, if any: at least one, each grantable, none twice.
pub fn scopes_problem(scopes: &[String]) -> Option<String> {
    let grantable = grantable_scopes();
    if scopes.is_empty() {
        return Some("must hold at least one scope".into());
    }
    for (at, scope) in scopes.iter().enumerate() {
        if !grantable.contains(&scope.as_str()) {
            return Some(format!(
                "holds {scope:?}, which is not a scope of this service (known: {})",
                grantable.join(", ")
            ));
        }
        if scopes[..at].contains(scope) {
            return Some(format!("holds {scope} twice"));
        }
    }
    None
}

/// A new random secret: 256 bits, base64url (43 characters).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The argon2id hash (PHC string) of `secret`, with a random salt. Slow by design: call it off
/// the async threads.
pub fn hash_secret(secret: &str) -> Result<String, ClientError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|err| ClientError::Hashing(err.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| ClientError::Hashing(err.to_string()))
}

/// Whether `secret` matches `hash`. Slow by design: call it off the async threads.
pub fn secret_matches(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
}

/// A hash no secret matches, checked for unknown clients so that an unknown id takes as long to
/// refuse as a wrong secret (no client enumeration by timing).
pub fn decoy_hash() -> &'static str {
    static DECOY: LazyLock<String> =
        LazyLock::new(|| hash_secret(&new_secret()).expect("hashing a random secret cannot fail"));
    &DECOY
}

async fn hash_off_thread(secret: String) -> Result<String, ClientError> {
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|err| ClientError::Hashing(err.to_string()))?
}

/// Creates a client; answers it with its secret, which is not stored and cannot be shown again.
pub async fn create_client(pool: &PgPool, spec: &ClientSpec) -> Result<(Client, String), ClientError> {
    let secret = new_secret();
    let hash = hash_off_thread(secret.clone()).await?;
    let inserted = sqlx::query_as::<_, Client>(&format!(
        "INSERT INTO token_clients (client_id, tenant_id, scopes, description, secret_hash)
         VALUES ($1, $2, $3, $4, $5) RETURNING {CLIENT_COLUMNS}"
    ))
    .bind(&spec.client_id)
    .bind(&spec.tenant_id)
    .bind(&spec.scopes)
    .bind(&spec.description)
    .bind(&hash)
    .fetch_one(pool)
    .await;
    match inserted {
        Ok(client) => Ok((client, secret)),
        Err(err) if constraint(&err) == Some("token_clients_pkey") => Err(ClientError::Exists(spec.client_id.clone())),
        Err(err) if constraint(&err) == Some("token_clients_tenant_id_fkey") => {
            Err(ClientError::UnknownTenant(spec.tenant_id.clone()))
        }
        Err(err) => Err(err.into()),
    }
}

fn constraint(err: &sqlx::Error) -> Option<&str> {
    err.as_database_error().and_then(|db| db.constraint())
}

/// Replaces a client's secret: the old one stops working at once (tokens it obtained stay valid
/// until they expire); answers the new secret, shown once.
pub async fn rotate_client_secret(pool: &PgPool, client_id: &str) -> Result<(Client, String), ClientError> {
    let client = get_client(pool, client_id).await?.ok_or_else(|| ClientError::NotFound(client_id.to_owned()))?;
    if client.revoked_at.is_some() {
        return Err(ClientError::Revoked(client_id.to_owned()));
    }
    let secret = new_secret();
    let hash = hash_off_thread(secret.clone()).await?;
    let client = sqlx::query_as::<_, Client>(&format!(
        "UPDATE token_clients SET secret_hash = $2, secret_rotated_at = now()
         WHERE client_id = $1 AND revoked_at IS NULL RETURNING {CLIENT_COLUMNS}"
    ))
    .bind(client_id)
    .bind(&hash)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ClientError::Revoked(client_id.to_owned()))?;
    Ok((client, secret))
}

/// Revokes a client for good: no new tokens, and its unexpired tokens are refused by every
/// verifier from its next refresh on. Revoking twice keeps the first time.
pub async fn revoke_client(pool: &PgPool, client_id: &str) -> Result<Client, ClientError> {
    sqlx::query_as::<_, Client>(&format!(
        "UPDATE token_clients SET revoked_at = COALESCE(revoked_at, now())
         WHERE client_id = $1 RETURNING {CLIENT_COLUMNS}"
    ))
    .bind(client_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))
}

pub async fn get_client(pool: &PgPool, client_id: &str) -> sqlx::Result<Option<Client>> {
    sqlx::query_as(&format!("SELECT {CLIENT_COLUMNS} FROM token_clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(pool)
        .await
}

/// A page of clients (of one tenant when given), by id, and how many there are in all.
pub async fn list_clients(
    pool: &PgPool,
    tenant: Option<&str>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<(Vec<Client>, i64)> {
    let clients = sqlx::query_as(&format!(
        "SELECT {CLIENT_COLUMNS} FROM token_clients WHERE ($1::text IS NULL OR tenant_id = $1)
         ORDER BY client_id LIMIT $2 OFFSET $3"
    ))
    .bind(tenant)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM token_clients WHERE ($1::text IS NULL OR tenant_id = $1)")
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    Ok((clients, total))
}

/// A client and its secret's hash, for the token endpoint.
pub async fn client_with_hash(pool: &PgPool, client_id: &str) -> sqlx::Result<Option<(Client, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        client: Client,
        secret_hash: String,
    }
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {CLIENT_COLUMNS}, secret_hash FROM token_clients WHERE client_id = $1"))
            .bind(client_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|row| (row.client, row.secret_hash)))
}

#[cfg(test)]
mod tests;
