//! Tenant-provided storage: a tenant keeps its blobs in an S3-compatible bucket of its own.
//!
//! - `PUT /v1/tenants/{t}/storage` takes the bucket's endpoint, bucket, region, path style,
//!   optional key prefix and credentials. The server first proves the bucket works (a test
//!   write, read and delete: [`dooz_storage::validate`]) and refuses it with a clear problem if
//!   not; then it stores the settings, with the credentials sealed (XChaCha20-Poly1305 under a
//!   server key kept outside the control store, see [`CredentialKey`]), and starts moving the
//!   tenant's existing blobs there in the background. New chunks go to the new bucket at once;
//!   reads keep working throughout (the data plane looks in both backends while blobs move).
//! - `GET` shows the settings (never the secret) and the move's progress.
//! - `DELETE` moves the tenant back to the server's default backend the same way.
//!
//! The record survives restarts; a move that was running (or failed) resumes when the server
//! starts ([`restore`]).

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use dooz_storage::{BlobKey, BlobStore, Retrying, S3Config, S3Credentials};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::control::auth::{Caller, JsonBody, PathParams};
use crate::control::model::Scope;
use crate::control::openapi::Problems;
use crate::control::problem::Problem;
use crate::control::routes::{ApiResult, AppStateRef};
use crate::control::store::ControlStore;
use crate::control::{AppState, DataPlane};
use crate::service::unix_now;
use crate::store::{StoreError, TenantId};

/// Env var with the 32-byte credential key in hex (64 digits); when unset the key lives in
/// `<data dir>/storage.key` (made on first use, mode 0600).
pub const CREDENTIAL_KEY_ENV: &str = "DOOZ_STORAGE_KEY";

/// How long the test write, read and delete of a new bucket may take.
const VALIDATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The key that seals tenants' storage credentials at rest.
#[derive(Clone)]
pub struct CredentialKey(Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

fn random32() -> Result<[u8; 32], StoreError> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| StoreError::Unavailable {
        reason: format!("the operating system's random number generator failed: {e}"),
    })?;
    Ok(key)
}

fn parse_hex_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

impl CredentialKey {
    /// A random key that lives in memory only (tests, temporary stores).
    pub fn ephemeral() -> Result<Self, StoreError> {
        Ok(Self(Arc::new(Zeroizing::new(random32()?))))
    }

    /// The key from [`CREDENTIAL_KEY_ENV`], else from `data_dir/storage.key`, made there on
    /// first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::InvalidInput {
            what: "storage credential key",
            reason,
        };
        if let Ok(text) = std::env::var(CREDENTIAL_KEY_ENV) {
            let key = parse_hex_key(&text)
                .ok_or_else(|| bad(format!("{CREDENTIAL_KEY_ENV} must be 64 hex digits")))?;
            return Ok(Self(Arc::new(Zeroizing::new(key))));
        }
        let path = data_dir.join("storage.key");
        let io = |e: std::io::Error| StoreError::Unavailable {
            reason: format!("{}: {e}", path.display()),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_hex_key(&text)
                .map(|k| Self(Arc::new(Zeroizing::new(k))))
                .ok_or_else(|| bad(format!("{} is not 64 hex digits", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random32()?;
                let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
                write_private(&path, text.as_bytes()).map_err(io)?;
                Ok(Self(Arc::new(Zeroizing::new(key))))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&**self.0).into())
    }

    fn seal(&self, tenant: u64, plaintext: &[u8]) -> Result<String, StoreError> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).map_err(|e| StoreError::Unavailable {
            reason: format!("the operating system's random number generator failed: {e}"),
        })?;
        let aad = aad(tenant);
        let sealed = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Unavailable {
                reason: "sealing the storage credentials failed".into(),
            })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out.iter().map(|b| format!("{b:02x}")).collect())
    }

    fn open(&self, tenant: u64, sealed_hex: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let damaged = |detail: &str| StoreError::Corrupt {
            tree: "cp1/tenant_storage",
            detail: format!("tenant {tenant}: {detail}"),
        };
        let bytes: Vec<u8> = (0..sealed_hex.len() / 2)
            .map(|i| {
                sealed_hex
                    .get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(|| damaged("sealed credentials are not hex"))?;
        if bytes.len() < 24 + 16 {
            return Err(damaged("sealed credentials are cut short"));
        }
        let (nonce, sealed) = bytes.split_at(24);
        let aad = aad(tenant);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                damaged(
                    "sealed credentials do not open: the storage key changed (DOOZ_STORAGE_KEY \
                     or storage.key) or the record was altered",
                )
            })
    }
}

fn aad(tenant: u64) -> Vec<u8> {
    let mut aad = b"dooz-sync tenant storage credentials v1".to_vec();
    aad.extend_from_slice(&tenant.to_be_bytes());
    aad
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A tenant's S3-compatible bucket as stored: everything but the credentials in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBucket {
    endpoint: String,
    bucket: String,
    region: String,
    path_style: bool,
    prefix: Option<String>,
    /// The last 4 characters of the access key id, to tell keys apart.
    access_key_hint: String,
    /// `nonce ‖ XChaCha20-Poly1305(access key id \0 secret)`, hex.
    sealed_credentials: String,
}

/// Where a tenant's blobs move from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovingFrom {
    /// The tenant's previous bucket; `None`: the server's default backend.
    pub bucket: Option<StoredBucket>,
}

/// Where a tenant's blobs are, as stored in the control store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStorageRecord {
    /// The tenant's backend; `None`: the server's default.
    pub current: Option<StoredBucket>,
    /// While blobs move: where from.
    pub moving_from: Option<MovingFrom>,
    /// The last move's error, if it failed.
    pub error: Option<String>,
    /// When this record last changed (unix seconds).
    pub updated_at: u64,
}

/// Body of `PUT .../storage`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketIn {
    /// `http(s)://host[:port]` of the S3-compatible service; omit for AWS.
    #[serde(default)]
    endpoint: Option<String>,
    bucket: String,
    /// Default `us-east-1`.
    #[serde(default)]
    region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and most non-AWS services want.
    #[serde(default)]
    path_style: bool,
    /// A key prefix inside the bucket, e.g. `dooz/`.
    #[serde(default)]
    prefix: Option<String>,
    access_key_id: String,
    secret_access_key: String,
}

/// `GET .../storage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StorageOut {
    tenant: u64,
    /// `default` (the server's backend) or `s3` (the tenant's bucket).
    kind: &'static str,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    prefix: Option<String>,
    /// The last 4 characters of the access key id.
    access_key_hint: Option<String>,
    /// `ready`, `moving` (blobs are being moved in; reads work throughout) or `failed`
    /// (the move stopped; the server retries it at its next start, or send the settings again).
    state: &'static str,
    migration: Option<MigrationOut>,
    error: Option<String>,
    updated_at: u64,
}

/// The progress of a move, since the server started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MigrationOut {
    /// Blobs to move (final once `listed`).
    total: u64,
    /// Blobs moved so far.
    moved: u64,
    /// Bytes moved so far.
    bytes: u64,
    /// Whether the old backend has been listed (`total` is final).
    listed: bool,
}

impl StoredBucket {
    fn config(&self, key: &CredentialKey, tenant: u64) -> Result<S3Config, StoreError> {
        let opened = key.open(tenant, &self.sealed_credentials)?;
        let text = std::str::from_utf8(&opened).map_err(|_| StoreError::Corrupt {
            tree: "cp1/tenant_storage",
            detail: format!("tenant {tenant}: credentials are not UTF-8"),
        })?;
        let (id, secret) = text.split_once('\0').ok_or_else(|| StoreError::Corrupt {
            tree: "cp1/tenant_storage",
            detail: format!("tenant {tenant}: credentials have no separator"),
        })?;
        bucket_config(
            self.endpoint.as_str(),
            &self.bucket,
            &self.region,
            self.path_style,
            self.prefix.as_deref(),
            S3Credentials::new(id, secret),
        )
        .map_err(|e| StoreError::Corrupt {
            tree: "cp1/tenant_storage",
            detail: format!("tenant {tenant}: {e}"),
        })
    }

    fn open_store(&self, key: &CredentialKey, tenant: u64) -> Result<Arc<dyn BlobStore>, String> {
        let config = self.config(key, tenant).map_err(|e| e.to_string())?;
        let store = config.open().map_err(|e| e.to_string())?;
        Ok(Arc::new(Retrying::new(store)))
    }
}

fn bucket_config(
    endpoint: &str,
    bucket: &str,
    region: &str,
    path_style: bool,
    prefix: Option<&str>,
    credentials: S3Credentials,
) -> Result<S3Config, String> {
    let mut config = S3Config::new(bucket)
        .with_region(region)
        .with_path_style(path_style)
        .with_credentials(credentials);
    if !endpoint.is_empty() {
        config = config
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(prefix) = prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        let prefix = BlobKey::new(prefix).map_err(|e| format!("prefix: {e}"))?;
        config = config.with_prefix(prefix);
    }
    config.check().map_err(|e| e.to_string())?;
    Ok(config)
}

impl AppState {
    fn storage_out(&self, tenant: u64, record: Option<TenantStorageRecord>) -> StorageOut {
        let record = record.unwrap_or(TenantStorageRecord {
            current: None,
            moving_from: None,
            error: None,
            updated_at: 0,
        });
        let state = match (&record.moving_from, &record.error) {
            (Some(_), Some(_)) => "failed",
            (Some(_), None) => "moving",
            (None, _) => "ready",
        };
        let migration = self.data_plane.migration(TenantId::new(tenant)).map(
            |(listed, total, moved, bytes)| MigrationOut {
                total,
                moved,
                bytes,
                listed,
            },
        );
        let b = record.current.as_ref();
        StorageOut {
            tenant,
            kind: if b.is_some() { "s3" } else { "default" },
            endpoint: b.map(|b| b.endpoint.clone()).filter(|e| !e.is_empty()),
            bucket: b.map(|b| b.bucket.clone()),
            region: b.map(|b| b.region.clone()),
            path_style: b.map(|b| b.path_style),
            prefix: b.and_then(|b| b.prefix.clone()),
            access_key_hint: b.map(|b| b.access_key_hint.clone()),
            state,
            migration,
            error: record.error,
            updated_at: record.updated_at,
        }
    }
}

/// Starts moving `tenant`'s blobs as `record` says (it is moving), and records the outcome.
fn start_move(
    control: &ControlStore,
    data_plane: &Arc<dyn DataPlane>,
    tenant: u64,
    record: &TenantStorageRecord,
) -> Result<(), String> {
    let key = control.credential_key();
    let open = |b: &Option<StoredBucket>| -> Result<Option<Arc<dyn BlobStore>>, String> {
        b.as_ref().map(|b| b.open_store(key, tenant)).transpose()
    };
    let new = open(&record.current)?;
    let old = match &record.moving_from {
        Some(from) => open(&from.bucket)?,
        None => None,
    };
    let control = control.clone();
    data_plane.migrate_tenant(
        TenantId::new(tenant),
        new,
        old,
        Box::new(move |result| {
            tokio::spawn(async move {
                let Ok(Some(mut record)) = control.tenant_storage(tenant) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        record.moving_from = None;
                        record.error = None;
                    }
                    Err(e) => record.error = Some(e),
                }
                record.updated_at = unix_now();
                if let Err(e) = control.put_tenant_storage(tenant, &record).await {
                    tracing::error!(tenant, error = %e, "could not record the end of a blob move");
                }
            });
        }),
    );
    Ok(())
}

/// Puts every tenant with a bucket of its own on it, and resumes moves that were running or
/// had failed (at server start).
pub async fn restore(
    control: &ControlStore,
    data_plane: &Arc<dyn DataPlane>,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for (tenant, record) in control.tenant_storages()? {
        if record.moving_from.is_some() {
            if let Err(e) = start_move(control, data_plane, tenant, &record) {
                tracing::error!(tenant, error = %e, "could not resume moving the tenant's blobs");
            }
        } else if let Some(bucket) = &record.current {
            match bucket.open_store(control.credential_key(), tenant) {
                Ok(store) => data_plane.set_tenant_store(TenantId::new(tenant), Some(store)),
                Err(e) => {
                    tracing::error!(tenant, error = %e, "could not open the tenant's bucket")
                }
            }
        }
        n += 1;
    }
    Ok(n)
}

fn storage_unavailable(what: String) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "storage-unusable",
        "Storage not usable",
        what,
    )
}

fn refuse_while_moving(record: &Option<TenantStorageRecord>) -> ApiResult<()> {
    match record {
        Some(r) if r.moving_from.is_some() => Err(Problem::new(
            StatusCode::CONFLICT,
            "storage-moving",
            "Blobs are moving",
            match &r.error {
                None => "the tenant's blobs are still moving to their new backend; change the \
                         storage again once GET .../storage says `ready`"
                    .to_owned(),
                // A failed move is resumed, never replaced: replacing it would strand the
                // blobs still in its old backend.
                Some(e) => format!(
                    "the last move of the tenant's blobs failed ({e}); it resumes when the \
                     server restarts, and the storage can change once it is `ready`"
                ),
            },
        )),
        _ => Ok(()),
    }
}

/// Whether two buckets are the same place (the same objects), whatever the credentials.
fn same_place(a: &StoredBucket, b: &StoredBucket) -> bool {
    let norm = |p: &Option<String>| {
        p.as_deref()
            .map(|p| p.trim_matches('/').to_owned())
            .unwrap_or_default()
    };
    a.endpoint.trim_end_matches('/') == b.endpoint.trim_end_matches('/')
        && a.bucket == b.bucket
        && norm(&a.prefix) == norm(&b.prefix)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/storage",
    tag = "storage",
    operation_id = "get_storage",
    params(("tenant" = u64, Path, description = "Tenant id")),
    responses((status = 200, body = StorageOut), Problems)
)]
/// Where the tenant's blobs are, and how a move is going.
pub(crate) async fn get_storage(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
) -> ApiResult<Json<StorageOut>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let record = state.control.tenant_storage(tenant)?;
    Ok(Json(state.storage_out(tenant, record)))
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/storage",
    tag = "storage",
    operation_id = "put_storage",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = BucketIn,
    responses((status = 200, body = StorageOut), Problems)
)]
/// Puts the tenant's blobs in its own S3-compatible bucket, after a test write, read and
/// delete there; existing blobs move in the background.
pub(crate) async fn put_storage(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(body): JsonBody<BucketIn>,
) -> ApiResult<Json<StorageOut>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let region = body
        .region
        .clone()
        .unwrap_or_else(|| "us-east-1".to_owned());
    let endpoint = body.endpoint.clone().unwrap_or_default();
    if !(endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(Problem::invalid(
            "endpoint must start with http:// or https://",
        ));
    }
    if body.access_key_id.is_empty() || body.secret_access_key.is_empty() {
        return Err(Problem::invalid(
            "access_key_id and secret_access_key must not be empty",
        ));
    }
    let config = bucket_config(
        &endpoint,
        &body.bucket,
        &region,
        body.path_style,
        body.prefix.as_deref(),
        S3Credentials::new(&body.access_key_id, &body.secret_access_key),
    )
    .map_err(|e| Problem::invalid(format!("the bucket settings are not valid: {e}")))?;
    let bucket = config
        .open()
        .map_err(|e| storage_unavailable(format!("the bucket cannot be opened: {e}")))?;
    match tokio::time::timeout(VALIDATE_TIMEOUT, dooz_storage::validate(bucket.as_ref())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(storage_unavailable(format!(
                "the test write, read and delete in the bucket failed, so nothing was changed: \
                 {e}"
            )));
        }
        Err(_) => {
            return Err(storage_unavailable(format!(
                "the bucket did not answer the test write, read and delete within {} s, so \
                 nothing was changed",
                VALIDATE_TIMEOUT.as_secs()
            )));
        }
    }
    let _lock = state.control.lock().await;
    let previous = state.control.tenant_storage(tenant)?;
    refuse_while_moving(&previous)?;
    let mut secret = Zeroizing::new(body.access_key_id.clone().into_bytes());
    secret.push(0);
    secret.extend_from_slice(body.secret_access_key.as_bytes());
    let hint: String = {
        let chars: Vec<char> = body.access_key_id.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    };
    let stored = StoredBucket {
        endpoint,
        bucket: body.bucket,
        region,
        path_style: body.path_style,
        prefix: body.prefix,
        access_key_hint: hint,
        sealed_credentials: state.control.credential_key().seal(tenant, &secret)?,
    };
    let previous = previous.and_then(|p| p.current);
    if previous.as_ref().is_some_and(|p| same_place(p, &stored)) {
        // The same bucket (new credentials, say): nothing moves, the route takes the new
        // settings. Moving a bucket onto itself would delete what it copies.
        let store = stored
            .open_store(state.control.credential_key(), tenant)
            .map_err(storage_unavailable)?;
        let record = TenantStorageRecord {
            moving_from: None,
            current: Some(stored),
            error: None,
            updated_at: unix_now(),
        };
        state.control.put_tenant_storage(tenant, &record).await?;
        state
            .data_plane
            .set_tenant_store(TenantId::new(tenant), Some(store));
        state.audit(&caller, tenant, "storage.set", format!("tenant/{tenant}"));
        return Ok(Json(state.storage_out(tenant, Some(record))));
    }
    let record = TenantStorageRecord {
        moving_from: Some(MovingFrom { bucket: previous }),
        current: Some(stored),
        error: None,
        updated_at: unix_now(),
    };
    state.control.put_tenant_storage(tenant, &record).await?;
    start_move(&state.control, &state.data_plane, tenant, &record).map_err(storage_unavailable)?;
    state.audit(&caller, tenant, "storage.set", format!("tenant/{tenant}"));
    Ok(Json(state.storage_out(tenant, Some(record))))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/storage",
    tag = "storage",
    operation_id = "delete_storage",
    params(("tenant" = u64, Path, description = "Tenant id")),
    responses((status = 200, body = StorageOut), Problems)
)]
/// Moves the tenant back to the server's default backend (its blobs move in the background).
pub(crate) async fn delete_storage(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
) -> ApiResult<Json<StorageOut>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    let previous = state.control.tenant_storage(tenant)?;
    refuse_while_moving(&previous)?;
    let Some(previous) = previous.filter(|p| p.current.is_some() || p.moving_from.is_some()) else {
        return Ok(Json(state.storage_out(tenant, None)));
    };
    let record = TenantStorageRecord {
        moving_from: Some(MovingFrom {
            bucket: previous.current,
        }),
        current: None,
        error: None,
        updated_at: unix_now(),
    };
    state.control.put_tenant_storage(tenant, &record).await?;
    start_move(&state.control, &state.data_plane, tenant, &record).map_err(storage_unavailable)?;
    state.audit(&caller, tenant, "storage.reset", format!("tenant/{tenant}"));
    Ok(Json(state.storage_out(tenant, Some(record))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use async_trait::async_trait;
    use dooz_protocol::DeviceId;

    use super::*;
    use crate::store::DeviceRecord;

    #[derive(Default)]
    struct Plane {
        set: Mutex<Vec<(u64, bool)>>,
        moves: Mutex<Vec<(u64, bool, bool)>>,
    }

    #[async_trait]
    impl DataPlane for Plane {
        async fn revoke_device(&self, device: DeviceId) -> Result<DeviceRecord, StoreError> {
            Err(StoreError::not_found(format!("device {device}")))
        }
        fn policies_changed(&self) {}
        fn set_tenant_store(&self, tenant: TenantId, store: Option<Arc<dyn BlobStore>>) {
            self.set
                .lock()
                .unwrap()
                .push((tenant.get(), store.is_some()));
        }
        fn migrate_tenant(
            &self,
            tenant: TenantId,
            new: Option<Arc<dyn BlobStore>>,
            old: Option<Arc<dyn BlobStore>>,
            on_done: Box<dyn FnOnce(Result<(), String>) + Send>,
        ) {
            self.moves
                .lock()
                .unwrap()
                .push((tenant.get(), new.is_some(), old.is_some()));
            drop(on_done);
        }
    }

    fn bucket(key: &CredentialKey, tenant: u64) -> StoredBucket {
        StoredBucket {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "tenant-bucket".into(),
            region: "us-east-1".into(),
            path_style: true,
            prefix: Some("dooz".into()),
            access_key_hint: "y-id".into(),
            sealed_credentials: key.seal(tenant, b"key-id\0the-secret").unwrap(),
        }
    }

    #[test]
    fn credentials_open_only_with_their_key_and_tenant() {
        let key = CredentialKey::ephemeral().unwrap();
        let b = bucket(&key, 5);
        assert!(!b.sealed_credentials.contains("the-secret"));
        assert_eq!(
            &*key.open(5, &b.sealed_credentials).unwrap(),
            b"key-id\0the-secret"
        );
        assert!(key.open(6, &b.sealed_credentials).is_err());
        let other = CredentialKey::ephemeral().unwrap();
        assert!(other.open(5, &b.sealed_credentials).is_err());
        assert!(key.open(5, "zz").is_err());
        let config = b.config(&key, 5).unwrap();
        assert_eq!(config.bucket, "tenant-bucket");
    }

    #[test]
    fn the_key_file_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = CredentialKey::load_or_create(dir.path()).unwrap();
        let b = CredentialKey::load_or_create(dir.path()).unwrap();
        let sealed = a.seal(1, b"x").unwrap();
        assert_eq!(&*b.open(1, &sealed).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("storage.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("storage.key"), "short").unwrap();
        assert!(CredentialKey::load_or_create(dir.path()).is_err());
    }

    #[tokio::test]
    async fn restore_routes_tenants_and_resumes_moves() {
        let control = ControlStore::temporary().unwrap();
        let key = control.credential_key().clone();
        let ready = TenantStorageRecord {
            current: Some(bucket(&key, 5)),
            moving_from: None,
            error: None,
            updated_at: 1,
        };
        let moving_back = TenantStorageRecord {
            current: None,
            moving_from: Some(MovingFrom {
                bucket: Some(bucket(&key, 6)),
            }),
            error: Some("the bucket went away".into()),
            updated_at: 2,
        };
        let moving_in = TenantStorageRecord {
            current: Some(bucket(&key, 7)),
            moving_from: Some(MovingFrom { bucket: None }),
            error: None,
            updated_at: 3,
        };
        control.put_tenant_storage(5, &ready).await.unwrap();
        control.put_tenant_storage(6, &moving_back).await.unwrap();
        control.put_tenant_storage(7, &moving_in).await.unwrap();
        assert_eq!(control.tenant_storage(7).unwrap(), Some(moving_in));
        let plane = Arc::new(Plane::default());
        let data_plane: Arc<dyn DataPlane> = plane.clone();
        assert_eq!(restore(&control, &data_plane).await.unwrap(), 3);
        assert_eq!(*plane.set.lock().unwrap(), vec![(5, true)]);
        assert_eq!(
            *plane.moves.lock().unwrap(),
            vec![(6, false, true), (7, true, false)]
        );
    }
}
