//! Integration tests of the data plane: a real server and real clients on loopback QUIC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod chunks;
mod commit;
mod connect;
mod gc;
mod harness;
mod pack;
mod policy;
mod shutdown;
mod subscribe;
