//! The conformance suite every [`BlobStore`] runs (cargo feature `conformance`).
//!
//! A backend's tests call [`run_all`] on a fresh store; a backend in another crate enables the
//! feature from its dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! dooz-storage = { workspace = true, features = ["conformance"] }
//! ```
//!
//! The suite works under a fresh random prefix (`conformance-<hex>/`), so it can run against a
//! shared bucket, and deletes what it wrote. It only needs the store to follow the rules in
//! [`BlobStore`]'s documentation. It reports the calls it made and their outcomes in the shape
//! of a [`MeterSnapshot`], so a test can check a [`Metered`](crate::Metered) store's counts
//! exactly.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::join_all;

use crate::{BlobKey, BlobMeta, BlobStore, MeterSnapshot, Op, StorageError};

/// A conformance check that failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("blob store conformance check `{check}` failed: {detail}")]
pub struct ConformanceError {
    /// The check's name.
    pub check: &'static str,
    /// What was expected and what happened.
    pub detail: String,
}

/// What a successful [`run_all`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// Names of the checks that passed, in order.
    pub passed: Vec<&'static str>,
    /// Every store call the suite made, counted as [`Metered`](crate::Metered) counts them.
    pub calls: MeterSnapshot,
}

/// The size of the large blob the suite stores.
pub const LARGE_BLOB_SIZE: usize = 8 << 20;

/// Runs every check against `store` under a fresh random prefix.
///
/// # Errors
///
/// The first check that fails.
pub async fn run_all(store: &dyn BlobStore) -> Result<ConformanceReport, ConformanceError> {
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| ConformanceError {
        check: "setup",
        detail: format!("cannot draw a random prefix: {e}"),
    })?;
    let base = BlobKey::new(&format!("conformance-{:016x}", u64::from_be_bytes(nonce)))
        .map_err(|e| fail("setup", e))?;
    run_all_under(store, &base).await
}

/// Runs every check against `store`, writing only under `base`, which should hold nothing.
///
/// # Errors
///
/// The first check that fails.
pub async fn run_all_under(
    store: &dyn BlobStore,
    base: &BlobKey,
) -> Result<ConformanceReport, ConformanceError> {
    let suite = Suite {
        store,
        base: base.clone(),
        calls: Mutex::new(MeterSnapshot::default()),
    };
    let mut passed = Vec::new();
    macro_rules! run {
        ($name:literal, $check:ident) => {
            $check(&suite).await?;
            passed.push($name);
        };
    }
    run!("keys", keys);
    run!("missing", missing);
    run!("round_trip", round_trip);
    run!("overwrite", overwrite);
    run!("empty_blob", empty_blob);
    run!("large_blob_and_ranges", large_blob_and_ranges);
    run!("delete", delete);
    run!("list", list);
    run!("concurrent_puts", concurrent_puts);
    run!("atomic_overwrite", atomic_overwrite);
    run!("cleanup", cleanup);
    let calls = *suite.calls.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(ConformanceReport { passed, calls })
}

macro_rules! ensure {
    ($cond:expr, $check:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(ConformanceError { check: $check, detail: format!($($fmt)+) });
        }
    };
}

fn fail(check: &'static str, err: StorageError) -> ConformanceError {
    ConformanceError {
        check,
        detail: format!("unexpected error: {err} ({err:?})"),
    }
}

/// The store under test, with a tally of the calls made through it.
struct Suite<'a> {
    store: &'a dyn BlobStore,
    base: BlobKey,
    calls: Mutex<MeterSnapshot>,
}

impl Suite<'_> {
    fn key(&self, check: &'static str, rel: &str) -> Result<BlobKey, ConformanceError> {
        self.base.join(rel).map_err(|e| fail(check, e))
    }

    fn tally<T>(&self, op: Op, result: &Result<T, StorageError>, bytes_in: u64, bytes_out: u64) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = calls.op_mut(op);
        if result.is_ok() {
            counts.ok += 1;
            calls.bytes_in += bytes_in;
            calls.bytes_out += bytes_out;
        } else {
            counts.failed += 1;
        }
    }

    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let len = data.len() as u64;
        let result = self.store.put(key, data).await;
        self.tally(Op::Put, &result, len, 0);
        result
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        let result = self.store.get(key).await;
        let len = result.as_ref().map_or(0, |b| b.len() as u64);
        self.tally(Op::Get, &result, 0, len);
        result
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let result = self.store.get_range(key, range).await;
        let len = result.as_ref().map_or(0, |b| b.len() as u64);
        self.tally(Op::GetRange, &result, 0, len);
        result
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        let result = self.store.head(key).await;
        self.tally(Op::Head, &result, 0, 0);
        result
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        let result = self.store.delete(key).await;
        self.tally(Op::Delete, &result, 0, 0);
        result
    }

    async fn list(&self, prefix: Option<&BlobKey>) -> Result<Vec<BlobMeta>, StorageError> {
        let result = self.store.list(prefix).await;
        self.tally(Op::List, &result, 0, 0);
        result
    }

    async fn list_stream(&self, prefix: Option<&BlobKey>) -> Result<Vec<BlobMeta>, StorageError> {
        let result = self.store.list_stream(prefix).try_collect().await;
        self.tally(Op::List, &result, 0, 0);
        result
    }

    /// Stores `data` and checks it reads back whole.
    async fn put_and_verify(
        &self,
        check: &'static str,
        key: &BlobKey,
        data: &Bytes,
    ) -> Result<(), ConformanceError> {
        self.put(key, data.clone())
            .await
            .map_err(|e| fail(check, e))?;
        let got = self.get(key).await.map_err(|e| fail(check, e))?;
        ensure!(
            got == *data,
            check,
            "get of `{key}` returned {} bytes that differ from the {} bytes put",
            got.len(),
            data.len()
        );
        let meta = self.head(key).await.map_err(|e| fail(check, e))?;
        ensure!(
            meta.size == data.len() as u64 && meta.key == *key,
            check,
            "head of `{key}` returned {meta:?}, expected size {}",
            data.len()
        );
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (SplitMix64), different for each `seed`.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn expect_not_found<T: std::fmt::Debug>(
    check: &'static str,
    what: &str,
    result: Result<T, StorageError>,
) -> Result<(), ConformanceError> {
    match result {
        Err(e) if e.is_not_found() && !e.is_retryable() => Ok(()),
        other => Err(ConformanceError {
            check,
            detail: format!("{what}: expected NotFound, got {other:?}"),
        }),
    }
}

fn expect_invalid_range(
    check: &'static str,
    key: &BlobKey,
    range: Range<u64>,
    size: u64,
    result: Result<Bytes, StorageError>,
) -> Result<(), ConformanceError> {
    match result {
        Err(StorageError::InvalidRange {
            range: got_range,
            size: got_size,
            ..
        }) if got_range == range && got_size == size => Ok(()),
        other => Err(ConformanceError {
            check,
            detail: format!(
                "get_range({}..{}) of `{key}` ({size} bytes): expected InvalidRange with the \
                 range and size, got {:?}",
                range.start,
                range.end,
                other.map(|b| b.len())
            ),
        }),
    }
}

async fn keys(_suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "keys";
    let too_long = "k".repeat(BlobKey::MAX_LEN + 1);
    for bad in [
        "",
        "/abs",
        "trailing/",
        "a//b",
        ".",
        "..",
        "a/../b",
        "a/./b",
        "sp ace",
        "back\\slash",
        "hash#1",
        "pct%2F",
        "q?",
        "é",
        &too_long,
    ] {
        match BlobKey::new(bad) {
            Err(StorageError::InvalidKey { .. }) => {}
            other => {
                return Err(ConformanceError {
                    check: CHECK,
                    detail: format!("key {bad:?} should be rejected, got {other:?}"),
                });
            }
        }
    }
    let max = "k".repeat(BlobKey::MAX_LEN);
    for good in ["a", "a/b.c_d-E9", "...", &max] {
        ensure!(
            BlobKey::new(good).is_ok(),
            CHECK,
            "key {good:?} should be accepted"
        );
    }
    Ok(())
}

async fn missing(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "missing";
    let key = suite.key(CHECK, "missing/never-written")?;
    expect_not_found(CHECK, "get", suite.get(&key).await)?;
    expect_not_found(CHECK, "head", suite.head(&key).await)?;
    expect_not_found(CHECK, "get_range", suite.get_range(&key, 0..1).await)?;
    suite.delete(&key).await.map_err(|e| fail(CHECK, e))?;
    Ok(())
}

async fn round_trip(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "round_trip";
    let key = suite.key(CHECK, "round-trip/blob")?;
    suite
        .put_and_verify(CHECK, &key, &Bytes::from_static(b"hello, blob"))
        .await?;
    let binary = pattern(4099, 1);
    suite
        .put_and_verify(CHECK, &suite.key(CHECK, "round-trip/binary.bin")?, &binary)
        .await
}

async fn overwrite(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "overwrite";
    let key = suite.key(CHECK, "overwrite/blob")?;
    suite.put_and_verify(CHECK, &key, &pattern(1000, 2)).await?;
    suite.put_and_verify(CHECK, &key, &pattern(10, 3)).await?;
    suite.put_and_verify(CHECK, &key, &pattern(5000, 4)).await
}

async fn empty_blob(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "empty_blob";
    let key = suite.key(CHECK, "empty/blob")?;
    suite.put_and_verify(CHECK, &key, &Bytes::new()).await?;
    let empty = suite
        .get_range(&key, 0..0)
        .await
        .map_err(|e| fail(CHECK, e))?;
    ensure!(
        empty.is_empty(),
        CHECK,
        "get_range(0..0) returned {} bytes",
        empty.len()
    );
    expect_invalid_range(CHECK, &key, 0..1, 0, suite.get_range(&key, 0..1).await)
}

async fn large_blob_and_ranges(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "large_blob_and_ranges";
    let key = suite.key(CHECK, "large/blob")?;
    let data = pattern(LARGE_BLOB_SIZE, 5);
    suite.put_and_verify(CHECK, &key, &data).await?;

    let size = LARGE_BLOB_SIZE as u64;
    let mid = size / 2;
    for range in [0..4096, mid - 1000..mid + 1000, size - 100..size, 7..8] {
        let got = suite
            .get_range(&key, range.clone())
            .await
            .map_err(|e| fail(CHECK, e))?;
        let want = data.slice(range.start as usize..range.end as usize);
        ensure!(
            got == want,
            CHECK,
            "get_range({}..{}) returned {} bytes that differ from the blob's",
            range.start,
            range.end,
            got.len()
        );
    }
    for at in [0, mid, size] {
        let got = suite
            .get_range(&key, at..at)
            .await
            .map_err(|e| fail(CHECK, e))?;
        ensure!(
            got.is_empty(),
            CHECK,
            "empty get_range({at}..{at}) returned {} bytes",
            got.len()
        );
    }
    let (ten, five) = (10, 5);
    for range in [
        size - 1..size + 1,
        size..size + 1,
        size + 10..size + 20,
        ten..five,
    ] {
        let result = suite.get_range(&key, range.clone()).await;
        expect_invalid_range(CHECK, &key, range, size, result)?;
    }
    Ok(())
}

async fn delete(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "delete";
    let key = suite.key(CHECK, "delete/blob")?;
    let keep = suite.key(CHECK, "delete/keep")?;
    suite.put_and_verify(CHECK, &key, &pattern(100, 6)).await?;
    suite.put_and_verify(CHECK, &keep, &pattern(50, 7)).await?;
    suite.delete(&key).await.map_err(|e| fail(CHECK, e))?;
    expect_not_found(CHECK, "get after delete", suite.get(&key).await)?;
    expect_not_found(CHECK, "head after delete", suite.head(&key).await)?;
    suite.delete(&key).await.map_err(|e| fail(CHECK, e))?;
    let listed = suite
        .list(Some(&suite.key(CHECK, "delete")?))
        .await
        .map_err(|e| fail(CHECK, e))?;
    ensure!(
        listed
            == [BlobMeta {
                key: keep.clone(),
                size: 50
            }],
        CHECK,
        "after deleting `{key}`, listing shows {listed:?}; expected only `{keep}`"
    );
    Ok(())
}

async fn list(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "list";
    let blobs = [
        ("list/a/b/1", 3),
        ("list/a/b/2", 5),
        ("list/a/b/deep/3", 1),
        ("list/a/bc/x", 2),
        ("list/a/c", 0),
        ("list/z", 4),
    ];
    let mut all = Vec::new();
    for (i, (rel, size)) in blobs.iter().enumerate() {
        let key = suite.key(CHECK, rel)?;
        suite
            .put(&key, pattern(*size, 100 + i as u64))
            .await
            .map_err(|e| fail(CHECK, e))?;
        all.push(BlobMeta {
            key,
            size: *size as u64,
        });
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let under = |rel: &str| -> Vec<BlobMeta> {
        all.iter()
            .filter(|m| {
                suite
                    .base
                    .join(rel)
                    .is_ok_and(|p| m.key.strip_prefix(&p).is_some())
            })
            .cloned()
            .collect()
    };

    let cases = [
        ("list", under("list")),
        // Whole segments only: a/b must not list a/bc/x.
        ("list/a/b", under("list/a/b")),
        ("list/a", under("list/a")),
        // A blob's own key lists nothing: it is not "under" itself.
        ("list/a/b/1", Vec::new()),
        ("list/nothing-here", Vec::new()),
    ];
    ensure!(
        cases.get(1).is_some_and(|(_, v)| v.len() == 3),
        CHECK,
        "suite bug: prefix filter"
    );
    for (rel, want) in cases {
        let prefix = suite.key(CHECK, rel)?;
        let got = suite
            .list(Some(&prefix))
            .await
            .map_err(|e| fail(CHECK, e))?;
        ensure!(
            got == want,
            CHECK,
            "list(`{prefix}`) returned {got:?}; expected {want:?}"
        );
    }

    let list_prefix = suite.key(CHECK, "list")?;
    let mut streamed = suite
        .list_stream(Some(&list_prefix))
        .await
        .map_err(|e| fail(CHECK, e))?;
    streamed.sort_by(|a, b| a.key.cmp(&b.key));
    ensure!(
        streamed == all,
        CHECK,
        "list_stream(`{list_prefix}`) returned {streamed:?}; expected {all:?}"
    );

    let everything = suite.list(None).await.map_err(|e| fail(CHECK, e))?;
    ensure!(
        everything.windows(2).all(|w| match w {
            [a, b] => a.key < b.key,
            _ => true,
        }),
        CHECK,
        "list(None) is not sorted by key"
    );
    for meta in &all {
        ensure!(
            everything.contains(meta),
            CHECK,
            "list(None) lacks {meta:?}"
        );
    }
    Ok(())
}

async fn concurrent_puts(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "concurrent_puts";
    const N: u64 = 16;
    let mut keys = Vec::new();
    for i in 0..N {
        keys.push((
            suite.key(CHECK, &format!("concurrent/k{i:02}"))?,
            pattern(65_536, 200 + i),
        ));
    }
    let puts = join_all(keys.iter().map(|(k, d)| suite.put(k, d.clone()))).await;
    for result in puts {
        result.map_err(|e| fail(CHECK, e))?;
    }
    let gets = join_all(keys.iter().map(|(k, _)| suite.get(k))).await;
    for ((key, data), got) in keys.iter().zip(gets) {
        let got = got.map_err(|e| fail(CHECK, e))?;
        ensure!(
            got == *data,
            CHECK,
            "`{key}` holds other bytes after concurrent puts"
        );
    }
    let listed = suite
        .list(Some(&suite.key(CHECK, "concurrent")?))
        .await
        .map_err(|e| fail(CHECK, e))?;
    ensure!(
        listed.len() as u64 == N,
        CHECK,
        "listed {} of {N} blobs",
        listed.len()
    );
    Ok(())
}

async fn atomic_overwrite(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "atomic_overwrite";
    let key = suite.key(CHECK, "atomic/blob")?;
    let small = Bytes::from(vec![0x11; 256 << 10]);
    let large = Bytes::from(vec![0x22; 1 << 20]);
    suite
        .put(&key, small.clone())
        .await
        .map_err(|e| fail(CHECK, e))?;
    for next in [&large, &small] {
        let write = suite.put(&key, next.clone());
        let reads = join_all((0..8).map(|_| suite.get(&key)));
        let (written, reads) = futures::join!(write, reads);
        written.map_err(|e| fail(CHECK, e))?;
        for read in reads {
            let read = read.map_err(|e| fail(CHECK, e))?;
            ensure!(
                read == small || read == large,
                CHECK,
                "a read during an overwrite saw {} bytes that are neither the old nor the new blob",
                read.len()
            );
        }
    }
    Ok(())
}

async fn cleanup(suite: &Suite<'_>) -> Result<(), ConformanceError> {
    const CHECK: &str = "cleanup";
    let left = suite
        .list(Some(&suite.base))
        .await
        .map_err(|e| fail(CHECK, e))?;
    let deletes = join_all(left.iter().map(|m| suite.delete(&m.key))).await;
    for result in deletes {
        result.map_err(|e| fail(CHECK, e))?;
    }
    let after = suite
        .list(Some(&suite.base))
        .await
        .map_err(|e| fail(CHECK, e))?;
    ensure!(
        after.is_empty(),
        CHECK,
        "{} blobs remain under `{}` after deleting all",
        after.len(),
        suite.base
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectStoreBackend;

    #[test]
    fn pattern_is_deterministic_and_seeded() {
        assert_eq!(pattern(100, 1), pattern(100, 1));
        assert_ne!(pattern(100, 1), pattern(100, 2));
        assert_eq!(pattern(13, 1).len(), 13);
    }

    /// A store that breaks one rule: `get_range` clamps ranges that run past the end.
    #[derive(Debug)]
    struct Clamping(ObjectStoreBackend);

    #[async_trait::async_trait]
    impl BlobStore for Clamping {
        async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
            self.0.put(key, data).await
        }
        async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
            self.0.get(key).await
        }
        async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
            let size = self.0.head(key).await?.size;
            self.0
                .get_range(key, range.start.min(size)..range.end.min(size))
                .await
        }
        async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
            self.0.head(key).await
        }
        async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
            self.0.delete(key).await
        }
        fn list_stream(
            &self,
            prefix: Option<&BlobKey>,
        ) -> futures::stream::BoxStream<'_, Result<BlobMeta, StorageError>> {
            self.0.list_stream(prefix)
        }
    }

    #[tokio::test]
    async fn the_suite_catches_a_broken_store() {
        let err = run_all(&Clamping(ObjectStoreBackend::memory()))
            .await
            .unwrap_err();
        assert_eq!(err.check, "empty_blob", "{err}");
    }
}
