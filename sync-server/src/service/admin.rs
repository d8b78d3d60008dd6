//! Administration: the default tenant and account, minting enrolment codes, and the admin socket
//! through which `dooz-server admin ...` reaches a running server.
//!
//! The metadata store is one process's (sled locks its files), so while the server runs, admin
//! commands ask it over a Unix socket in the data dir ([`ADMIN_SOCKET_FILE`], mode 0600): one
//! JSON [`AdminRequest`] line in, one JSON [`AdminResponse`] line out. When no server runs, the
//! command opens the store itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::service::enrolment::EnrolmentCode;
use crate::service::{Bootstrap, unix_now};
use crate::store::{AccountId, MetaStore, StoreError};
use crate::tls::{TlsError, parse_fingerprint};

/// Makes the tenant and account named here if they do not exist, and returns them.
pub async fn ensure_account(
    store: &dyn MetaStore,
    tenant_name: &str,
    account_name: &str,
) -> Result<Bootstrap, StoreError> {
    let mut first_start = false;
    let tenant = match store.tenant_by_name(tenant_name).await? {
        Some(tenant) => tenant,
        None => {
            // Another instance sharing the store may create it at the same moment.
            let id = match store.create_tenant(tenant_name).await {
                Ok(id) => {
                    first_start = true;
                    Some(id)
                }
                Err(StoreError::AlreadyExists { .. }) => None,
                Err(e) => return Err(e),
            };
            let found = match id {
                Some(id) => store.tenant(id).await?,
                None => store.tenant_by_name(tenant_name).await?,
            };
            found.ok_or_else(|| StoreError::NotFound {
                what: format!("tenant {tenant_name} right after creating it"),
            })?
        }
    };
    let account = match store.account_by_name(tenant.id, account_name).await? {
        Some(account) => account,
        None => {
            let id = match store.create_account(tenant.id, account_name).await {
                Ok(id) => {
                    first_start = true;
                    Some(id)
                }
                Err(StoreError::AlreadyExists { .. }) => None,
                Err(e) => return Err(e),
            };
            let found = match id {
                Some(id) => store.account(id).await?,
                None => store.account_by_name(tenant.id, account_name).await?,
            };
            found.ok_or_else(|| StoreError::NotFound {
                what: format!("account {account_name} right after creating it"),
            })?
        }
    };
    Ok(Bootstrap {
        tenant,
        account,
        first_start,
    })
}

/// Mints an enrolment token for `account` and packs it into an enrolment code with the server's
/// address and certificate fingerprint.
pub async fn mint_enrolment_code(
    store: &dyn MetaStore,
    account: AccountId,
    address: &str,
    fingerprint: &str,
    reusable: bool,
    valid_for: Duration,
) -> Result<EnrolmentCode, AdminError> {
    let fingerprint = parse_fingerprint(fingerprint)?;
    let expires_at = unix_now().saturating_add(valid_for.as_secs());
    let token = store
        .create_enrolment_token(account, expires_at, reusable)
        .await?;
    let code = EnrolmentCode {
        address: address.to_owned(),
        fingerprint,
        token: token.expose().to_owned(),
    };
    // Refuse a code that would not encode (an address over 255 bytes) now, not at print time.
    code.encode().map_err(|e| AdminError::Code(e.to_string()))?;
    Ok(code)
}

/// An admin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The fingerprint is bad.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The enrolment code could not be made.
    #[error("could not make the enrolment code: {0}")]
    Code(String),
}

/// A request on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AdminRequest {
    /// Mint an enrolment code for the default account.
    EnrolCode {
        /// Whether the code enrols any number of devices until it expires.
        reusable: bool,
        /// How long the code is valid, in seconds.
        expires_secs: u64,
    },
    /// A usage report (`dooz-server usage`), as [`crate::metering::render`] writes it.
    Usage(crate::metering::RenderRequest),
}

/// The answer on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AdminResponse {
    /// An enrolment code (a secret).
    EnrolCode {
        /// The code, `dooz1-...`.
        code: String,
    },
    /// A usage report, in the format asked for.
    Usage {
        /// The report.
        text: String,
    },
    /// The request failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// File name of the admin socket in the data dir.
#[cfg(unix)]
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";

#[cfg(unix)]
pub use unix::{AdminSocket, admin_call};

#[cfg(unix)]
mod unix {
    use std::path::Path;
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use tokio_util::sync::CancellationToken;

    use super::{AdminRequest, AdminResponse, mint_enrolment_code};
    use crate::store::{AccountId, MetaStore};

    /// Longest request line read.
    const MAX_LINE: u64 = 64 * 1024;
    /// Longest answer line read (usage reports can be long).
    const MAX_ANSWER: u64 = 256 * 1024 * 1024;

    /// The admin socket, bound and not yet served. Binding before serving lets the server print
    /// its banner only once `dooz-server admin …` can reach it.
    #[derive(Debug)]
    pub struct AdminSocket {
        listener: UnixListener,
        path: std::path::PathBuf,
    }

    impl AdminSocket {
        /// Binds the admin socket at `path` (mode 0600).
        ///
        /// A stale socket file (left by a server that crashed) is replaced; one that answers
        /// belongs to another running server and is an `AddrInUse` error.
        pub async fn bind(path: &Path) -> std::io::Result<Self> {
            if path.exists() {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!(
                            "another dooz-server is using the data dir (its admin socket {} answers)",
                            path.display()
                        ),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(Self {
                listener,
                path: path.to_owned(),
            })
        }

        /// Serves requests until `cancel` fires, then removes the socket file. Codes are minted
        /// for `account` with `address` (`None`: the server does not know the address devices
        /// should dial, and says so) and `fingerprint`.
        pub async fn serve(
            self,
            store: Arc<dyn MetaStore>,
            account: AccountId,
            address: Option<String>,
            fingerprint: String,
            cancel: CancellationToken,
        ) {
            let Self { listener, path } = self;
            serve_listener(listener, store, account, address, fingerprint, cancel).await;
            let _ = std::fs::remove_file(&path);
        }
    }

    async fn serve_listener(
        listener: UnixListener,
        store: Arc<dyn MetaStore>,
        account: AccountId,
        address: Option<String>,
        fingerprint: String,
        cancel: CancellationToken,
    ) {
        let context = Arc::new((store, account, address, fingerprint));
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        continue;
                    }
                },
            };
            let context = Arc::clone(&context);
            tokio::spawn(async move {
                let (store, account, address, fingerprint) = &*context;
                if let Err(e) = serve_one(
                    stream,
                    store.as_ref(),
                    *account,
                    address.as_deref(),
                    fingerprint,
                )
                .await
                {
                    tracing::warn!(error = %e, "admin request failed");
                }
            });
        }
    }

    async fn serve_one(
        stream: UnixStream,
        store: &dyn MetaStore,
        account: AccountId,
        address: Option<&str>,
        fingerprint: &str,
    ) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE))
            .read_line(&mut line)
            .await?;
        let response = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(AdminRequest::Usage(request)) => {
                match crate::metering::render(store, &request, crate::service::unix_now()).await {
                    Ok(text) => AdminResponse::Usage { text },
                    Err(e) => AdminResponse::Error {
                        message: e.to_string(),
                    },
                }
            }
            Ok(AdminRequest::EnrolCode { .. }) if address.is_none() => AdminResponse::Error {
                message: "the server listens on a wildcard address and does not know which \
                          address devices should dial: restart it with --advertise host:port"
                    .to_owned(),
            },
            Ok(AdminRequest::EnrolCode {
                reusable,
                expires_secs,
            }) => match mint_enrolment_code(
                store,
                account,
                address.unwrap_or_default(),
                fingerprint,
                reusable,
                std::time::Duration::from_secs(expires_secs),
            )
            .await
            {
                Ok(code) => {
                    tracing::info!(reusable, expires_secs, "enrolment code minted");
                    AdminResponse::EnrolCode {
                        code: code.to_string(),
                    }
                }
                Err(e) => AdminResponse::Error {
                    message: e.to_string(),
                },
            },
            Err(e) => AdminResponse::Error {
                message: format!("bad admin request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        write.shutdown().await
    }

    /// Sends one request to the admin socket at `path`. `Ok(None)` when no server answers there
    /// (no socket, or a stale one).
    pub async fn admin_call(
        path: &Path,
        request: &AdminRequest,
    ) -> std::io::Result<Option<AdminResponse>> {
        let stream = match UnixStream::connect(path).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let (read, mut write) = stream.into_split();
        let mut out = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        write.shutdown().await?;
        let mut line = String::new();
        BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_ANSWER))
            .read_line(&mut line)
            .await?;
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}
