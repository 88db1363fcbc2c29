//! `PUT`/`DELETE /tenants/{tenantId}/applications/{application}` and
//! `GET /tenants/{tenantId}/applications`: which applications an operator may report for its
//! IoT tenant (DESIGN.md §3; the verifier checks it).
//!
//! Only IoT tenants have provisioned applications. The tenant's row is share-locked while an
//! application is provisioned, so a concurrent type change (which locks the row for update and
//! then looks for provisioned applications) either waits for us or is seen by us. An unknown
//! tenant in the path is 404, like any path naming nothing; `PUT` needs no body.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uts_common::domain::MAX_NAME_LEN;
use uts_common::error::ApiError;

use super::body::name_problem;
use super::{count_change, Admin, Caller};
use crate::request::{holds, path_segments, serialize_datetime, storage_error};

/// One provisioned application as answered.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(super) struct Provisioned {
    tenant_id: String,
    application: String,
    #[serde(serialize_with = "serialize_datetime")]
    created_at: DateTime<Utc>,
}

/// `PUT /tenants/{tenantId}/applications/{application}`: 201 when provisioned now, 200 when it
/// already was.
pub(super) async fn put(
    Admin { state, caller }: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (tenant_id, application) = path_segments(path, "path")?;
    check_visible(&state.pool, &caller, &tenant_id).await?;
    if let Some(problem) = name_problem(&application, MAX_NAME_LEN) {
        return Err(ApiError::invalid_parameter("application", problem));
    }
    let mut tx = state.pool.begin().await.map_err(storage_error)?;
    let tenant_type: Option<String> =
        sqlx::query_scalar("SELECT tenant_type FROM tenants WHERE tenant_id = $1 FOR SHARE")
            .bind(&tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage_error)?;
    match tenant_type.as_deref() {
        None => return Err(unknown_tenant(&tenant_id)),
        Some("iot") => {}
        Some(kind) => {
            return Err(ApiError::invalid_parameter(
                "tenantId",
                format_args!("must name an iot tenant; applications are provisioned only to iot tenants, and {tenant_id} is a {kind} tenant"),
            ))
        }
    }
    let inserted: Option<Provisioned> = sqlx::query_as(
        "INSERT INTO provisioning (tenant_id, application) VALUES ($1, $2)
         ON CONFLICT (tenant_id, application) DO NOTHING
         RETURNING tenant_id, application, created_at",
    )
    .bind(&tenant_id)
    .bind(&application)
    .fetch_optional(&mut *tx)
    .await
    .map_err(storage_error)?;
    let (status, provisioned) = match inserted {
        Some(provisioned) => (StatusCode::CREATED, provisioned),
        None => {
            let existing: Provisioned = sqlx::query_as(
                "SELECT tenant_id, application, created_at FROM provisioning WHERE tenant_id = $1 AND application = $2",
            )
            .bind(&tenant_id)
            .bind(&application)
            .fetch_one(&mut *tx)
            .await
            .map_err(storage_error)?;
            (StatusCode::OK, existing)
        }
    };
    tx.commit().await.map_err(storage_error)?;
    if status == StatusCode::CREATED {
        count_change("provisioning", "create");
    }
    Ok((status, Json(provisioned)).into_response())
}

/// `DELETE /tenants/{tenantId}/applications/{application}`: 204, or 404 when it was not
/// provisioned.
pub(super) async fn delete(
    Admin { state, caller }: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (tenant_id, application) = path_segments(path, "path")?;
    check_visible(&state.pool, &caller, &tenant_id).await?;
    let deleted = sqlx::query("DELETE FROM provisioning WHERE tenant_id = $1 AND application = $2")
        .bind(&tenant_id)
        .bind(&application)
        .execute(&state.pool)
        .await
        .map_err(storage_error)?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::no_match(format!("application {application} is not provisioned to tenant {tenant_id}")));
    }
    count_change("provisioning", "delete");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub(super) struct Applications {
    applications: Vec<Provisioned>,
}

/// `GET /tenants/{tenantId}/applications`, ordered by application. Not paged: an IoT tenant
/// has a handful of applications.
pub(super) async fn list(
    Admin { state, caller }: Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Applications>, ApiError> {
    let tenant_id = path_segments(path, "tenantId")?;
    check_visible(&state.pool, &caller, &tenant_id).await?;
    if !tenant_exists(&state.pool, &tenant_id).await? {
        return Err(unknown_tenant(&tenant_id));
    }
    let applications: Vec<Provisioned> = sqlx::query_as(
        "SELECT tenant_id, application, created_at FROM provisioning WHERE tenant_id = $1 ORDER BY application",
    )
    .bind(&tenant_id)
    .fetch_all(&state.pool)
    .await
    .map_err(storage_error)?;
    Ok(Json(Applications { applications }))
}

async fn tenant_exists(pool: &PgPool, tenant_id: &str) -> Result<bool, ApiError> {
    holds(pool, "SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)", &[tenant_id]).await
}

/// A provider provisions only its IoT tenants (those naming it as their operator); any other
/// tenant answers as unknown. Nothing to check for the service operator.
async fn check_visible(pool: &PgPool, caller: &Caller, tenant_id: &str) -> Result<(), ApiError> {
    let Some(own) = caller.owner() else { return Ok(()) };
    let visible = holds(
        pool,
        "SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1 AND operator_tenant_id = $2)",
        &[tenant_id, own],
    )
    .await?;
    if visible {
        Ok(())
    } else {
        Err(unknown_tenant(tenant_id))
    }
}

fn unknown_tenant(tenant_id: &str) -> ApiError {
    ApiError::no_match(format!("tenant {tenant_id} is not registered"))
}
