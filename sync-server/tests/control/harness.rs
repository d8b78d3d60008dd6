//! A server with its control plane in a temp dir, an HTTP client, and log capture.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dooz_server::config::ServerSettings;
use dooz_server::control::rate_limit::RateLimit;
use dooz_server::control::{
    ApiParts, CONTROL_DIR, ControlPolicy, ControlStore, EnrolTarget, WebhookSettings,
    ensure_admin_token,
};
use dooz_server::service::{Server, ServerParts};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Fails a test that hangs instead of hanging the run. Not a timing assertion: every await in
/// these tests waits for an event that comes at once when the code works.
pub(crate) async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("the test did not finish within 60 s: something hangs")
}

/// Webhook settings for tests: retries after a millisecond or two, so that a receiver that
/// fails a few times gets the event at once.
pub(crate) fn fast_webhooks() -> WebhookSettings {
    WebhookSettings {
        retry_base: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        max_attempts: 6,
        timeout: Duration::from_secs(10),
        usage_check_interval: Duration::from_secs(3600),
    }
}

/// Everything logged by any test of this binary (at TRACE level).
pub(crate) fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,dooz_server=trace,axum=trace,tower=trace,hyper=trace,sled=debug",
            ))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// A response: status, headers, JSON body (`Null` when empty).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    /// Asserts the status, returning the body.
    #[track_caller]
    pub(crate) fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {:?}", self.body);
        self.body
    }

    /// Asserts an RFC 9457 problem with `status`, returning it.
    #[track_caller]
    pub(crate) fn problem(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {:?}", self.body);
        let ct = self.headers["content-type"].to_str().unwrap();
        assert_eq!(ct, "application/problem+json", "{:?}", self.body);
        let b = &self.body;
        assert!(
            b["type"].as_str().unwrap().starts_with("urn:dooz:problem:"),
            "{b}"
        );
        assert!(!b["title"].as_str().unwrap().is_empty(), "{b}");
        assert_eq!(b["status"].as_u64(), Some(u64::from(status)), "{b}");
        assert!(!b["detail"].as_str().unwrap().is_empty(), "{b}");
        self.body
    }
}

/// A running server with its control plane.
pub(crate) struct TestApi {
    pub(crate) server: Option<Arc<Server>>,
    pub(crate) base: String,
    pub(crate) admin: String,
    pub(crate) client: reqwest::Client,
    pub(crate) dir: TempDir,
    cancel: CancellationToken,
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    webhooks: Option<tokio::task::JoinHandle<()>>,
}

impl TestApi {
    pub(crate) async fn start() -> Self {
        Self::start_with_rate_limit(None).await
    }

    /// A server whose API limits each credential to `limit`.
    pub(crate) async fn start_with_rate_limit(limit: Option<RateLimit>) -> Self {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let config = ServerSettings {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ServerSettings::default()
        }
        .validate()
        .unwrap();
        let (mut parts, _) = ServerParts::open(&config).await.unwrap();
        let control = ControlStore::open(dir.path().join(CONTROL_DIR)).unwrap();
        let admin = ensure_admin_token(&control, None)
            .await
            .unwrap()
            .expect("a new admin token on first start");
        assert!(ensure_admin_token(&control, None).await.unwrap().is_none());
        let policy = ControlPolicy::new(control.clone(), 7 * 24 * 3600)
            .with_webhook_settings(fast_webhooks());
        parts.policy = Arc::new(policy.clone());
        let meta = parts.store.clone();
        let server = Arc::new(Server::start(parts).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let webhooks = tokio::spawn(policy.webhooks().clone().run(meta.clone(), cancel.clone()));
        let router = dooz_server::control::router(ApiParts {
            meta,
            control,
            data_plane: server.clone(),
            policy,
            enrol: Some(EnrolTarget {
                address: server.local_addr().to_string(),
                fingerprint: server.fingerprint().to_owned(),
            }),
            rate_limit: limit,
            billing_lateness: std::time::Duration::ZERO,
        });
        let http = tokio::spawn(dooz_server::control::serve(
            listener,
            router,
            cancel.clone(),
        ));
        Self {
            server: Some(server),
            base: format!("http://{addr}"),
            admin: admin.expose().to_owned(),
            client: reqwest::Client::new(),
            dir,
            cancel,
            http: Some(http),
            webhooks: Some(webhooks),
        }
    }

    pub(crate) fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Sends a request; `body` as JSON when given.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_with(method, path, token, body, &[]).await
    }

    pub(crate) async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = within(req.send()).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let admin = self.admin.clone();
        self.call(method, path, Some(&admin), body).await
    }

    /// Makes a tenant and an API key with `scopes` in it: `(tenant id, key)`.
    pub(crate) async fn tenant_with_key(&self, name: &str, scopes: &[&str]) -> (u64, String) {
        let tenant = self
            .admin(
                "POST",
                "/v1/tenants",
                Some(serde_json::json!({ "name": name })),
            )
            .await
            .expect(201);
        let id = tenant["id"].as_u64().unwrap();
        let key = self
            .admin(
                "POST",
                &format!("/v1/tenants/{id}/api_keys"),
                Some(serde_json::json!({ "name": "test", "scopes": scopes })),
            )
            .await
            .expect(201);
        (id, key["secret"].as_str().unwrap().to_owned())
    }

    /// Stops the API and the server (flushing the stores).
    pub(crate) async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(http) = self.http.take() {
            within(http).await.unwrap().unwrap();
        }
        if let Some(webhooks) = self.webhooks.take() {
            within(webhooks).await.unwrap();
        }
        if let Some(server) = self.server.take() {
            let server = Arc::try_unwrap(server).expect("the API let go of the server");
            within(server.shutdown()).await;
        }
    }
}
