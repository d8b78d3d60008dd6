//! An s3s-fs server in this process, for the S3 backend's tests and its throughput example.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use anyhow::{Result, anyhow};
use dooz_storage::{S3Config, S3Credentials};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "dooz-test-access";
pub const SECRET_KEY: &str = "dooz-test-secret-key";
pub const BUCKET: &str = "dooz-blobs";

/// An s3s-fs server on 127.0.0.1 with one bucket, [`BUCKET`], and one key pair; stops when
/// dropped.
pub struct S3Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    _root: tempfile::TempDir,
}

impl S3Server {
    pub async fn start() -> Result<Self> {
        let root = tempfile::tempdir()?;
        // s3s-fs keeps a bucket as a directory under its root.
        std::fs::create_dir(root.path().join(BUCKET))?;
        let fs = s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow!("s3s-fs: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
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

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

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
