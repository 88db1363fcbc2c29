//! The one CRUD shape of what a provider owns, rules and KPIs: `POST /{resources}`,
//! `GET`/`PUT`/`DELETE /{resources}/{id}` and `GET /{resources}?…&page=&size=`.
//!
//! Each resource says its table, columns, body and unique key ([`Owned`]); the handlers here do
//! the rest the same way for both: a uuid id (anything else is 404), the caller's owner filter in
//! every statement (a provider's list, get, update and delete see only what it owns, in the same
//! statement), a body in another owner's name or in an application another owner has rules or
//! KPIs in is 403, a duplicate key 409 `conflict` naming the property (the existing id only to
//! its owner), an owner that does not exist 400. `PUT` replaces the whole resource (absent
//! optional properties return to their defaults) and increments `version`.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::PgPool;
use uts_common::error::ApiError;
use uuid::Uuid;

use super::body::{self, Object};
use super::{check_application_free, check_owner, count_change, read_object, violates, Admin, Caller, BASE_PATH};
use crate::request::{path_uuid, storage_error, Listing, Page, Params};

/// A query whose rows are the resource's answer.
pub(super) type Returning<'q, R> = sqlx::query::QueryAs<'q, sqlx::Postgres, <R as Owned>::Out, PgArguments>;

/// A resource a provider owns.
pub(super) trait Owned: Send + Sync + 'static {
    /// The validated body of `POST` and `PUT`.
    type Spec: Send + Sync;
    /// The resource as answered, read from [`Owned::COLUMNS`].
    type Out: for<'r> sqlx::FromRow<'r, PgRow> + Serialize + Send + Unpin;

    /// The table, also the list answer's property and the path (`rules`, `kpis`).
    const TABLE: &'static str;
    const ID_COLUMN: &'static str;
    /// The id's property in bodies (`ruleId`).
    const ID_PROPERTY: &'static str;
    /// The resource in messages (`rule`, `KPI`) and in the change counter (`rule`, `kpi`).
    const WHAT: &'static str;
    const METRIC: &'static str;
    /// The answered columns.
    const COLUMNS: &'static str;
    /// The columns `POST` and `PUT` write, in the order [`Owned::bind`] binds them.
    const WRITTEN: &'static [&'static str];
    /// The unique (application, key) constraint, the key's (property, column), and the owner's
    /// foreign key.
    const UNIQUE: &'static str;
    const KEY: (&'static str, &'static str);
    const OWNER_FOREIGN_KEY: &'static str;
    /// The list's filters as (query parameter, column), and its order.
    const FILTERS: &'static [(&'static str, &'static str)];
    const ORDER: &'static str;

    /// Checks a body on its own (the owner's existence and duplicates need the database).
    fn parse(object: &Object) -> Result<Self::Spec, ApiError>;
    fn owner(spec: &Self::Spec) -> &str;
    fn application(spec: &Self::Spec) -> &str;
    /// The value of the unique key beside the application.
    fn key(spec: &Self::Spec) -> &str;
    /// The 409's words; `existing` is ` (id)` or empty.
    fn duplicate(spec: &Self::Spec, existing: &str) -> String;
    /// Binds the spec to `$1`… in the order of [`Owned::WRITTEN`].
    fn bind<'q>(query: Returning<'q, Self>, spec: &'q Self::Spec) -> Returning<'q, Self>;
    fn id(out: &Self::Out) -> Uuid;
}

/// `POST`: 201 with the resource and its `Location`.
pub(super) async fn create<R: Owned>(
    Admin { state, caller }: Admin,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let object = read_object(&headers, request_body).await?;
    body::check_absent(&object, R::ID_PROPERTY)?;
    let spec = R::parse(&object)?;
    check_writable::<R>(&state.pool, &caller, &spec).await?;
    let columns = R::WRITTEN.join(", ");
    let values = (1..=R::WRITTEN.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ");
    let sql = format!("INSERT INTO {} ({columns}) VALUES ({values}) RETURNING {}", R::TABLE, R::COLUMNS);
    let inserted = R::bind(sqlx::query_as(&sql), &spec).fetch_one(&state.pool).await;
    let out = match inserted {
        Ok(out) => out,
        Err(err) => return Err(write_error::<R>(&state.pool, err, &spec, &caller).await),
    };
    count_change(R::METRIC, "create");
    let mut response = (StatusCode::CREATED, Json(&out)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("{BASE_PATH}/{}/{}", R::TABLE, R::id(&out))) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /{id}`.
pub(super) async fn get<R: Owned>(
    Admin { state, caller }: Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<R::Out>, ApiError> {
    let id = path_uuid(path, R::WHAT)?;
    let sql = format!("SELECT {} FROM {} WHERE {}", R::COLUMNS, R::TABLE, owned_id::<R>(1));
    let out: Option<R::Out> =
        sqlx::query_as(&sql).bind(id).bind(caller.owner()).fetch_optional(&state.pool).await.map_err(storage_error)?;
    out.map(Json).ok_or_else(|| unknown::<R>(id))
}

/// `PUT /{id}`: replaces the resource, `version` + 1.
pub(super) async fn update<R: Owned>(
    Admin { state, caller }: Admin,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Json<R::Out>, ApiError> {
    let id = path_uuid(path, R::WHAT)?;
    let object = read_object(&headers, request_body).await?;
    body::check_matches_path(&object, R::ID_PROPERTY, &id.to_string())?;
    let spec = R::parse(&object)?;
    let exists = format!("SELECT EXISTS (SELECT 1 FROM {} WHERE {})", R::TABLE, owned_id::<R>(1));
    let visible: bool = sqlx::query_scalar(&exists)
        .bind(id)
        .bind(caller.owner())
        .fetch_one(&state.pool)
        .await
        .map_err(storage_error)?;
    if !visible {
        return Err(unknown::<R>(id));
    }
    check_writable::<R>(&state.pool, &caller, &spec).await?;
    let n = R::WRITTEN.len();
    let set = R::WRITTEN.iter().enumerate().map(|(i, column)| format!("{column} = ${}", i + 1)).collect::<Vec<_>>();
    let sql = format!(
        "UPDATE {} SET {}, version = version + 1, updated_at = now() WHERE {} RETURNING {}",
        R::TABLE,
        set.join(", "),
        owned_id::<R>(n + 1),
        R::COLUMNS
    );
    let updated = R::bind(sqlx::query_as(&sql), &spec).bind(id).bind(caller.owner()).fetch_optional(&state.pool).await;
    match updated {
        Ok(Some(out)) => {
            count_change(R::METRIC, "update");
            Ok(Json(out))
        }
        // Deleted between the check and the update.
        Ok(None) => Err(unknown::<R>(id)),
        Err(err) => Err(write_error::<R>(&state.pool, err, &spec, &caller).await),
    }
}

/// `DELETE /{id}`: 204.
pub(super) async fn delete<R: Owned>(
    Admin { state, caller }: Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_uuid(path, R::WHAT)?;
    let sql = format!("DELETE FROM {} WHERE {}", R::TABLE, owned_id::<R>(1));
    let deleted = sqlx::query(&sql)
        .bind(id)
        .bind(caller.owner())
        .execute(&state.pool)
        .await
        .map_err(storage_error)?
        .rows_affected();
    if deleted == 0 {
        return Err(unknown::<R>(id));
    }
    count_change(R::METRIC, "delete");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET ?<filters>&page=&size=`: a page in [`Owned::ORDER`]; a provider lists its own only.
pub(super) async fn list<R: Owned>(
    Admin { state, caller }: Admin,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<R::Out>>, ApiError> {
    let mut known: Vec<&str> = R::FILTERS.iter().map(|(parameter, _)| *parameter).collect();
    known.extend(["page", "size"]);
    let params = Params::parse(query, &known)?;
    let paging = params.paging()?;
    let mut filter: Vec<String> = R::FILTERS
        .iter()
        .enumerate()
        .map(|(i, (_, column))| format!("(${n}::text IS NULL OR {column} = ${n})", n = i + 1))
        .collect();
    filter.push(format!("(${n}::text IS NULL OR owner_tenant_id = ${n})", n = R::FILTERS.len() + 1));
    let mut listing = Listing::new(format!("{} WHERE {}", R::TABLE, filter.join(" AND ")));
    for (parameter, _) in R::FILTERS {
        listing = listing.bind(params.get(parameter).map(str::to_owned));
    }
    let listing = listing.bind(caller.owner().map(str::to_owned));
    let (items, total) = listing.fetch_page(&state.pool, R::COLUMNS, R::ORDER, paging).await?;
    Ok(Json(Page::new(R::TABLE, items, paging.info(total))))
}

/// `<id> = $n` and, for a provider, `owner_tenant_id = $(n+1)`.
fn owned_id<R: Owned>(n: usize) -> String {
    format!("{} = ${n} AND (${m}::text IS NULL OR owner_tenant_id = ${m})", R::ID_COLUMN, m = n + 1)
}

/// What a body may name: a provider only itself as owner and only an application no other owner
/// has rules or KPIs in (403); the owner must be registered (400).
async fn check_writable<R: Owned>(pool: &PgPool, caller: &Caller, spec: &R::Spec) -> Result<(), ApiError> {
    caller.check_owns("ownerTenantId", R::owner(spec))?;
    check_application_free(pool, caller, R::application(spec)).await?;
    check_owner(pool, "ownerTenantId", R::owner(spec)).await
}

/// Maps a failed INSERT or UPDATE: a duplicate key is 409 `conflict` naming its property, an
/// owner that vanished 400 naming `ownerTenantId`.
async fn write_error<R: Owned>(pool: &PgPool, err: sqlx::Error, spec: &R::Spec, caller: &Caller) -> ApiError {
    if violates(&err, R::UNIQUE) {
        let sql = format!(
            "SELECT {} FROM {} WHERE application = $1 AND {} = $2 AND ($3::text IS NULL OR owner_tenant_id = $3)",
            R::ID_COLUMN,
            R::TABLE,
            R::KEY.1
        );
        let existing: Option<Uuid> = sqlx::query_scalar(&sql)
            .bind(R::application(spec))
            .bind(R::key(spec))
            .bind(caller.owner())
            .fetch_optional(pool)
            .await
            .unwrap_or(None);
        let id = existing.map_or_else(String::new, |id| format!(" ({id})"));
        return ApiError::conflict(R::KEY.0, R::duplicate(spec, &id));
    }
    if violates(&err, R::OWNER_FOREIGN_KEY) {
        return ApiError::invalid_body_property(
            "ownerTenantId",
            format_args!("names no registered tenant ({})", R::owner(spec)),
        );
    }
    storage_error(err)
}

fn unknown<R: Owned>(id: Uuid) -> ApiError {
    ApiError::no_match(format!("no {} with id {id}", R::WHAT))
}
