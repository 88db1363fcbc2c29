//! What every handler of the query service shares, public and admin alike: the caller
//! ([`authorize`]), query parameters ([`Params`]), paging ([`Paging`], [`PageInfo`],
//! [`Listing`]), ids from the path and the mapping of storage failures ([`storage_error`]).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, PgPool, Row};
use uts_common::auth::Scope;
use uts_common::domain::format_datetime;
use uts_common::error::ApiError;

use crate::AppState;

/// Largest `size` of a page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// `size` when the request does not give one (the admin lists; the public ones have their own).
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// The caller of a public read: 401 without a valid token, 403 without `scope`, 429 over the
/// tenant's rate limit (the gateway's order). Answers the caller's tenant.
pub(crate) async fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<String, ApiError> {
    let principal = state.auth.authenticate(headers).await?;
    principal.require(scope)?;
    state.throttle(&principal.tenant)?;
    Ok(principal.tenant)
}

/// The query parameters of a request.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses parameters outside `known` and parameters given twice; drops empty values.
    pub(crate) fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(pairs) = query
            .map_err(|err| ApiError::invalid_parameter("query string", format_args!("could not be decoded: {err}")))?;
        let mut kept: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::invalid_parameter(
                    &name,
                    format_args!("is not a parameter of this list (known: {})", known.join(", ")),
                ));
            }
            if kept.iter().any(|(seen, _)| *seen == name) {
                return Err(ApiError::invalid_parameter(&name, "must be given at most once"));
            }
            if !value.is_empty() {
                kept.push((name, value));
            }
        }
        Ok(Self(kept))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// `page` (0-based) and `size`, [`DEFAULT_PAGE_SIZE`] when absent.
    pub(crate) fn paging(&self) -> Result<Paging, ApiError> {
        self.paging_or(DEFAULT_PAGE_SIZE)
    }

    /// `page` (0-based) and `size`, `default_size` when absent.
    pub(crate) fn paging_or(&self, default_size: u32) -> Result<Paging, ApiError> {
        let page = match self.get("page") {
            None => 0,
            Some(text) => text
                .parse::<u32>()
                .map_err(|_| ApiError::invalid_parameter("page", "must be a whole number of at least 0"))?,
        };
        let size = match self.get("size") {
            None => default_size,
            Some(text) => {
                text.parse::<u32>().ok().filter(|size| (1..=MAX_PAGE_SIZE).contains(size)).ok_or_else(|| {
                    ApiError::invalid_parameter(
                        "size",
                        format_args!("must be a whole number from 1 to {MAX_PAGE_SIZE}"),
                    )
                })?
            }
        };
        Ok(Paging { page, size })
    }
}

/// Which slice of a list to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paging {
    pub(crate) page: u32,
    pub(crate) size: u32,
}

impl Paging {
    pub(crate) fn limit(self) -> i64 {
        i64::from(self.size)
    }

    /// At most (2^32 - 1) * 1000: fits an i64.
    pub(crate) fn offset(self) -> i64 {
        i64::from(self.page) * i64::from(self.size)
    }

    pub(crate) fn info(self, total_elements: i64) -> PageInfo {
        let size = i64::from(self.size);
        PageInfo { number: self.page, size: self.size, total_elements, total_pages: (total_elements + size - 1) / size }
    }
}

/// `page` of a list answer (DESIGN.md §3).
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PageInfo {
    number: u32,
    size: u32,
    total_elements: i64,
    total_pages: i64,
}

/// A list answer: `{"<key>": [...], "page": {...}}`.
#[derive(Debug)]
pub(crate) struct Page<T> {
    key: &'static str,
    items: Vec<T>,
    page: PageInfo,
}

impl<T> Page<T> {
    pub(crate) fn new(key: &'static str, items: Vec<T>, page: PageInfo) -> Self {
        Self { key, items, page }
    }
}

impl<T: Serialize> Serialize for Page<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(self.key, &self.items)?;
        map.serialize_entry("page", &self.page)?;
        map.end()
    }
}

/// A filtered list read a page at a time with its total: `[WITH …] SELECT <columns> FROM <from>
/// ORDER BY <order>`, the arguments `$1…$n` bound in order ([`Listing::bind`]), the page's
/// `LIMIT`/`OFFSET` after them. One statement answers the rows and the total (a window count);
/// only a page past the end costs a second one, for the total.
pub(crate) struct Listing {
    with: String,
    from: String,
    args: PgArguments,
    bound: Result<(), String>,
}

impl Listing {
    /// `from`: the `FROM … WHERE …` part, without the words `FROM`.
    pub(crate) fn new(from: impl Into<String>) -> Self {
        Self { with: String::new(), from: from.into(), args: PgArguments::default(), bound: Ok(()) }
    }

    /// A `WITH …` clause before the SELECT.
    pub(crate) fn with(mut self, with: impl Into<String>) -> Self {
        self.with = with.into();
        self
    }

    /// The next argument (`$1`, `$2`, … in the order of the calls).
    pub(crate) fn bind<'q, T>(mut self, value: T) -> Self
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + 'q,
    {
        if let (Ok(()), Err(err)) = (&self.bound, self.args.add(value)) {
            self.bound = Err(err.to_string());
        }
        self
    }

    /// The page of rows (`T` from `columns`) ordered by `order`, and the number of all rows.
    pub(crate) async fn fetch_page<T>(
        self,
        pool: &PgPool,
        columns: &str,
        order: &str,
        paging: Paging,
    ) -> Result<(Vec<T>, i64), ApiError>
    where
        T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        if let Err(err) = &self.bound {
            return Err(ApiError::internal(format_args!("binding a list's arguments: {err}")));
        }
        let next = self.args.len() + 1;
        let mut args = self.args.clone();
        let limits = args.add(paging.limit()).and_then(|()| args.add(paging.offset()));
        limits.map_err(|err| ApiError::internal(format_args!("binding a page: {err}")))?;
        let (with, from) = (&self.with, &self.from);
        let sql = format!(
            "{with} SELECT {columns}, count(*) OVER () AS listing_total FROM {from}
             ORDER BY {order} LIMIT ${next} OFFSET ${}",
            next + 1
        );
        let rows: Vec<PgRow> = sqlx::query_with(&sql, args).fetch_all(pool).await.map_err(storage_error)?;
        let total = match rows.first() {
            Some(row) => row.try_get::<i64, _>("listing_total").map_err(storage_error)?,
            None if paging.page == 0 => 0,
            // An empty page past the end still needs the total.
            None => sqlx::query_scalar_with(&format!("{with} SELECT count(*) FROM {from}"), self.args)
                .fetch_one(pool)
                .await
                .map_err(storage_error)?,
        };
        let items = rows.iter().map(T::from_row).collect::<Result<Vec<T>, _>>().map_err(storage_error)?;
        Ok((items, total))
    }
}

/// Whether `sql`, a `SELECT EXISTS (…)` over the text arguments `args` (`$1`…), holds.
pub(crate) async fn holds(pool: &PgPool, sql: &str, args: &[&str]) -> Result<bool, ApiError> {
    let mut query = sqlx::query_scalar(sql);
    for arg in args {
        query = query.bind(*arg);
    }
    query.fetch_one(pool).await.map_err(storage_error)
}

/// A database failure: 503 when PostgreSQL cannot be reached, else 500 (the cause is logged
/// under the response's `logref`, never sent).
pub(crate) fn storage_error(err: sqlx::Error) -> ApiError {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(%err, "PostgreSQL unavailable; request refused with 503");
            ApiError::service_unavailable("PostgreSQL is unavailable; nothing was changed, retry later", 1)
        }
        err => ApiError::internal(format_args!("PostgreSQL: {err}")),
    }
}

/// A path segment, or 400 naming it when it cannot be decoded.
pub(crate) fn path_segments<T>(path: Result<Path<T>, PathRejection>, name: &str) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|err| ApiError::invalid_parameter(name, format_args!("could not be read from the path: {err}")))
}

/// A uuid id from the path; anything else cannot name an existing resource, so it is 404.
pub(crate) fn path_uuid(path: Result<Path<String>, PathRejection>, what: &str) -> Result<uuid::Uuid, ApiError> {
    let text = path.map_err(|_| ApiError::no_match(format!("no {what} with this id")))?.0;
    uuid::Uuid::try_parse(&text).map_err(|_| ApiError::no_match(format!("no {what} with id {text}")))
}

/// The API spellings of an enum's values, for "must be one of …" messages.
pub(crate) fn spellings<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|value| as_str(*value)).collect()
}

/// Datetimes as the API renders them: RFC 3339, UTC, milliseconds.
pub(crate) fn serialize_datetime<S: serde::Serializer>(dt: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_datetime(*dt))
}

#[cfg(test)]
mod tests;
