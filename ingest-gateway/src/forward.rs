//! The one address: every request the gateway does not serve itself goes to the query service,
//! streamed both ways (method, path, query, headers and body as sent; hop-by-hop headers
//! dropped, `X-Forwarded-For`/`-Proto`/`-Host` added). The query service answers unknown routes
//! and methods in the `mdsp` format itself, so the gateway needs no copy of its routes.
//!
//! Why here and not in an edge process: the POSTs, which carry all the volume, stay one hop
//! (the gateway keeps serving them itself), and there is no extra process to run and scale; the
//! reads and the admin API are a small share of the traffic and pay one local hop. Kubernetes
//! users can still route paths to the query service directly; the stages stay separate processes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::{Authority, Scheme, Uri};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use uts_common::error::ApiError;
use uts_common::telemetry::error_chain;

use crate::AppState;

/// The query service, as the gateway reaches it.
pub(crate) struct Upstream {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
    /// The URL's path without its trailing slash ("" for none).
    prefix: String,
}

impl Upstream {
    pub(crate) fn new(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("--query-service-url {url:?} is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            bail!("--query-service-url {url:?} must be an absolute http:// URL");
        };
        if scheme != Scheme::HTTP {
            bail!("--query-service-url {url:?}: only http:// is supported (the query service is a neighbour, not the internet)");
        }
        if uri.query().is_some() {
            bail!("--query-service-url {url:?} must not have a query");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        // Idle connections are let go well before the query service's header timeout (10 s by
        // default) closes them from its side: a request sent on a connection the server is
        // closing at that moment fails (seen once under schemathesis as a 503).
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        Ok(Self { client, scheme, authority, prefix: uri.path().trim_end_matches('/').to_owned() })
    }

    fn target(&self, original: &Uri) -> Result<Uri, axum::http::Error> {
        let path_and_query = original.path_and_query().map_or("/", |pq| pq.as_str());
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.prefix))
            .build()
    }
}

/// How long an idle connection to the query service is kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(HeaderName::from_static("proxy-connection"));
}

/// Forwards the request to the query service and streams its answer back; 503 when it cannot
/// be reached (nothing of a forwarded request changes anything in the gateway).
pub(crate) async fn forward(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let upstream = &state.upstream;
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let (mut parts, body) = request.into_parts();
    let target = match upstream.target(&parts.uri) {
        Ok(target) => target,
        Err(_) => return ApiError::no_match("no such endpoint").into_response(),
    };
    drop_hop_by_hop(&mut parts.headers);
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    parts.headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
    if let Some(ip) = peer {
        let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            parts.headers.insert(HeaderName::from_static("x-forwarded-for"), value);
        }
    }
    parts.headers.remove(header::HOST);
    parts.uri = target;
    // A read without a body can be sent again: once more on a fresh connection when a pooled
    // one failed under it (the server closed it as the request left). Nothing else is retried.
    let again = (matches!(parts.method, Method::GET | Method::HEAD) && body.size_hint().exact() == Some(0))
        .then(|| (parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone()));
    let mut answer = upstream.client.request(Request::from_parts(parts, body)).await;
    if let (Err(err), Some((method, uri, version, headers))) = (&answer, again) {
        if !err.is_connect() {
            tracing::debug!(err = %error_chain(err), "a pooled connection failed under a read; sent once more");
            let mut retry = Request::new(Body::empty());
            *retry.method_mut() = method;
            *retry.uri_mut() = uri;
            *retry.version_mut() = version;
            *retry.headers_mut() = headers;
            answer = upstream.client.request(retry).await;
        }
    }
    match answer {
        Ok(answer) => {
            let (mut parts, body) = answer.into_parts();
            drop_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(err) => {
            tracing::warn!(err = %error_chain(&err), "forwarding to the query service failed; answered 503");
            metrics::counter!("uts_gateway_forward_failures_total").increment(1);
            ApiError::service_unavailable("the query service is unavailable; nothing was changed, retry later", 1)
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_path_and_query_under_the_upstreams_prefix() {
        let upstream = Upstream::new("http://127.0.0.1:8090").unwrap();
        let uri: Uri = "/api/usagetransparency/v3/usagesJobs?size=5&tenant=a%20b".parse().unwrap();
        assert_eq!(
            upstream.target(&uri).unwrap().to_string(),
            "http://127.0.0.1:8090/api/usagetransparency/v3/usagesJobs?size=5&tenant=a%20b"
        );
        let prefixed = Upstream::new("http://query:8090/internal/").unwrap();
        assert_eq!(
            prefixed.target(&"/token_keys".parse().unwrap()).unwrap().to_string(),
            "http://query:8090/internal/token_keys"
        );
        for bad in ["query:8090", "https://query", "http://query/?a=1", "not a url"] {
            assert!(Upstream::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        drop_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::AUTHORIZATION));
    }
}
