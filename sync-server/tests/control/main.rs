//! Integration tests of the control plane: a real server (QUIC data plane and HTTP API) on
//! 127.0.0.1, driven over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod conventions;
mod deletions;
mod device;
mod harness;
mod isolation;
mod lifecycle;
mod metering;
mod quota;
mod secrets;
mod storage;
mod webhooks;
