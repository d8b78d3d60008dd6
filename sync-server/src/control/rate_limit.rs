//! Rate limits per credential: a token bucket for each `Authorization` value (keyed by a hash
//! of it, never the value), with the IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers)
//! on every answer and 429 with `Retry-After` when the bucket is empty.
//!
//! `RateLimit-Policy: "per-key";q=<burst>;w=<seconds to refill>` and
//! `RateLimit: "per-key";r=<requests left>;t=<seconds until full>`. Requests without
//! credentials are not counted here (they are refused 401 anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::control::problem::Problem;

/// Buckets kept at most; past it, full buckets are forgotten.
const MAX_BUCKETS: usize = 100_000;

/// A rate limit: `burst` requests at once, refilled at `per_minute` requests a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests refilled per minute (at least 1).
    pub per_minute: u32,
    /// Most requests in a burst (the bucket's size, at least 1).
    pub burst: u32,
}

/// The buckets.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<[u8; 32], (f64, Instant)>>,
}

/// What one request got.
struct Verdict {
    allowed: bool,
    remaining: u64,
    /// Seconds until the bucket is full again.
    reset: u64,
    /// Seconds until one request is allowed.
    retry_after: u64,
}

impl RateLimiter {
    /// Buckets for `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit: RateLimit {
                per_minute: limit.per_minute.max(1),
                burst: limit.burst.max(1),
            },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.limit.per_minute) / 60.0
    }

    fn take(&self, key: [u8; 32], now: Instant) -> Verdict {
        let burst = f64::from(self.limit.burst);
        let rate = self.rate();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        let secs = |x: f64| if x <= 0.0 { 0 } else { x.ceil() as u64 };
        Verdict {
            allowed,
            remaining: tokens.floor() as u64,
            reset: secs((burst - *tokens) / rate),
            retry_after: secs((1.0 - *tokens) / rate).max(u64::from(!allowed)),
        }
    }

    fn policy_header(&self) -> String {
        let window = (f64::from(self.limit.burst) / self.rate()).ceil() as u64;
        format!("\"per-key\";q={};w={}", self.limit.burst, window.max(1))
    }
}

/// The middleware.
pub(crate) async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(credential) = request.headers().get(header::AUTHORIZATION) else {
        return next.run(request).await;
    };
    let mut hasher = blake3::Hasher::new_derive_key("dooz-server rate limit bucket v1");
    hasher.update(credential.as_bytes());
    let verdict = limiter.take(*hasher.finalize().as_bytes(), Instant::now());
    let mut response = if verdict.allowed {
        next.run(request).await
    } else {
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!(
                "this credential sent more requests than its rate limit allows; retry in {} s",
                verdict.retry_after
            ),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&verdict.retry_after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&limiter.policy_header()) {
        headers.insert("ratelimit-policy", v);
    }
    let state = format!("\"per-key\";r={};t={}", verdict.remaining, verdict.reset);
    if let Ok(v) = HeaderValue::from_str(&state) {
        headers.insert("ratelimit", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_empty_and_refill() {
        let limiter = RateLimiter::new(RateLimit {
            per_minute: 60,
            burst: 2,
        });
        let t0 = Instant::now();
        let key = [1; 32];
        assert!(limiter.take(key, t0).allowed);
        let second = limiter.take(key, t0);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        let refused = limiter.take(key, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 1);
        // Another key has its own bucket.
        assert!(limiter.take([2; 32], t0).allowed);
        // One request a second refills.
        assert!(limiter.take(key, t0 + Duration::from_secs(1)).allowed);
        assert_eq!(limiter.policy_header(), "\"per-key\";q=2;w=2");
    }
}
