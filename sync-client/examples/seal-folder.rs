//! Drive the core libraries end to end on one machine: chunk every file of a folder, name each
//! chunk by its keyed hash, seal the chunks the store lacks, store them in a blob store, then
//! read everything back, open and verify it against the files.
//!
//! ```text
//! cargo run --release -p dooz-client --example seal-folder -- [FOLDER] [--store URL]
//! ```
//!
//! FOLDER defaults to the current directory; `.git` and cache directories (those holding a
//! `CACHEDIR.TAG`, such as cargo's `target/`) are skipped. `--store` takes a `dooz-storage` URL
//! (`file:///path`, `memory://`); the default is a fresh temporary directory, removed at the end.
//! This is the provisional run command until the sync server and the `dooz` CLI land.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use dooz_client::{ChunkList, ChunkListBuilder, ChunkListLimits, Chunker, ChunkerConfig};
use dooz_crypto::{ChunkId, Epoch, EpochKeys, Keyring, VaultId, VaultIdentityKeys, VaultKey};
use dooz_storage::{BlobKey, BlobStore, Metered, open_url};

struct FileEntry {
    path: PathBuf,
    len: u64,
    hash: blake3::Hash,
    chunks: Vec<ChunkId>,
}

fn main() -> anyhow::Result<()> {
    let mut folder = None;
    let mut store_url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => store_url = Some(args.next().context("--store needs a URL")?),
            "-h" | "--help" => {
                println!("usage: seal-folder [FOLDER] [--store URL]");
                return Ok(());
            }
            _ if folder.is_none() => folder = Some(PathBuf::from(arg)),
            _ => bail!("unexpected argument {arg:?}; usage: seal-folder [FOLDER] [--store URL]"),
        }
    }
    let folder = match folder {
        Some(f) => f,
        None => std::env::current_dir().context("reading the current directory")?,
    };
    if !folder.is_dir() {
        bail!("{} is not a folder", folder.display());
    }
    let temp;
    let url = match store_url {
        Some(u) => u,
        None => {
            temp = tempfile::tempdir().context("creating a temporary blob store")?;
            format!("file://{}", temp.path().display())
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store = Metered::new(open_url(&url).with_context(|| format!("opening store {url}"))?);

    // A fresh vault: its first epoch key, the identity keys (chunk ids, chunker seed) and
    // the sealing keys of epoch 0.
    let vault = VaultId::generate()?;
    let key = VaultKey::generate()?;
    let identity = VaultIdentityKeys::derive(vault, &key);
    let chunker = Chunker::new(ChunkerConfig::DEFAULT, identity.chunker_seed().as_bytes());
    let mut ring = Keyring::new(vault, identity);
    ring.insert_epoch(EpochKeys::derive(vault, Epoch(0), &key))?;

    let mut files = Vec::new();
    walk(&folder, &mut files)?;
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    eprintln!(
        "vault {vault}: sealing {} files, {} into {url}",
        files.len(),
        human(total)
    );

    // Upload: chunk -> id -> (new?) seal -> put.
    let start = Instant::now();
    let keys = ring.latest().context("the vault has an epoch")?;
    let mut seen = HashSet::new();
    let mut sealed = Vec::new();
    let mut entries = Vec::new();
    let (mut done, mut chunk_count) = (0u64, 0u64);
    let mut progress = Progress::new("seal", total);
    for (path, _) in &files {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut stream = chunker.stream(BufReader::new(file));
        let mut list = ChunkListBuilder::new(ChunkListLimits::DEFAULT);
        let mut hasher = blake3::Hasher::new();
        let mut ids = Vec::new();
        while let Some(chunk) = stream
            .next_chunk()
            .with_context(|| format!("reading {}", path.display()))?
        {
            hasher.update(chunk.data);
            let id = ring.identity().chunk_id(chunk.data);
            chunk_count += 1;
            if seen.insert(id) {
                keys.seal_chunk_into(&id, chunk.data, &mut sealed)?;
                rt.block_on(store.put(&blob_key(&id)?, Bytes::copy_from_slice(&sealed)))?;
            }
            list.push(
                *id.as_bytes(),
                &mut |_block: &[u8]| -> anyhow::Result<[u8; 32]> {
                    bail!("file too large for an inline chunk list in this example")
                },
            )?;
            ids.push(id);
            done += chunk.data.len() as u64;
            progress.set(done);
        }
        let list = list.finish(&mut |_block: &[u8]| -> anyhow::Result<[u8; 32]> {
            bail!("file too large for an inline chunk list in this example")
        })?;
        debug_assert!(matches!(list, ChunkList::Inline(_)));
        let len = stream.offset();
        entries.push(FileEntry {
            path: path.clone(),
            len,
            hash: hasher.finalize(),
            chunks: ids,
        });
    }
    progress.finish();
    let seal_secs = start.elapsed().as_secs_f64();
    let stored = store.snapshot();

    // Download: get -> open (authenticates, checks the chunk id) -> compare with the file.
    let start = Instant::now();
    let mut progress = Progress::new("verify", total);
    let mut done = 0u64;
    for entry in &entries {
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        for id in &entry.chunks {
            let blob = rt.block_on(store.get(&blob_key(id)?))?;
            let plain = ring
                .open_chunk(id, &blob)
                .with_context(|| format!("opening a chunk of {}", entry.path.display()))?;
            hasher.update(&plain);
            len += plain.len() as u64;
            done += plain.len() as u64;
            progress.set(done);
        }
        if len != entry.len || hasher.finalize() != entry.hash {
            bail!("{} did not read back identical", entry.path.display());
        }
    }
    progress.finish();
    let verify_secs = start.elapsed().as_secs_f64();

    let unique = seen.len() as u64;
    println!("files            {}", entries.len());
    println!("plaintext        {}", human(total));
    println!("chunks           {chunk_count} ({unique} unique)");
    println!(
        "stored           {} in {} blobs ({:.1}% of plaintext after dedup, padding, compression)",
        human(stored.bytes_in),
        stored.put.ok,
        100.0 * stored.bytes_in as f64 / total.max(1) as f64
    );
    println!(
        "seal + store     {:.2}s ({}/s)",
        seal_secs,
        human((total as f64 / seal_secs.max(1e-9)) as u64)
    );
    println!(
        "read + verify    {:.2}s ({}/s), every file identical",
        verify_secs,
        human((total as f64 / verify_secs.max(1e-9)) as u64)
    );
    Ok(())
}

fn blob_key(id: &ChunkId) -> anyhow::Result<BlobKey> {
    let hex = id.to_string();
    Ok(BlobKey::new(&format!("chunks/{}/{hex}", &hex[..2]))?)
}

/// Regular files under `dir`, skipping `.git`, cache directories and symlinks.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
    if dir.join("CACHEDIR.TAG").exists() {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() && entry.file_name() != ".git" {
            walk(&path, out)?;
        } else if kind.is_file() {
            out.push((path, entry.metadata()?.len()));
        }
    }
    Ok(())
}

/// A one-line progress bar on stderr (when it is a terminal), redrawn at most every 1%.
struct Progress {
    label: &'static str,
    total: u64,
    shown: u64,
    enabled: bool,
}

impl Progress {
    fn new(label: &'static str, total: u64) -> Self {
        Self {
            label,
            total: total.max(1),
            shown: u64::MAX,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    fn set(&mut self, done: u64) {
        let pct = done * 100 / self.total;
        if self.enabled && pct != self.shown {
            self.shown = pct;
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r{:>6} [{bar:<25}] {pct:>3}% {}", self.label, human(done));
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&mut self) {
        self.set(self.total);
        if self.enabled {
            eprintln!();
        }
    }
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
