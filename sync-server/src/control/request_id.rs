//! Request ids: every request runs in a tracing span with its id (the caller's `X-Request-Id`
//! when it sends a sane one, else a new random one), the id is returned in `X-Request-Id`, and
//! each request is logged (method, path without the query, status, duration) at debug level.
//! Headers and bodies are never logged. Each answer is counted in [`Metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::control::metrics::Metrics;

/// The header.
pub const REQUEST_ID: &str = "x-request-id";

fn new_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = FALLBACK.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The middleware.
pub(crate) async fn request_id(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_id, str::to_owned);
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let method = request.method().clone();
    let start = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    metrics.record(&method, response.status().as_u16(), start.elapsed());
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
