//! Folder sync: one vault bound to a folder on each of two devices; files written into one
//! folder by any program appear in the other.
//!
//! ```text
//! cargo run -p dooz-sdk --example folder_sync
//! ```
//!
//! It starts a `dooz-server` inside the process so that it runs anywhere; a real app gets its
//! enrolment code from the server's admin (`dooz-server admin enrol-code`) instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use dooz_sdk::{Client, ClientOptions, Event};
use futures::StreamExt as _;

#[tokio::main]
async fn main() -> dooz_sdk::Result<()> {
    let server = support::TestServer::start().await;
    let dirs = tempfile::tempdir().map_err(|e| dooz_sdk::Error::Task(e.to_string()))?;
    // Background sync looks for edits made behind the SDK's back every second here.
    let options = ClientOptions::default().sync_interval(Duration::from_secs(1));

    let desktop = Client::open_with(
        dirs.path().join("desktop"),
        options.clone().device_name("desktop"),
    )?;
    let laptop = Client::open_with(dirs.path().join("laptop"), options.device_name("laptop"))?;
    desktop.enrol(&server.code().await).await?;
    laptop.enrol(&server.code().await).await?;
    let desktop_dir = dirs.path().join("Desktop Documents");
    desktop.create_folder("documents", &desktop_dir)?;
    let invite = desktop.pair_invite().await?;
    let code = invite.code().to_owned();
    let (paired, joined) = tokio::join!(invite.complete(), laptop.pair_join(&code));
    paired?;
    joined?;

    // Each device binds the vault to a folder of its own.
    let laptop_dir = dirs.path().join("Laptop Documents");
    let on_laptop = laptop.open_folder("documents", &laptop_dir)?;
    let mut events = on_laptop.watch();
    let desktop_sync = desktop.start_sync()?;
    let laptop_sync = laptop.start_sync()?;

    // Any program writes files into the desktop's folder...
    std::fs::create_dir_all(desktop_dir.join("taxes/2026")).unwrap();
    std::fs::write(
        desktop_dir.join("taxes/2026/receipts.csv"),
        "date,amount\n2026-11-24,12.50\n",
    )
    .unwrap();
    std::fs::write(desktop_dir.join("todo.txt"), "file taxes\n").unwrap();

    // ...and they appear in the laptop's.
    let mut arrived = Vec::new();
    while arrived.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("the files arrived in time")
            .expect("the stream is open");
        if let Event::Remote { key, change, .. } = event {
            println!("laptop: {key} ({change:?})");
            arrived.push(key);
        }
    }
    arrived.sort();
    assert_eq!(arrived, ["taxes/2026/receipts.csv", "todo.txt"]);
    assert_eq!(
        std::fs::read_to_string(laptop_dir.join("todo.txt")).unwrap(),
        "file taxes\n"
    );
    println!("the laptop's folder has both files");

    desktop_sync.stop().await?;
    laptop_sync.stop().await?;
    Ok(())
}
