//! Serving HTTP with limits: every public and admin listener goes through [`serve`].
//!
//! `axum::serve` sets no timer on its connections, so hyper's header-read timeout never fires
//! and a client that sends half a request line holds its connection (and a task) forever. Here
//! every connection has a header-read timeout, every request a deadline (the handler, body read
//! included: a client trickling its body is cut off like a slow handler, with a 503 in the
//! `mdsp.core.generic.*` format), and the number of open connections is capped: past the cap the
//! listener stops accepting until one closes, so the kernel's backlog absorbs the rest instead of
//! the process's memory.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpArgs;
use crate::error::ApiError;

/// How long requests in hand may take to finish after shutdown began.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` with the limits of `limits` until `shutdown` is cancelled, then
/// stops accepting and lets the requests in hand finish (for at most 30 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpArgs,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    metrics::counter!("uts_http_request_timeouts_total").increment(0);
    let app = app
        .layer(middleware::from_fn(refuse_control_characters))
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response));
    let connections = Arc::new(Semaphore::new(limits.connection_limit.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: not fatal, wait a moment.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        // The peer's address, as axum's `ConnectInfo` (the gateway's forwarding reports it).
        let service = app.clone().map_request(move |request: Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            request
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in hand after {} s of shutdown were dropped", DRAIN.as_secs());
    }
    Ok(())
}

/// The answer to a known path asked with a method it does not serve (the router's
/// `method_not_allowed_fallback`): 405 in the `mdsp` format, with axum's `Allow` header, instead
/// of an empty body.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "methodNotAllowed",
        format!("{method} is not allowed on {}; the Allow header lists what is", uri.path()),
    )
}

use crate::domain::has_control_character;

/// Text with a control character never reaches a handler (PostgreSQL refuses NUL in text, which
/// was answered 500): 404 when the path holds one (it names a resource that cannot exist), 400
/// naming the query parameter otherwise.
async fn refuse_control_characters(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let decoded = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy();
    if has_control_character(&decoded) {
        return ApiError::no_match("no such resource").into_response();
    }
    if let Some(query) = uri.query() {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if has_control_character(&name) {
                let shown = name.escape_default().to_string();
                return ApiError::invalid_parameter(&shown, "is not a parameter of this API").into_response();
            }
            if has_control_character(&value) {
                return ApiError::invalid_parameter(&name, "must not contain control characters").into_response();
            }
        }
    }
    next.run(request).await
}

/// A handler that panicked answers 500 in the `mdsp` format (the panic is logged under the
/// logref) instead of dropping the client's connection without a word.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let cause = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a handler panicked");
    ApiError::internal(format!("panic: {cause}")).into_response()
}

/// 415 unless the request's Content-Type is JSON (`application/json` or `application/*+json`,
/// parameters ignored).
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(format!("Content-Type must be application/json, not {content_type:?}")))
    }
}

/// How much of a refused body is still read (and discarded) after the 413, and for how long.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The request body, at most `limit` bytes: 413 beyond, 400 when it cannot be read. A body
/// whose declared `Content-Length` is over the limit is refused before a byte of it is read (a
/// client that declared 50 MB and sent nothing waited for the 30 s deadline); the rest of a
/// refused body is drained in the background, up to a bound, so that a client still sending
/// reads the 413 instead of a connection reset.
pub async fn read_body(mut body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    let too_large = || ApiError::payload_too_large(format!("the request body exceeds {limit} bytes"));
    if body.size_hint().lower() > limit as u64 {
        drain_later(body);
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(body.size_hint().exact().unwrap_or(0).min(limit as u64) as usize);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|err| ApiError::invalid_body_property("", format_args!("could not be read: {err}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                drain_later(body);
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.into())
}

/// Reads and discards what is left of `body`, at most [`DRAIN_BYTES`] for [`DRAIN_TIME`]; hyper
/// closes the connection afterwards unless the body was read to its end.
fn drain_later(mut body: Body) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let drain = async {
            let mut drained = 0;
            while let Some(Ok(frame)) = body.frame().await {
                drained += frame.data_ref().map_or(0, |d| d.len());
                if drained > DRAIN_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    });
}

/// Bounds a request, body read included: 503 `serviceUnavailable` when it takes longer.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request).into_future()).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("uts_http_request_timeouts_total").increment(1);
            ApiError::service_unavailable(format!("the request did not complete within {} ms", limit.as_millis()), 1)
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn start(limits: HttpArgs) -> (std::net::SocketAddr, CancellationToken) {
        let app = Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }))
            .route("/echo", post(|body: String| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { serve(listener, app, &limits, stop).await });
        (addr, shutdown)
    }

    /// Sends `request` raw and reads until the server closes the connection (or 10 s pass).
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (String, Duration) {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
    }

    fn limits(header_ms: u64, request_ms: u64, connections: usize) -> HttpArgs {
        HttpArgs { header_timeout_ms: header_ms, request_timeout_ms: request_ms, connection_limit: connections }
    }

    #[test]
    fn json_content_types_are_recognised() {
        use axum::http::{header, HeaderMap};
        let mut headers = HeaderMap::new();
        assert!(require_json(&headers).is_err());
        for ok in ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"] {
            headers.insert(header::CONTENT_TYPE, ok.parse().unwrap());
            assert!(require_json(&headers).is_ok(), "{ok}");
        }
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(require_json(&headers).unwrap_err().status, 415);
    }

    #[tokio::test]
    async fn a_half_sent_request_line_is_cut_off() {
        let (addr, _stop) = start(limits(200, 5_000, 16)).await;
        let (answer, took) = exchange(addr, b"GET /fast HT").await;
        assert!(took < Duration::from_secs(5), "the connection was held for {took:?}");
        assert!(!answer.contains("200 OK"), "{answer}");
    }

    #[tokio::test]
    async fn a_slow_handler_or_a_trickled_body_gets_the_mdsp_503() {
        let (addr, _stop) = start(limits(5_000, 300, 16)).await;
        let (answer, _) = exchange(addr, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("mdsp.core.generic.serviceUnavailable") && answer.contains("retry-after: 1"),
            "{answer}"
        );
        // A body announced but never sent.
        let (answer, _) =
            exchange(addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc")
                .await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let (answer, _) = exchange(addr, b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }

    #[tokio::test]
    async fn past_the_connection_cap_new_clients_wait_for_a_free_slot() {
        // One connection at a time: an idle client holds the slot until its header timeout, then
        // the next client is served.
        let (addr, _stop) = start(limits(300, 5_000, 1)).await;
        let idle = TcpStream::connect(addr).await.unwrap();
        let (answer, took) = exchange(addr, b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(took >= Duration::from_millis(250), "served after {took:?}, before the idle client's slot was freed");
        drop(idle);
    }
}
