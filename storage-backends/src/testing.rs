//! Test support: an S3-compatible server ([`S3Server`], `s3s-fs`) in the test's own process,
//! on 127.0.0.1.
//!
//! Enabled by the cargo feature `s3-test-server`, which tests and examples of this and other
//! crates turn on from their dev-dependencies; normal builds never include it (its
//! dependencies are optional). The server checks SigV4 signatures and supports multipart
//! uploads, so the S3 backend talks to it exactly as to a real bucket.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use dooz_storage::testing::S3Server;
//!
//! let server = S3Server::start().await?;
//! let bucket = server.config().open_bucket().map_err(std::io::Error::other)?;
//! # drop(bucket);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

use crate::{S3Config, S3Credentials};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "dooz-test-access";
/// The secret key of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "dooz-test-secret-key";
/// The one bucket the server has.
pub const BUCKET: &str = "dooz-blobs";

/// An s3s-fs server on 127.0.0.1 (a port of its own) with one bucket, [`BUCKET`], and one key
/// pair, storing objects in a temporary directory; stops, and removes its objects, when
/// dropped.
///
/// It runs on the Tokio runtime that started it, so it must outlive no runtime and be started
/// from within one.
#[derive(Debug)]
pub struct S3Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    _root: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server with an empty [`BUCKET`].
    ///
    /// # Errors
    ///
    /// Creating the temporary directory or binding the listener failed.
    pub async fn start() -> io::Result<Self> {
        let root = tempfile::tempdir()?;
        // s3s-fs keeps a bucket as a directory under its root.
        std::fs::create_dir(root.path().join(BUCKET))?;
        let fs = s3s_fs::FileSystem::new(root.path())
            .map_err(|e| io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    // A connection's failure concerns only that connection.
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            task,
            _root: root,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An [`S3Config`] for [`BUCKET`] on this server, with its credentials.
    pub fn config(&self) -> S3Config {
        S3Config::new(BUCKET)
            .with_endpoint(self.endpoint())
            .with_credentials(S3Credentials::new(ACCESS_KEY, SECRET_KEY))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
