//! Checking that a store can be written, read and deleted from.

use bytes::Bytes;

use crate::{BlobKey, BlobStore, Op, StorageError};

/// The folder probe blobs are written under.
pub const PROBE_PREFIX: &str = "dooz-validate";

/// Checks that `store` works: lists `dooz-validate/`, writes a probe blob there, reads it back,
/// and deletes it. Run it before trusting a store with data, e.g. when a tenant saves its
/// bucket. (Listing first catches a missing bucket on servers that would create it on a put.)
///
/// # Errors
///
/// [`StorageError::Validation`] naming the step that failed (`list`, `write`, `read`,
/// `read back` when the bytes differ, or `delete`) with the store's error inside: wrong credentials show as
/// [`StorageError::Permission`], a missing bucket as [`StorageError::NoSuchBucket`], an
/// unreachable server as a retryable error.
pub async fn validate(store: &dyn BlobStore) -> Result<(), StorageError> {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).map_err(|e| StorageError::InvalidConfig {
        reason: format!("cannot draw a random probe name: {e}"),
    })?;
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let probe = BlobKey::new(&format!("{PROBE_PREFIX}/probe-{hex}"))?;
    let data = Bytes::from(format!("dooz storage probe {hex}\n"));
    let failed = |step: &'static str| {
        let probe = probe.to_string();
        move |source: StorageError| StorageError::Validation {
            step,
            probe,
            source: Box::new(source),
        }
    };

    let folder = BlobKey::new(PROBE_PREFIX)?;
    store.list(Some(&folder)).await.map_err(failed("list"))?;
    store
        .put(&probe, data.clone())
        .await
        .map_err(failed("write"))?;
    let read = store.get(&probe).await.map_err(failed("read"))?;
    if read != data {
        let source = StorageError::Backend {
            op: Op::Get,
            key: probe.to_string(),
            source: format!(
                "read back {} bytes that differ from the {} written",
                read.len(),
                data.len()
            )
            .into(),
        };
        return Err(failed("read back")(source));
    }
    store.delete(&probe).await.map_err(failed("delete"))?;
    Ok(())
}
