//! A 1 GiB value streamed in and out keeps the process's peak RSS under 256 MiB. Its own test
//! binary, so that nothing else runs in the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::task::{Context, Poll};

use dooz_sdk::Client;
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

const SIZE: u64 = 1 << 30;

/// `len` pseudo-random bytes (xorshift), made as they are read.
struct Generated {
    state: u64,
    left: u64,
    hasher: blake3::Hasher,
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize / 8 * 8;
        let mut out = vec![0u8; n];
        for word in out.chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes());
        }
        self.hasher.update(&out);
        self.left -= n as u64;
        buf.put_slice(&out);
        Poll::Ready(Ok(()))
    }
}

/// Peak resident set size of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test]
async fn a_one_gib_streaming_put_stays_under_256_mib_of_rss() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::open(dir.path().join("dooz")).unwrap();
    let vault = client.create_vault("big").unwrap();
    let mut source = Generated {
        state: 0x9e37_79b9_7f4a_7c15,
        left: SIZE,
        hasher: blake3::Hasher::new(),
    };
    let stored = vault.put_reader("disk.img", &mut source).await.unwrap();
    assert_eq!(stored, SIZE);
    let written = source.hasher.finalize();

    // Read back as a stream, hashing as it goes.
    let mut reader = vault.reader("disk.img").await.unwrap().unwrap();
    assert_eq!(reader.len(), SIZE);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    assert_eq!(hasher.finalize(), written);

    let Some(peak) = peak_rss() else {
        eprintln!("no /proc/self/status here: peak RSS not checked");
        return;
    };
    eprintln!(
        "peak RSS after a 1 GiB streaming put and get: {} MiB",
        peak >> 20
    );
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
}
