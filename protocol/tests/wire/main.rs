//! Codec properties of `dooz-protocol`: round trips of every message type, truncation,
//! oversized length prefixes, evolution rules (unknown types, versions, extensions) and hostile
//! bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile;
mod roundtrip;
mod strategies;
