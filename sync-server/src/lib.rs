//! `dooz-server`: the Dooz Sync server.
//!
//! Built by the sync issue and the ones after it, this crate will hold the QUIC data plane
//! (quinn + rustls, mutual TLS, one request per stream), the metadata store (sled by default,
//! PostgreSQL for several instances), the axum control plane under `/v1`, and metering.
//! It stores sealed chunks through `dooz-storage` and never holds a vault key.

pub mod config;
pub mod frame_io;
pub mod service;
pub mod tls;
pub mod transport;
