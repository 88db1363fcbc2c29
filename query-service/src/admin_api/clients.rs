//! The token service's clients and signing keys (DESIGN.md §8a):
//!
//! | endpoint | answer |
//! |---|---|
//! | `POST /clients` `{clientId, tenantId, scopes, description?}` | 201, the client with its `clientSecret` (shown this once) |
//! | `GET /clients/{clientId}`, `GET /clients?tenantId=&page=&size=` | the client (never its secret); a page of clients |
//! | `POST /clients/{clientId}/secret` | 200, the client with a new `clientSecret`; the old one stops working at once |
//! | `DELETE /clients/{clientId}` | 200, the revoked client: no new tokens, and its unexpired tokens are refused within 10 s |
//! | `GET /signingKeys`, `POST /signingKeys` | the keys, current first; 201, a new current key (the previous one stays accepted until its tokens expired) |
//!
//! The rules (scopes, id, secrets as argon2id hashes) live in `uts_common::tokens`, shared with
//! `utsctl clients`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uts_common::error::ApiError;
use uts_common::tokens::{self, Client, ClientError, ClientSpec};

use super::body;
use super::{count_change, read_object};
use crate::request::{serialize_datetime, storage_error, Page, Params};
use crate::AppState;

/// A client as answered.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClientOut {
    client_id: String,
    tenant_id: String,
    scopes: Vec<String>,
    description: Option<String>,
    #[serde(serialize_with = "serialize_datetime")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_datetime")]
    secret_rotated_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_optional_datetime")]
    revoked_at: Option<DateTime<Utc>>,
    /// Only in the answers that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

impl ClientOut {
    fn new(client: Client, secret: Option<String>) -> Self {
        Self {
            client_id: client.client_id,
            tenant_id: client.tenant_id,
            scopes: client.scopes,
            description: client.description,
            created_at: client.created_at,
            secret_rotated_at: client.secret_rotated_at,
            revoked_at: client.revoked_at,
            client_secret: secret,
        }
    }
}

fn serialize_optional_datetime<S: serde::Serializer>(
    dt: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match dt {
        Some(dt) => serialize_datetime(dt, serializer),
        None => serializer.serialize_none(),
    }
}

const PROPERTIES: &[&str] = &["clientId", "tenantId", "scopes", "description"];
const READ_ONLY: &[&str] = &["createdAt", "secretRotatedAt", "revokedAt", "clientSecret"];

fn parse_client(object: &body::Object) -> Result<ClientSpec, ApiError> {
    body::check_properties(object, PROPERTIES, READ_ONLY)?;
    // The API's name rule, as tokens::client_id_problem (utsctl) applies it.
    let client_id = body::required_name(object, "clientId")?;
    let tenant_id = body::required_tenant_id(object, "tenantId")?;
    let scopes = match object.get("scopes") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::invalid_body_property(&format!("scopes[{i}]"), "must be a string"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => return Err(ApiError::missing_body_property("scopes")),
        Some(_) => return Err(ApiError::invalid_body_property("scopes", "must be an array of scopes")),
    };
    if let Some(problem) = tokens::scopes_problem(&scopes) {
        return Err(ApiError::invalid_body_property("scopes", problem));
    }
    let description = body::optional_name(object, "description")?;
    Ok(ClientSpec { client_id, tenant_id, scopes, description })
}

fn client_error(err: ClientError) -> ApiError {
    match err {
        ClientError::UnknownTenant(tenant) => {
            ApiError::invalid_body_property("tenantId", format_args!("names no registered tenant ({tenant})"))
        }
        err @ (ClientError::Exists(_) | ClientError::Revoked(_)) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
        }
        ClientError::NotFound(id) => ApiError::no_match(format!("no client with id {id}")),
        ClientError::Storage(err) => storage_error(err),
        err @ ClientError::Hashing(_) => ApiError::internal(err),
    }
}

/// The `{clientId}` of a path; one that breaks the name rule names no client (404).
pub(super) struct ClientIdPath(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::no_match("no client with this id"))?;
        if tokens::client_id_problem(&id).is_some() {
            return Err(ApiError::no_match(format!("no client with id {id}")));
        }
        Ok(Self(id))
    }
}

/// `POST /clients`.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let object = read_object(&headers, request_body).await?;
    let spec = parse_client(&object)?;
    let (client, secret) = tokens::create_client(&state.pool, &spec).await.map_err(client_error)?;
    count_change("client", "create");
    tracing::info!(client = %client.client_id, tenant = %client.tenant_id, "token service client created");
    let location = format!("{}/clients/{}", super::BASE_PATH, client.client_id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location), (axum::http::header::CACHE_CONTROL, "no-store".to_owned())],
        Json(ClientOut::new(client, Some(secret))),
    )
        .into_response())
}

/// `GET /clients/{clientId}`.
pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    ClientIdPath(id): ClientIdPath,
) -> Result<Json<ClientOut>, ApiError> {
    let client = tokens::get_client(&state.pool, &id).await.map_err(storage_error)?;
    client
        .map(|client| Json(ClientOut::new(client, None)))
        .ok_or_else(|| ApiError::no_match(format!("no client with id {id}")))
}

/// `GET /clients?tenantId=&page=&size=`.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<ClientOut>>, ApiError> {
    let params = Params::parse(query, &["tenantId", "page", "size"])?;
    let paging = params.paging()?;
    let (clients, total) = tokens::list_clients(&state.pool, params.get("tenantId"), paging.limit(), paging.offset())
        .await
        .map_err(storage_error)?;
    let clients = clients.into_iter().map(|client| ClientOut::new(client, None)).collect();
    Ok(Json(Page::new("clients", clients, paging.info(total))))
}

/// `POST /clients/{clientId}/secret`: a new secret.
pub(super) async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    ClientIdPath(id): ClientIdPath,
) -> Result<Response, ApiError> {
    let (client, secret) = tokens::rotate_client_secret(&state.pool, &id).await.map_err(client_error)?;
    count_change("client", "rotate_secret");
    tracing::info!(client = %client.client_id, "token service client secret rotated");
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], Json(ClientOut::new(client, Some(secret)))).into_response())
}

/// `DELETE /clients/{clientId}`: revokes it (the id stays taken).
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    ClientIdPath(id): ClientIdPath,
) -> Result<Json<ClientOut>, ApiError> {
    let client = tokens::revoke_client(&state.pool, &id).await.map_err(client_error)?;
    count_change("client", "revoke");
    tracing::info!(client = %client.client_id, "token service client revoked");
    Ok(Json(ClientOut::new(client, None)))
}

/// A signing key as answered (never its private half).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SigningKeyOut {
    kid: String,
    /// current (signs new tokens), accepted (verifies the tokens it signed until acceptUntil), retired.
    state: &'static str,
    #[serde(serialize_with = "serialize_datetime")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_optional_datetime")]
    accept_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub(super) struct SigningKeys {
    keys: Vec<SigningKeyOut>,
}

/// `GET /signingKeys`: every key, newest first.
pub(super) async fn list_keys(State(state): State<Arc<AppState>>) -> Result<Json<SigningKeys>, ApiError> {
    let now = Utc::now();
    let keys = tokens::all_keys(&state.pool).await.map_err(storage_error)?;
    let keys = keys
        .into_iter()
        .map(|key| SigningKeyOut {
            state: match key.accept_until {
                None => "current",
                Some(until) if until > now => "accepted",
                Some(_) => "retired",
            },
            kid: key.kid,
            created_at: key.created_at,
            accept_until: key.accept_until,
        })
        .collect();
    Ok(Json(SigningKeys { keys }))
}

/// `POST /signingKeys`: a new current key; the previous ones stay accepted for the token
/// lifetime (and the verifiers' leeway), so no token in use is refused.
pub(super) async fn rotate_key(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let valid_for = Duration::from_secs(u64::from(state.tokens.ttl_seconds) + 300);
    let kid = tokens::rotate_signing_key(&state.pool, valid_for).await.map_err(|err| {
        match err.downcast::<sqlx::Error>() {
            Ok(err) => storage_error(err),
            Err(err) => ApiError::internal(err),
        }
    })?;
    count_change("signing_key", "rotate");
    tracing::info!(%kid, "token signing key rotated");
    let keys = tokens::all_keys(&state.pool).await.map_err(storage_error)?;
    let key = keys.into_iter().find(|key| key.kid == kid).ok_or_else(|| ApiError::internal("the new key vanished"))?;
    Ok((
        StatusCode::CREATED,
        Json(SigningKeyOut { kid: key.kid, state: "current", created_at: key.created_at, accept_until: None }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<ClientSpec, ApiError> {
        parse_client(value.as_object().unwrap())
    }

    #[test]
    fn a_client_body_is_checked_property_by_property() {
        let spec =
            parse(json!({"clientId": "acme-exporter", "tenantId": "acme", "scopes": ["uts.usages.write"]})).unwrap();
        assert_eq!(spec.scopes, vec!["uts.usages.write"]);
        for (body, property) in [
            (json!({"tenantId": "acme", "scopes": ["uts.admin"]}), "clientId"),
            (json!({"clientId": "", "tenantId": "acme", "scopes": ["uts.admin"]}), "clientId"),
            (json!({"clientId": "a\u{0}b", "tenantId": "acme", "scopes": ["uts.admin"]}), "clientId"),
            (json!({"clientId": "x", "scopes": ["uts.admin"]}), "tenantId"),
            (json!({"clientId": "x", "tenantId": "acme"}), "scopes"),
            (json!({"clientId": "x", "tenantId": "acme", "scopes": []}), "scopes"),
            (json!({"clientId": "x", "tenantId": "acme", "scopes": ["root"]}), "scopes"),
            (json!({"clientId": "x", "tenantId": "acme", "scopes": [7]}), "scopes[0]"),
            (json!({"clientId": "x", "tenantId": "acme", "scopes": ["uts.admin"], "secret": "s"}), "secret"),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(err.message.starts_with(property), "{body}: {}", err.message);
        }
    }
}
