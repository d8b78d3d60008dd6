//! `dooz-sdk`: end-to-end encrypted multi-device sync for apps, with no network or crypto code
//! in the app.
//!
//! A [`Client`] is one device: its keys, its enrolment with a Dooz server, and its vaults.
//! A [`Vault`] holds values by key (`notes/today.md`), encrypted on the device before anything
//! leaves it; the server stores sealed chunks and never sees keys, values or names.
//!
//! - **Offline first.** [`Vault::put`], [`Vault::get`], [`Vault::delete`] and [`Vault::list`]
//!   work with no server: they read and write the device's own store (atomic, durable writes).
//!   Changes sync when the server is reachable: [`Vault::sync`] once, or background sync
//!   ([`Client::start_sync`]), which reconnects by itself.
//! - **Streaming.** [`Vault::put_reader`], [`Vault::writer`] ([`tokio::io::AsyncWrite`]) and
//!   [`Vault::reader`] ([`tokio::io::AsyncRead`]) move values of many GiB in bounded memory.
//! - **Change events.** [`Client::watch`] and [`Vault::watch`] are [`futures::Stream`]s of
//!   [`Event`]s: local changes, remote changes (each delivered once), conflicts (with both
//!   versions) and sync status.
//! - **Conflicts** keep both versions by default; last-writer-wins or an app callback are
//!   options ([`ConflictPolicy`]).
//! - **History.** Every version the server keeps ([`Vault::history`]); [`Vault::restore`]
//!   makes an old one current again.
//! - **Folder sync.** [`Client::open_folder`] binds a vault to a folder of the user's: its
//!   files are the values.
//! - **Devices and keys.** [`Client::enrol`] with a code from the server's admin;
//!   [`Client::pair_invite`] / [`Client::pair_join`] hand vault keys to a new device without
//!   the server seeing them; [`Client::set_up_recovery`] / [`Client::recover`] regain every
//!   vault with 12 words.
//! - **Errors** are typed ([`Error`], `#[non_exhaustive]`) and say whether retrying helps
//!   ([`Error::is_retryable`]).
//!
//! # Example
//!
//! A vault on a device that has not met a server yet:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dooz_sdk::Error> {
//! # let dir = tempfile::tempdir().map_err(|e| dooz_sdk::Error::Task(e.to_string()))?;
//! use dooz_sdk::Client;
//!
//! let client = Client::open(dir.path().join("dooz"))?;
//! let notes = client.create_vault("notes")?;
//! notes.put("2026/groceries.md", b"- oat milk\n- coffee\n").await?;
//! notes.put("2026/ideas.md", b"sync all the things").await?;
//!
//! assert_eq!(
//!     notes.get("2026/ideas.md").await?.as_deref(),
//!     Some(&b"sync all the things"[..])
//! );
//! let keys: Vec<String> = notes.list("2026/").await?.into_iter().map(|k| k.key).collect();
//! assert_eq!(keys, ["2026/groceries.md", "2026/ideas.md"]);
//!
//! assert!(notes.delete("2026/ideas.md").await?);
//! assert_eq!(notes.get("2026/ideas.md").await?, None);
//!
//! // Keys are paths: a key cannot hold a value and have keys below it.
//! assert!(matches!(
//!     notes.put("2026", b"x").await,
//!     Err(dooz_sdk::Error::KeyCollision { .. })
//! ));
//! // Syncing needs a server; the changes wait for one.
//! let err = notes.sync().await.unwrap_err();
//! assert!(matches!(err, dooz_sdk::Error::NotEnrolled));
//! # Ok(()) }
//! ```
//!
//! With a server: enrol once, then sync in the background and watch what arrives.
//!
//! ```no_run
//! # async fn run(code: &str) -> Result<(), dooz_sdk::Error> {
//! use dooz_sdk::{Client, Event};
//! use futures::StreamExt as _;
//!
//! let client = Client::open("/var/lib/my-app/dooz")?;
//! if !client.is_enrolled()? {
//!     client.enrol(code).await?; // a `dooz1-...` code from the server's admin
//! }
//! // The account's first device makes the vault; every other device gets it by pairing
//! // (`pair_join`) before opening it, or it would make a vault of its own.
//! let notes = match client.vault("notes") {
//!     Ok(vault) => vault,
//!     Err(dooz_sdk::Error::NoSuchVault { .. }) => client.create_vault("notes")?,
//!     Err(e) => return Err(e),
//! };
//! let sync = client.start_sync()?;
//! let mut events = notes.watch();
//! notes.put("hello.md", b"hi from this device").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Remote { key, change, .. } => println!("{key}: {change:?}"),
//!         Event::Conflict(c) => println!("conflict on {}: kept {:?}", c.key, c.resolution),
//!         _ => {}
//!     }
//! #   break;
//! }
//! sync.stop().await?;
//! # Ok(()) }
//! ```
//!
//! The README's guide for app makers, `examples/notes.rs` (two devices sharing notes) and
//! `examples/folder_sync.rs` show the rest. Under the hood: `ARCHITECTURE.md`, "SDK".

mod background;
mod client;
mod error;
mod events;
mod keys;
mod vault;

pub use background::SyncHandle;
pub use client::{
    Client, ClientOptions, ConflictFn, ConflictInfo, ConflictPolicy, Enrolment, PairedDevice,
    PairingInvite, VaultSummary, VersionInfo,
};
pub use dooz_client::{EngineOptions, Progress, ProgressEvent, Resolution, SyncPhase, SyncReport};
pub use dooz_crypto::{DeviceId, VaultId, VersionId};
pub use error::{Error, Result};
pub use events::{Change, ConflictEvent, Event, EventStream, Side, Status};
pub use keys::{MAX_KEY_LEN, MAX_KEY_PART_LEN};
pub use vault::{KeyInfo, ValueReader, ValueWriter, Vault, Version};
