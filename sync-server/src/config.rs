//! Server configuration in two stages: [`ServerSettings`], a serde struct whose every field has a
//! documented default (what the flags, the environment and a config file fill in), validated by
//! [`ServerSettings::validate`] into the runtime [`ServerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dooz_protocol::MAX_FRAME_LEN;
use dooz_protocol::limits::MAX_CHUNK_LEN;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::transport::TransportTuning;

/// Default listen address of the data plane.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";
/// Default listen address of the control-plane HTTP API.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7071";
/// Default grace period of a `past_due` subscription: 7 days.
pub const DEFAULT_PAST_DUE_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Default data dir (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./dooz-data";

/// Server settings as written by people: flags, `DOOZ_*` environment variables or a JSON file.
/// Every field is optional; a missing one takes the default named in its docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Directory holding the metadata store, the local blob store and the server's TLS
    /// identity. Created if missing. Default `./dooz-data`.
    pub data_dir: PathBuf,
    /// UDP address the QUIC data plane listens on. Default `127.0.0.1:7300`; port 0 picks a
    /// free port.
    pub listen: SocketAddr,
    /// `host:port` devices use to reach this server, written into enrolment codes. Default: the
    /// listen address (which must then not be a wildcard like `0.0.0.0`).
    pub advertise: Option<String>,
    /// TCP address the control-plane HTTP API (`/v1`) listens on. Default `127.0.0.1:7071`;
    /// port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// How long a `past_due` subscription keeps full access before it becomes read-only, in
    /// seconds. Default 604800 (7 days).
    pub past_due_grace_secs: u64,
    /// Control-plane requests refilled per minute for each credential (admin token or API key);
    /// 0 turns rate limiting off. Default 6000 (100 a second).
    pub api_rate_limit_per_minute: u32,
    /// Most control-plane requests a credential may send in a burst. Default 200.
    pub api_rate_limit_burst: u32,
    /// Blob store URL (`file:///abs/path`, a plain path, `memory://` for tests, or
    /// `s3://bucket/prefix?endpoint=URL&region=NAME` with credentials in `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`). Default: `<data_dir>/blobs`.
    pub blobs: Option<String>,
    /// Metadata store: `sled` (embedded, in `<data_dir>/meta`; one server) or a PostgreSQL URL
    /// `postgres://user:password@host:port/database` (several servers share it:
    /// docs/SCALE-OUT.md). Default `sled`.
    pub metadata: Option<String>,
    /// Connections each server keeps to PostgreSQL at most. Default 32.
    pub metadata_pool_size: u32,
    /// Requests (bidirectional streams) one connection may have open at once. Default 256.
    pub max_streams_per_connection: u32,
    /// Chunk bytes the whole server holds in memory at once for uploads and downloads; requests
    /// past it wait. At least 16 MiB (one maximal chunk). Default 256 MiB.
    pub max_inflight_bytes: u64,
    /// Largest frame body accepted, at most 8 MiB (the protocol limit). Default 8 MiB.
    pub max_frame_len: u32,
    /// Sealed chunks of at most this many bytes are gathered into packs instead of being
    /// stored as a blob each; 0 turns packing off. At most 16 MiB. Default 1 MiB.
    pub pack_max_chunk_bytes: u32,
    /// A pack is written once it holds this many bytes; between 64 KiB and 256 MiB.
    /// Default 16 MiB.
    pub pack_target_bytes: u32,
    /// A pack left open this many seconds is written even if not full. Default 5.
    pub pack_idle_secs: u64,
    /// Uploads that no commit referenced within this many seconds are deleted by garbage
    /// collection. Default 86400 (24 h).
    pub gc_pending_grace_secs: u64,
    /// Seconds between garbage-collection runs; 0: never on its own. Default 3600.
    pub gc_interval_secs: u64,
    /// `SO_SNDBUF`/`SO_RCVBUF` asked for on the UDP socket. Default 4 MiB.
    pub socket_buffer_bytes: usize,
    /// Per-stream QUIC receive window. Default 16 MiB.
    pub stream_window_bytes: u32,
    /// Per-connection QUIC receive and send window. Default 64 MiB.
    pub connection_window_bytes: u64,
    /// QUIC keep-alive interval in seconds. Default 5.
    pub keep_alive_secs: u64,
    /// QUIC idle timeout in seconds. Default 30.
    pub idle_timeout_secs: u64,
    /// On shutdown, how long to wait for connections to finish before dropping them, in
    /// seconds. Default 10.
    pub shutdown_grace_secs: u64,
    /// Tenant created on first start, to which enrolment codes add devices. Default `default`.
    pub default_tenant: String,
    /// Account created on first start in the default tenant. Default `default`.
    pub default_account: String,
    /// How the server logs to stderr: `text` (for people) or `json` (one object a line, for log
    /// collectors). Default `text`.
    pub log_format: LogFormat,
    /// Whether data-plane traffic is metered (docs/METERING.md). Turning it off leaves usage
    /// reports without traffic; it exists to measure what metering costs. Default `true`.
    pub metering: bool,
    /// Whether every traffic count is `fdatasync`ed before its answer is sent (nothing lost even
    /// on power loss). Off, counts are written to the journal file before the answer (a killed
    /// server loses none) and synced every 50 ms (a power loss or kernel crash can lose the
    /// counts of reads answered in those 50 ms), for disks whose flushes are slow. Default `true`.
    pub metering_fsync: bool,
    /// Billing events of an hour are exported only this many seconds after the hour ends, so
    /// that every instance's counts are in (clock skew between instances). Default 300.
    pub billing_lateness_secs: u64,
}

/// The server's log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `span`, `spans`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format: use text or json")),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        let tuning = TransportTuning::default();
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            advertise: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            past_due_grace_secs: DEFAULT_PAST_DUE_GRACE_SECS,
            api_rate_limit_per_minute: 6000,
            api_rate_limit_burst: 200,
            blobs: None,
            metadata: None,
            metadata_pool_size: 32,
            max_streams_per_connection: tuning.max_concurrent_bidi_streams,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_frame_len: MAX_FRAME_LEN,
            pack_max_chunk_bytes: crate::service::PackSettings::default().max_chunk,
            pack_target_bytes: crate::service::PackSettings::default().target_bytes,
            pack_idle_secs: crate::service::PackSettings::default().idle.as_secs(),
            gc_pending_grace_secs: crate::service::GcSettings::default()
                .pending_grace
                .as_secs(),
            gc_interval_secs: crate::service::GcSettings::default()
                .interval
                .map_or(0, |d| d.as_secs()),
            socket_buffer_bytes: tuning.socket_buffer_bytes,
            stream_window_bytes: tuning.stream_window_bytes,
            connection_window_bytes: tuning.connection_window_bytes,
            keep_alive_secs: tuning.keep_alive.as_secs(),
            idle_timeout_secs: tuning.idle_timeout.as_secs(),
            shutdown_grace_secs: 10,
            default_tenant: "default".to_owned(),
            default_account: "default".to_owned(),
            log_format: LogFormat::Text,
            metering: true,
            metering_fsync: true,
            billing_lateness_secs: 300,
        }
    }
}

/// A setting is out of range.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is out of range.
    #[error("setting {name} = {value} is invalid: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Its value, as written.
        value: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A config file could not be read or parsed.
    #[error("could not read the config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn invalid(name: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Where blobs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// A local directory ([`dooz_storage::LocalDir`]).
    Dir(PathBuf),
    /// A URL for [`dooz_storage::open_url`].
    Url(String),
}

/// Where the metadata lives.
#[derive(Clone, PartialEq, Eq)]
pub enum MetadataLocation {
    /// The embedded sled store in `<data_dir>/meta`.
    Sled,
    /// A PostgreSQL database that several servers may share.
    Postgres {
        /// Its URL (may hold a password: `Debug` hides it).
        url: String,
        /// Connections kept at most.
        pool_size: usize,
    },
}

impl std::fmt::Debug for MetadataLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled => f.write_str("Sled"),
            Self::Postgres { pool_size, .. } => f
                .debug_struct("Postgres")
                .field("url", &"..")
                .field("pool_size", pool_size)
                .finish(),
        }
    }
}

/// Validated runtime configuration of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The data plane's listen address.
    pub listen: SocketAddr,
    /// Address for enrolment codes, if one was given.
    pub advertise: Option<String>,
    /// The control-plane HTTP API's listen address.
    pub http_listen: SocketAddr,
    /// Full access of a `past_due` subscription lasts this long.
    pub past_due_grace: Duration,
    /// Rate limit of the control plane per credential; `None`: off.
    pub api_rate_limit: Option<crate::control::rate_limit::RateLimit>,
    /// Where blobs go.
    pub blobs: BlobLocation,
    /// Where the metadata lives.
    pub metadata: MetadataLocation,
    /// QUIC tuning.
    pub tuning: TransportTuning,
    /// Limits of the request service.
    pub limits: ServiceLimits,
    /// How long shutdown waits for connections.
    pub shutdown_grace: Duration,
    /// Tenant made on first start.
    pub default_tenant: String,
    /// Account made on first start.
    pub default_account: String,
    /// Billing events of an hour wait this long after it ends.
    pub billing_lateness: Duration,
    /// When traffic counts reach the disk.
    pub traffic_sync: crate::store::TrafficSync,
}

/// Limits of the request service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Chunk bytes held in memory at once, server-wide.
    pub max_inflight_bytes: u64,
    /// Largest frame body accepted.
    pub max_frame_len: u32,
    /// Packing of small chunks.
    pub packing: crate::service::PackSettings,
    /// Garbage collection.
    pub gc: crate::service::GcSettings,
    /// Whether traffic is metered.
    pub metering: bool,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        let s = ServerSettings::default();
        Self {
            max_inflight_bytes: s.max_inflight_bytes,
            max_frame_len: s.max_frame_len,
            packing: s.packing(),
            gc: s.gc(),
            metering: s.metering,
        }
    }
}

impl ServerSettings {
    /// The garbage-collection settings.
    fn gc(&self) -> crate::service::GcSettings {
        crate::service::GcSettings {
            pending_grace: Duration::from_secs(self.gc_pending_grace_secs),
            interval: (self.gc_interval_secs > 0)
                .then(|| Duration::from_secs(self.gc_interval_secs)),
            ..crate::service::GcSettings::default()
        }
    }

    /// The packing settings; open packs together may hold as much as `max_inflight_bytes`.
    fn packing(&self) -> crate::service::PackSettings {
        crate::service::PackSettings {
            max_chunk: self.pack_max_chunk_bytes,
            target_bytes: self.pack_target_bytes,
            max_buffered: self.max_inflight_bytes,
            idle: Duration::from_secs(self.pack_idle_secs),
        }
    }

    /// Reads settings from a JSON file (fields as in this struct, all optional).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))
    }

    /// Checks every value and builds the runtime config.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "", "give a directory"));
        }
        if let Some(addr) = &self.advertise {
            check_host_port("advertise", addr)?;
        }
        if self.max_streams_per_connection == 0 || self.max_streams_per_connection > 65_536 {
            return Err(invalid(
                "max_streams_per_connection",
                self.max_streams_per_connection,
                "must be between 1 and 65536",
            ));
        }
        if self.max_inflight_bytes < u64::from(MAX_CHUNK_LEN) {
            return Err(invalid(
                "max_inflight_bytes",
                self.max_inflight_bytes,
                format!("must be at least {MAX_CHUNK_LEN} (one maximal chunk)"),
            ));
        }
        if self.max_frame_len < 64 * 1024 || self.max_frame_len > MAX_FRAME_LEN {
            return Err(invalid(
                "max_frame_len",
                self.max_frame_len,
                format!("must be between 65536 and {MAX_FRAME_LEN}"),
            ));
        }
        if self.pack_max_chunk_bytes > MAX_CHUNK_LEN {
            return Err(invalid(
                "pack_max_chunk_bytes",
                self.pack_max_chunk_bytes,
                format!("must be at most {MAX_CHUNK_LEN} (the largest chunk); 0 turns packing off"),
            ));
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&self.pack_target_bytes) {
            return Err(invalid(
                "pack_target_bytes",
                self.pack_target_bytes,
                "must be between 65536 and 268435456",
            ));
        }
        if self.pack_idle_secs == 0 || self.pack_idle_secs > 3600 {
            return Err(invalid(
                "pack_idle_secs",
                self.pack_idle_secs,
                "must be between 1 and 3600",
            ));
        }
        if self.stream_window_bytes < 64 * 1024 {
            return Err(invalid(
                "stream_window_bytes",
                self.stream_window_bytes,
                "must be at least 65536",
            ));
        }
        if self.connection_window_bytes < u64::from(self.stream_window_bytes) {
            return Err(invalid(
                "connection_window_bytes",
                self.connection_window_bytes,
                "must be at least stream_window_bytes",
            ));
        }
        if self.keep_alive_secs == 0 || self.keep_alive_secs >= self.idle_timeout_secs {
            return Err(invalid(
                "keep_alive_secs",
                self.keep_alive_secs,
                "must be at least 1 and below idle_timeout_secs",
            ));
        }
        for (name, value) in [
            ("default_tenant", &self.default_tenant),
            ("default_account", &self.default_account),
        ] {
            check_name(name, value)?;
        }
        let tuning = TransportTuning {
            socket_buffer_bytes: self.socket_buffer_bytes,
            stream_window_bytes: self.stream_window_bytes,
            connection_window_bytes: self.connection_window_bytes,
            send_window_bytes: self.connection_window_bytes,
            max_concurrent_bidi_streams: self.max_streams_per_connection,
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
        };
        // Let quinn's own checks speak too (varint ranges).
        crate::transport::transport_config(&tuning, true)
            .map_err(|e| invalid("transport", "", e.to_string()))?;
        let packing = self.packing();
        let gc = self.gc();
        let blobs_set = self.blobs.is_some();
        let blobs = match self.blobs {
            None => BlobLocation::Dir(self.data_dir.join("blobs")),
            Some(url) => BlobLocation::Url(url),
        };
        let metadata = match self.metadata.as_deref().map(str::trim) {
            None | Some("" | "sled") => MetadataLocation::Sled,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if self.metadata_pool_size < 2 || self.metadata_pool_size > 1000 {
                    return Err(invalid(
                        "metadata_pool_size",
                        self.metadata_pool_size,
                        "use 2 to 1000 connections",
                    ));
                }
                if !blobs_set {
                    // The default, `<data_dir>/blobs`, is this instance's own: the others
                    // sharing the database would not find its blobs.
                    return Err(invalid(
                        "blobs",
                        "(unset)",
                        "with PostgreSQL metadata, set `blobs` to the store every instance \
                         shares (s3://bucket/prefix?endpoint=URL&region=NAME, or a shared \
                         directory)",
                    ));
                }
                MetadataLocation::Postgres {
                    url: url.to_owned(),
                    pool_size: self.metadata_pool_size as usize,
                }
            }
            Some(other) => {
                return Err(invalid(
                    "metadata",
                    // The value may be a URL with a password in it: show its scheme only.
                    other.split(':').next().unwrap_or_default(),
                    "use `sled` or a `postgres://user:password@host:port/database` URL",
                ));
            }
        };
        Ok(ServerConfig {
            metadata,
            data_dir: self.data_dir,
            listen: self.listen,
            advertise: self.advertise,
            http_listen: self.http_listen,
            past_due_grace: Duration::from_secs(self.past_due_grace_secs),
            api_rate_limit: (self.api_rate_limit_per_minute > 0).then_some(
                crate::control::rate_limit::RateLimit {
                    per_minute: self.api_rate_limit_per_minute,
                    burst: self.api_rate_limit_burst.max(1),
                },
            ),
            blobs,
            tuning,
            limits: ServiceLimits {
                max_inflight_bytes: self.max_inflight_bytes,
                max_frame_len: self.max_frame_len,
                packing,
                gc,
                metering: self.metering,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            default_tenant: self.default_tenant,
            default_account: self.default_account,
            billing_lateness: Duration::from_secs(self.billing_lateness_secs),
            traffic_sync: if self.metering_fsync {
                crate::store::TrafficSync::Always
            } else {
                crate::store::TrafficSync::Interval(Duration::from_millis(50))
            },
        })
    }
}

impl ServerConfig {
    /// The `host:port` written into enrolment codes: `advertise`, else the listen address
    /// (`bound` when given: the address actually bound, for port 0).
    pub fn enrol_address(&self, bound: Option<SocketAddr>) -> Result<String, ConfigError> {
        if let Some(addr) = &self.advertise {
            return Ok(addr.clone());
        }
        let addr = bound.unwrap_or(self.listen);
        if addr.ip().is_unspecified() {
            return Err(invalid(
                "advertise",
                "(none)",
                format!(
                    "the server listens on {addr}, which devices cannot dial; give the address \
                     they should use with --advertise host:port"
                ),
            ));
        }
        Ok(addr.to_string())
    }
}

/// Tenant and account ids: 1..=64 bytes of `[A-Za-z0-9._-]`, so that they are safe in blob
/// keys and logs.
fn check_name(name: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value != "."
        && value != "..";
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            value,
            "use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        ))
    }
}

fn check_host_port(name: &'static str, value: &str) -> Result<(), ConfigError> {
    let port_ok = value
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then_some(port))
        .and_then(|port| port.parse::<u16>().ok())
        .is_some_and(|p| p != 0);
    if port_ok && value.len() <= 255 && !value.chars().any(char::is_whitespace) {
        Ok(())
    } else {
        Err(invalid(
            name,
            value,
            "write it as host:port, e.g. sync.example.com:7300 or 192.0.2.7:7300",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_from_file_and_text() {
        let s: ServerSettings = serde_json::from_str(r#"{"log_format": "json"}"#).unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(ServerSettings::default().log_format, LogFormat::Text);
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
        assert!(serde_json::from_str::<ServerSettings>(r#"{"log_format": "xml"}"#).is_err());
    }

    #[test]
    fn metadata_is_sled_or_a_postgres_url_with_shared_blobs() {
        assert_eq!(
            ServerSettings::default().validate().unwrap().metadata,
            MetadataLocation::Sled
        );
        let url = "postgres://dooz:s3cret@db.internal:5432/dooz";
        let mut s = ServerSettings {
            metadata: Some(url.to_owned()),
            ..ServerSettings::default()
        };
        // Each instance's default blob dir would be its own.
        let e = s.clone().validate().unwrap_err().to_string();
        assert!(e.contains("blobs") && e.contains("shares"), "{e}");
        s.blobs = Some("s3://bucket/dooz?endpoint=http://127.0.0.1:9000&region=x".to_owned());
        let config = s.clone().validate().unwrap();
        assert_eq!(
            config.metadata,
            MetadataLocation::Postgres {
                url: url.to_owned(),
                pool_size: 32
            }
        );
        // The password never shows in logs of the config.
        assert!(!format!("{config:?}").contains("s3cret"));
        s.metadata_pool_size = 1;
        assert!(s.clone().validate().is_err());
        s.metadata = Some("mysql://u:hunter2@h/db".to_owned());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("postgres://") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn defaults_validate() {
        let config = ServerSettings::default().validate().unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(
            config.past_due_grace,
            Duration::from_secs(DEFAULT_PAST_DUE_GRACE_SECS)
        );
        assert_eq!(config.tuning, TransportTuning::default());
        assert_eq!(config.limits, ServiceLimits::default());
        assert_eq!(
            config.blobs,
            BlobLocation::Dir(PathBuf::from(DEFAULT_DATA_DIR).join("blobs"))
        );
        assert_eq!(config.enrol_address(None).unwrap(), DEFAULT_LISTEN);
    }

    #[test]
    fn json_fills_missing_fields_with_defaults() {
        let s: ServerSettings =
            serde_json::from_str(r#"{"listen": "0.0.0.0:9000", "advertise": "h.example:9000"}"#)
                .unwrap();
        assert_eq!(s.max_frame_len, MAX_FRAME_LEN);
        let config = s.validate().unwrap();
        assert_eq!(config.enrol_address(None).unwrap(), "h.example:9000");
        assert!(serde_json::from_str::<ServerSettings>(r#"{"lisen": "x"}"#).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let cases: Vec<(&str, ServerSettings)> = vec![
            (
                "max_inflight_bytes",
                ServerSettings {
                    max_inflight_bytes: 1,
                    ..Default::default()
                },
            ),
            (
                "max_frame_len",
                ServerSettings {
                    max_frame_len: MAX_FRAME_LEN + 1,
                    ..Default::default()
                },
            ),
            (
                "keep_alive_secs",
                ServerSettings {
                    keep_alive_secs: 30,
                    ..Default::default()
                },
            ),
            (
                "default_tenant",
                ServerSettings {
                    default_tenant: "a/b".to_owned(),
                    ..Default::default()
                },
            ),
            (
                "advertise",
                ServerSettings {
                    advertise: Some("nohost".to_owned()),
                    ..Default::default()
                },
            ),
            (
                "max_streams_per_connection",
                ServerSettings {
                    max_streams_per_connection: 0,
                    ..Default::default()
                },
            ),
        ];
        for (name, settings) in cases {
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn wildcard_listen_needs_advertise() {
        let config = ServerSettings {
            listen: "0.0.0.0:7300".parse().unwrap(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let err = config.enrol_address(None).unwrap_err().to_string();
        assert!(err.contains("--advertise"), "{err}");
    }
}
