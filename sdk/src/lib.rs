//! `dooz-sdk`: the API apps embed.
//!
//! Built by the SDK issue: `Client::open(dir)`, enrolment, vaults, `put`/`get`/`delete`/`list`/
//! `history` with byte and streaming variants, `sync()`, `watch()` and folder sync, offline first,
//! with typed errors. Apps depend on this crate alone.
