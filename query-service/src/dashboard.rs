//! The dashboard ("Usage Transparency UI"): three static files under `/ui/`, compiled into the
//! binary. The page signs in with a token and reads everything through the public API
//! (`/usagesJobs…`, `/aggregatedMonthly…`), so it can see exactly what the token may see.
//!
//! The files are served with a strict Content-Security-Policy (scripts, styles and requests
//! only from this origin, no framing), so neither an injected script nor a foreign page can
//! read the token the page holds.

use std::sync::Arc;

use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Where the dashboard lives.
pub const PATH: &str = "/ui/";

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to(PATH) }))
        .route("/ui", get(|| async { Redirect::to(PATH) }))
        .route(PATH, get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/style.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary may bring new files: revalidate rather than run a stale script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_loads_only_its_own_files() {
        use super::*;
        assert!(INDEX.contains("src=\"app.js\"") && INDEX.contains("href=\"style.css\""));
        // Values from the API reach the page as text only.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style=\""), "inline code would break the CSP");
    }
}
