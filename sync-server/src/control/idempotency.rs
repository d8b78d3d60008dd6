//! `Idempotency-Key` on POST: the first successful (2xx) response is stored, a replay of the
//! same request returns it again (with `Idempotent-Replayed: true`), and the same key with
//! another request is refused with 422. A second request with a key whose first request is
//! still running gets 409.
//!
//! Records are keyed by `BLAKE3(caller's credential, key)` and the stored body is encrypted with
//! a keystream derived from the credential and the key: the server keeps neither, so a response
//! that carried a secret (an API key, an enrolment token) is not readable from the data dir.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::control::AppState;
use crate::control::problem::Problem;
use crate::control::store::IdempotentResponse;
use crate::service::unix_now;

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on replayed responses.
pub const REPLAYED: &str = "idempotent-replayed";
/// Largest request or response body handled (bytes).
const MAX_BODY: usize = 1024 * 1024;

/// Keys whose first request is running.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashSet<[u8; 32]>>);

struct InFlightGuard<'a>(&'a InFlight, [u8; 32]);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

fn derive(context: &str, credential: &[u8], key: &[u8]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(&(credential.len() as u64).to_le_bytes());
    h.update(credential);
    h.update(key);
    h
}

fn apply_keystream(credential: &[u8], key: &[u8], data: &mut [u8]) {
    let mut stream = vec![0u8; data.len()];
    derive("dooz-server idempotency body v1", credential, key)
        .finalize_xof()
        .fill(&mut stream);
    for (d, s) in data.iter_mut().zip(stream) {
        *d ^= s;
    }
}

/// The middleware.
pub(crate) async fn idempotency(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let key = key.as_bytes().to_vec();
    if key.is_empty() || key.len() > 255 {
        return Problem::bad_request("the Idempotency-Key must be 1 to 255 characters")
            .into_response();
    }
    let credential = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            "the body is too large",
        )
        .into_response();
    };
    let mut h = blake3::Hasher::new_derive_key("dooz-server idempotency request v1");
    h.update(parts.uri.path().as_bytes());
    h.update(&[0]);
    h.update(&bytes);
    let request_hash = *h.finalize().as_bytes();
    let lookup = *derive("dooz-server idempotency lookup v1", &credential, &key)
        .finalize()
        .as_bytes();

    match state.control.idempotent_response(&lookup) {
        Ok(Some(stored)) => return replay(stored, request_hash, &credential, &key),
        Ok(None) => {}
        Err(e) => return Problem::from(e).into_response(),
    }
    if !state
        .in_flight
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(lookup)
    {
        return Problem::conflict(
            "idempotency-in-progress",
            "Request in progress",
            "a request with this Idempotency-Key is still running; retry when it has finished",
        )
        .into_response();
    }
    let _guard = InFlightGuard(&state.in_flight, lookup);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Problem::internal(&"a response body could not be read").into_response();
    };
    let mut sealed = body.to_vec();
    apply_keystream(&credential, &key, &mut sealed);
    let record = IdempotentResponse {
        request_hash,
        status: parts.status.as_u16(),
        body: sealed,
        at: unix_now(),
    };
    if let Err(e) = state
        .control
        .put_idempotent_response(&lookup, &record)
        .await
    {
        tracing::warn!(error = %e, "could not store an idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(
    stored: IdempotentResponse,
    request_hash: [u8; 32],
    credential: &[u8],
    key: &[u8],
) -> Response {
    if stored.request_hash != request_hash {
        return Problem::invalid(
            "this Idempotency-Key was used with another request; use a new key for a new request",
        )
        .into_response();
    }
    let mut body = stored.body;
    apply_keystream(credential, key, &mut body);
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
