//! A small notes app shared by two devices: a laptop and a phone of one account.
//!
//! ```text
//! cargo run -p dooz-sdk --example notes
//! ```
//!
//! It starts a `dooz-server` inside the process so that it runs anywhere; a real app gets its
//! enrolment code from the server's admin (`dooz-server admin enrol-code`) instead. Each note
//! is one value, keyed `notes/<id>.md`. The laptop writes notes, the phone sees them arrive as
//! events; then both edit the same note at once, and the app merges the conflict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use dooz_sdk::{Client, ClientOptions, ConflictEvent, Event, Vault};
use futures::StreamExt as _;

/// The app's model over a vault.
struct Notes {
    vault: Vault,
}

impl Notes {
    fn key(id: &str) -> String {
        format!("notes/{id}.md")
    }

    async fn save(&self, id: &str, text: &str) -> dooz_sdk::Result<()> {
        self.vault.put(&Self::key(id), text).await
    }

    async fn read(&self, id: &str) -> dooz_sdk::Result<Option<String>> {
        Ok(self
            .vault
            .get(&Self::key(id))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn titles(&self) -> dooz_sdk::Result<Vec<String>> {
        Ok(self
            .vault
            .list("notes/")
            .await?
            .into_iter()
            .map(|k| k.key)
            .collect())
    }

    /// Merges a conflict by keeping both texts in the note, then drops the conflicted copy.
    async fn merge(&self, conflict: &ConflictEvent) -> dooz_sdk::Result<()> {
        let text = |side: &Option<dooz_sdk::Side>| {
            side.as_ref()
                .and_then(|s| s.value.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let merged = format!(
            "{}\n--- merged with ---\n{}",
            text(&conflict.theirs),
            text(&conflict.ours)
        );
        self.vault.put(&conflict.key, merged).await?;
        if let Some(copy) = conflict.ours.as_ref().and_then(|s| s.key.as_deref()) {
            self.vault.delete(copy).await?;
        }
        Ok(())
    }
}

/// Waits for the first event `pick` accepts (30 s at most).
async fn next<T>(
    events: &mut dooz_sdk::EventStream,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let wait = async {
        while let Some(event) = events.next().await {
            if let Some(t) = pick(&event) {
                return t;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the event came in time")
}

#[tokio::main]
async fn main() -> dooz_sdk::Result<()> {
    let server = support::TestServer::start().await;
    let dirs = tempfile::tempdir().map_err(|e| dooz_sdk::Error::Task(e.to_string()))?;

    // Each device opens its client and enrols once.
    let laptop = Client::open_with(
        dirs.path().join("laptop"),
        ClientOptions::default().device_name("laptop"),
    )?;
    let phone = Client::open_with(
        dirs.path().join("phone"),
        ClientOptions::default().device_name("phone"),
    )?;
    laptop.enrol(&server.code().await).await?;
    phone.enrol(&server.code().await).await?;

    // The laptop makes the vault; pairing hands its key to the phone (the server never sees it).
    let on_laptop = Notes {
        vault: laptop.create_vault("notes")?,
    };
    let invite = laptop.pair_invite().await?;
    let code = invite.code().to_owned(); // shown on the laptop, typed or scanned on the phone
    let (paired, _) = tokio::join!(invite.complete(), phone.pair_join(&code));
    println!("paired with {:?}", paired?.name);
    let on_phone = Notes {
        vault: phone.vault("notes")?,
    };

    let mut phone_events = on_phone.vault.watch();
    let mut laptop_events = on_laptop.vault.watch();
    let laptop_sync = laptop.start_sync()?;
    let phone_sync = phone.start_sync()?;

    // Notes written on the laptop show up on the phone.
    on_laptop.save("shopping", "- oat milk\n- coffee").await?;
    on_laptop.save("ideas", "an app that syncs").await?;
    for _ in 0..2 {
        let key = next(&mut phone_events, |e| match e {
            Event::Remote { key, .. } => Some(key.clone()),
            _ => None,
        })
        .await;
        println!("phone: {key} arrived");
    }
    assert_eq!(
        on_phone.titles().await?,
        ["notes/ideas.md", "notes/shopping.md"]
    );

    // The phone edits a note; the laptop gets the edit.
    on_phone
        .save("shopping", "- oat milk\n- coffee\n- bread")
        .await?;
    next(&mut laptop_events, |e| {
        matches!(e, Event::Remote { key, .. } if key == "notes/shopping.md").then_some(())
    })
    .await;
    println!(
        "laptop: {:?}",
        on_laptop.read("shopping").await?.unwrap_or_default()
    );

    // Both edit "ideas" while the phone is not syncing: a conflict, merged by the app.
    phone_sync.stop().await?;
    on_laptop.save("ideas", "an app that syncs, fast").await?;
    next(&mut laptop_events, |e| {
        matches!(e, Event::Status(dooz_sdk::Status::Synced { .. })).then_some(())
    })
    .await;
    on_phone
        .save("ideas", "an app that syncs, offline too")
        .await?;
    on_phone.vault.sync().await?;
    let conflict = next(&mut phone_events, |e| match e {
        Event::Conflict(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    println!("phone: conflict on {}, both versions kept", conflict.key);
    on_phone.merge(&conflict).await?;
    on_phone.vault.sync().await?;
    next(&mut laptop_events, |e| {
        matches!(e, Event::Remote { key, .. } if key == "notes/ideas.md").then_some(())
    })
    .await;
    let merged = on_laptop.read("ideas").await?.unwrap_or_default();
    println!("laptop: ideas is now {merged:?}");
    assert!(merged.contains("fast") && merged.contains("offline too"));

    laptop_sync.stop().await?;
    Ok(())
}
