//! The `mdsp.core.generic.*` error model of the HTTP API.
//!
//! Every error body is `{"errors":[{"code","message","logref","messageParameters"?}]}`. Client
//! errors name the offending field or parameter in the message and in `messageParameters`;
//! internal errors return a generic message and log the cause chain under the same `logref`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The `{name, value}` pairs of `messageParameters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MessageParameter {
    pub name: String,
    pub value: String,
}

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// The suffix after `mdsp.core.generic.`.
    pub code: &'static str,
    pub message: String,
    pub parameters: Vec<MessageParameter>,
    /// Seconds for the `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
    /// Internal cause, logged with the response's `logref` and never sent to the client.
    pub cause: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorEntry<'a> {
    code: String,
    message: &'a str,
    logref: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    message_parameters: &'a [MessageParameter],
}

impl ApiError {
    /// An error with any status and `mdsp.core.generic.<code>`; prefer the named constructors.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), parameters: Vec::new(), retry_after: None, cause: None }
    }

    fn with_parameter(mut self, name: &str, value: impl Into<String>) -> Self {
        self.parameters.push(MessageParameter { name: name.to_owned(), value: value.into() });
        self
    }

    /// 400: a query or header parameter has a wrong value.
    pub fn invalid_parameter(parameter: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalidParameter", format!("{parameter} {problem}"))
            .with_parameter("parameter", parameter)
    }

    /// 400: a required query parameter is missing.
    pub fn missing_parameter(parameter: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "missingParameter", format!("{parameter} is required"))
            .with_parameter("parameter", parameter)
    }

    /// 400: a property of the request body has a wrong value or type. `path` is the property's
    /// path, e.g. `users[0].resources[1].usages[3].datetime`.
    pub fn invalid_body_property(path: &str, problem: impl std::fmt::Display) -> Self {
        let message = if path.is_empty() { format!("request body {problem}") } else { format!("{path} {problem}") };
        Self::new(StatusCode::BAD_REQUEST, "invalidRequestBodyProperty", message).with_parameter("property", path)
    }

    /// 400: a required property of the request body is missing.
    pub fn missing_body_property(path: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "missingRequestBodyProperty", format!("{path} is required"))
            .with_parameter("property", path)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 409: the body's `property` collides with a resource that exists (a duplicate name).
    pub fn conflict(property: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message).with_parameter("property", property)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn no_match(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "noMatch", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupportedMediaType", message)
    }

    pub fn too_many_requests(retry_after_seconds: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tooManyRequests",
            format!("too many requests for this tenant; retry after {retry_after_seconds} s"),
        );
        err.retry_after = Some(retry_after_seconds);
        err
    }

    /// 503: a dependency (Kafka, PostgreSQL) is unreachable; nothing was accepted.
    pub fn service_unavailable(message: impl Into<String>, retry_after_seconds: u64) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, "serviceUnavailable", message);
        err.retry_after = Some(retry_after_seconds);
        err
    }

    /// 500 with a generic message; the cause is logged under the response's `logref`.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut err = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internalServerError", "internal server error");
        err.cause = Some(cause.to_string());
        err
    }

    /// The full code as sent, `mdsp.core.generic.<code>`.
    pub fn full_code(&self) -> String {
        format!("mdsp.core.generic.{}", self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let logref = uuid::Uuid::new_v4().to_string();
        match &self.cause {
            Some(cause) => tracing::error!(%logref, cause, "internal error"),
            None if self.status.is_server_error() => {
                tracing::warn!(%logref, code = self.code, message = %self.message, "unavailable")
            }
            None => tracing::debug!(%logref, code = self.code, message = %self.message, "client error"),
        }
        let message = self.message.as_str();
        let body = ErrorBody {
            errors: [ErrorEntry { code: self.full_code(), message, logref, message_parameters: &self.parameters }],
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(err: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn client_errors_name_the_field() {
        let (status, _, body) = body_of(ApiError::missing_body_property("users[0].tenantId")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let entry = &body["errors"][0];
        assert_eq!(entry["code"], "mdsp.core.generic.missingRequestBodyProperty");
        assert_eq!(entry["message"], "users[0].tenantId is required");
        assert_eq!(entry["messageParameters"][0]["value"], "users[0].tenantId");
        assert_eq!(entry["logref"].as_str().unwrap().len(), 36);
    }

    #[tokio::test]
    async fn internal_errors_hide_the_cause() {
        let (status, _, body) = body_of(ApiError::internal("password=secret in dsn")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errors"][0]["message"], "internal server error");
        assert!(!body.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn throttling_says_when_to_retry() {
        let (status, retry, body) = body_of(ApiError::too_many_requests(3)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry.as_deref(), Some("3"));
        assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.tooManyRequests");
    }
}
