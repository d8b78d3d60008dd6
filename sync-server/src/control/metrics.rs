//! `/metrics`: Prometheus text exposition of the control plane's requests (counts by method and
//! status, a latency histogram). Served to the operator's admin token only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::http::Method;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

/// Request counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_status: BTreeMap<(&'static str, u16), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_secs: f64,
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, method: &Method, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *inner
            .by_status
            .entry((method_label(method), status))
            .or_default() += 1;
        for (bucket, bound) in inner.buckets.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        inner.count += 1;
        inner.sum_secs += secs;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        out.push_str(
            "# HELP dooz_http_requests_total HTTP requests answered by the control plane.\n\
             # TYPE dooz_http_requests_total counter\n",
        );
        for ((method, status), n) in &inner.by_status {
            let _ = writeln!(
                out,
                "dooz_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP dooz_http_request_duration_seconds Time to answer control-plane requests.\n\
             # TYPE dooz_http_request_duration_seconds histogram\n",
        );
        for (bound, n) in BUCKETS.iter().zip(inner.buckets) {
            let _ = writeln!(
                out,
                "dooz_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "dooz_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            inner.count
        );
        let _ = writeln!(
            out,
            "dooz_http_request_duration_seconds_sum {}",
            inner.sum_secs
        );
        let _ = writeln!(
            out,
            "dooz_http_request_duration_seconds_count {}",
            inner.count
        );
        out
    }
}
