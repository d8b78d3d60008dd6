//! S3 and S3-compatible buckets, over `object_store`'s `AmazonS3`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, RetryConfig};
use url::Url;

use crate::{BlobKey, BlobStore, ObjectStoreBackend, Prefixed, StorageError};

/// The environment variables read for credentials a configuration does not carry.
const ENV_ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
const ENV_SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// The query parameters an `s3://` URL accepts, for error messages.
const S3_PARAMS: &str = "endpoint=URL, region=NAME, path_style=true|false, allow_http=true|false";

/// How long a connection attempt may take before the call fails as retryable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take (a 16 MiB pack on a slow link fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An access key pair for an S3 bucket. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id (`AKIA...`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// A long-lived key pair.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// The key pair in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN` if set), if both are set.
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let non_empty = |name| lookup(name).filter(|v| !v.is_empty());
        Some(Self {
            access_key_id: non_empty(ENV_ACCESS_KEY)?,
            secret_access_key: non_empty(ENV_SECRET_KEY)?,
            session_token: non_empty(ENV_SESSION_TOKEN),
        })
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where and how to reach an S3 or S3-compatible bucket: the typed form of an `s3://` URL, and
/// what a tenant-provided bucket is configured with.
///
/// Build one with [`S3Config::new`] and the `with_*` methods, or parse an `s3://` URL with
/// [`StorageUrl::parse`](crate::StorageUrl::parse); [`open`](Self::open) it.
///
/// ```
/// use dooz_storage::{S3Config, S3Credentials};
///
/// let config = S3Config::new("dooz-blobs")
///     .with_endpoint("http://127.0.0.1:9000")
///     .with_region("eu-west-1")
///     .with_credentials(S3Credentials::new("AKIAEXAMPLE", "secret"));
/// assert!(config.path_style);
/// assert!(!format!("{config:?}").contains("secret\""));
/// let store = config.open()?; // no request is made until the first call
/// # Ok::<(), dooz_storage::StorageError>(())
/// ```
///
/// # Durability and retries
///
/// A PUT that S3 answered is durable, so [`BlobStore::put_unsynced`] is a plain put and
/// [`BlobStore::sync`] reports nothing lost. The store makes one attempt per call (object_store's
/// own retries are off); wrap it in [`Retrying`](crate::Retrying) to retry transient failures.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct S3Config {
    /// The bucket's name.
    pub bucket: String,
    /// The region to sign requests for (`us-east-1` unless set; S3-compatible servers mostly
    /// accept any).
    pub region: String,
    /// The server's base URL (`http://127.0.0.1:9000`, `https://s3.example.com`); `None` for AWS
    /// itself.
    pub endpoint: Option<String>,
    /// Blobs live under this prefix in the bucket (`s3://bucket/prefix`); `None` for the
    /// bucket's root.
    pub prefix: Option<BlobKey>,
    /// Path-style requests (`endpoint/bucket/key`), which S3-compatible servers need; `true`
    /// unless set. With `false`, AWS virtual-hosted requests (`bucket.endpoint/key`); a custom
    /// endpoint must then already name the bucket.
    pub path_style: bool,
    /// Allow plain `http://` endpoints on hosts other than loopback (`127.0.0.1`, `::1`,
    /// `localhost`, always allowed). Off unless set: requests and blobs would cross the
    /// network unencrypted.
    pub allow_http: bool,
    /// The key pair; `None` reads `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` when opened.
    pub credentials: Option<S3Credentials>,
}

impl S3Config {
    /// A bucket on AWS in `us-east-1`, path-style, credentials from the environment.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: "us-east-1".to_owned(),
            endpoint: None,
            prefix: None,
            path_style: true,
            allow_http: false,
            credentials: None,
        }
    }

    /// Sets the server's base URL.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Keeps blobs under `prefix` in the bucket.
    pub fn with_prefix(mut self, prefix: BlobKey) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// Chooses path-style (`true`) or virtual-hosted (`false`) requests.
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = path_style;
        self
    }

    /// Allows plain `http://` to hosts other than loopback.
    pub fn with_allow_http(mut self, allow_http: bool) -> Self {
        self.allow_http = allow_http;
        self
    }

    /// Sets the key pair (instead of reading the environment).
    pub fn with_credentials(mut self, credentials: S3Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Parses `s3://bucket[/prefix][?endpoint=..&region=..&path_style=..&allow_http=..]`.
    pub(crate) fn from_url(input: &str, url: &Url) -> Result<Self, StorageError> {
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: input.to_owned(),
            reason,
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(format!(
                "credentials do not belong in the URL; set {ENV_ACCESS_KEY} and \
                 {ENV_SECRET_KEY} in the environment"
            )));
        }
        if url.fragment().is_some() || url.port().is_some() {
            return Err(invalid(
                "write s3://bucket/prefix, with the server in ?endpoint=http://host:port"
                    .to_owned(),
            ));
        }
        let bucket = url.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(invalid(
                "it names no bucket; write s3://bucket/prefix".to_owned(),
            ));
        }
        let mut config = Self::new(bucket);
        let prefix = url.path().trim_matches('/');
        if !prefix.is_empty() {
            let prefix = BlobKey::new(prefix)
                .map_err(|e| invalid(format!("the prefix is not a valid blob key: {e}")))?;
            config.prefix = Some(prefix);
        }
        let flag = |name: &str, value: &str| match value {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(invalid(format!("{name}={value:?}: write true or false"))),
        };
        for (name, value) in url.query_pairs() {
            match &*name {
                "endpoint" => config.endpoint = Some(value.into_owned()),
                "region" => config.region = value.into_owned(),
                "path_style" => config.path_style = flag(&name, &value)?,
                "allow_http" => config.allow_http = flag(&name, &value)?,
                other => {
                    return Err(invalid(format!(
                        "unknown parameter {other:?}; s3:// URLs take {S3_PARAMS}"
                    )));
                }
            }
        }
        config.check().map_err(|e| match e {
            StorageError::InvalidConfig { reason } => invalid(reason),
            other => other,
        })?;
        Ok(config)
    }

    /// Checks the configuration without contacting the server.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidConfig`] for an empty or malformed bucket name or region, an
    /// endpoint that is not an `http(s)://` URL, or plain http to a remote host without
    /// [`allow_http`](Self::allow_http).
    pub fn check(&self) -> Result<(), StorageError> {
        let invalid = |reason: String| Err(StorageError::InvalidConfig { reason });
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !bucket_ok {
            return invalid(format!(
                "S3 bucket name {:?} is not valid: 3 to 63 characters of a-z 0-9 '.' '-' '_'",
                self.bucket
            ));
        }
        if self.region.is_empty() {
            return invalid("the S3 region is empty; us-east-1 suits most servers".to_owned());
        }
        if let Some(endpoint) = &self.endpoint {
            let url = Url::parse(endpoint).map_err(|e| StorageError::InvalidConfig {
                reason: format!(
                    "S3 endpoint {endpoint:?} is not a URL ({e}); write http(s)://host:port"
                ),
            })?;
            match url.scheme() {
                "https" => {}
                "http" if self.allow_http || is_loopback(&url) => {}
                "http" => {
                    return invalid(format!(
                        "S3 endpoint {endpoint:?} is plain http to a remote host; use https, \
                         or allow it explicitly (allow_http=true)"
                    ));
                }
                other => {
                    return invalid(format!(
                        "S3 endpoint {endpoint:?} has scheme {other:?}; write http(s)://host:port"
                    ));
                }
            }
            if url.host_str().is_none_or(str::is_empty) {
                return invalid(format!("S3 endpoint {endpoint:?} names no host"));
            }
        }
        Ok(())
    }

    /// Opens the bucket (under [`prefix`](Self::prefix), if set). Makes no request: a missing
    /// bucket or wrong credentials show on the first call, or at once with
    /// [`validate`](fn@crate::validate).
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidConfig`] if [`check`](Self::check) fails or there are no
    /// credentials (neither in the configuration nor in the environment).
    pub fn open(&self) -> Result<Arc<dyn BlobStore>, StorageError> {
        let backend = self.open_bucket()?;
        Ok(match &self.prefix {
            Some(prefix) => Arc::new(Prefixed::new(backend, prefix.clone())),
            None => Arc::new(backend),
        })
    }

    /// Opens the whole bucket, ignoring [`prefix`](Self::prefix).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_bucket(&self) -> Result<ObjectStoreBackend, StorageError> {
        self.check()?;
        let credentials = self.credentials(|name| std::env::var(name).ok())?;
        let endpoint_is_http = self
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http:"));
        let client = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_allow_http(endpoint_is_http);
        // One attempt per call: `Retrying` owns retries, with its own bound.
        let retry = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_allow_http(endpoint_is_http)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| StorageError::InvalidConfig {
            reason: format!("cannot set up S3 bucket {:?}: {e}", self.bucket),
        })?;
        Ok(ObjectStoreBackend::new(Arc::new(store)))
    }
}

impl S3Config {
    /// The configured key pair, or the one in the environment `lookup` reads.
    fn credentials(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Credentials, StorageError> {
        match &self.credentials {
            Some(c) => Ok(c.clone()),
            None => S3Credentials::from_lookup(lookup).ok_or_else(|| StorageError::InvalidConfig {
                reason: format!(
                    "no credentials for S3 bucket {:?}: configure an access key and secret, or \
                     set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}",
                    self.bucket
                ),
            }),
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<S3Config, StorageError> {
        S3Config::from_url(url, &Url::parse(url).unwrap())
    }

    fn reason(url: &str) -> String {
        match parse(url) {
            Err(StorageError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_urls() {
        let c = parse(
            "s3://blobs/tenants/eu?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true",
        )
        .unwrap();
        assert_eq!(c.bucket, "blobs");
        assert_eq!(c.prefix.as_ref().map(BlobKey::as_str), Some("tenants/eu"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "eu-west-1");
        assert!(c.path_style && !c.allow_http && c.credentials.is_none());

        let c = parse("s3://blobs").unwrap();
        assert_eq!(c, S3Config::new("blobs"));
        let c = parse("s3://blobs/?path_style=false").unwrap();
        assert!(c.prefix.is_none() && !c.path_style);
        let c = parse("s3://blobs?endpoint=http://minio.lan:9000&allow_http=true").unwrap();
        assert!(c.allow_http);
    }

    #[test]
    fn rejects_bad_urls_and_configs() {
        assert!(reason("s3://ak:sk@blobs").contains("AWS_ACCESS_KEY_ID"));
        assert!(reason("s3://blobs?colour=red").contains("endpoint=URL"));
        assert!(reason("s3://blobs?path_style=maybe").contains("true or false"));
        assert!(reason("s3://blobs/a//b").contains("prefix"));
        assert!(reason("s3://Bad_Bucket").contains("bucket name"));
        assert!(reason("s3://blobs?endpoint=http://s3.example.com").contains("allow_http"));
        assert!(reason("s3://blobs?endpoint=ftp://127.0.0.1").contains("scheme"));
        assert!(reason("s3://blobs?endpoint=nope").contains("not a URL"));
        assert!(reason("s3://blobs?region=").contains("region"));
        assert!(reason("s3://blobs:9000").contains("endpoint="));
    }

    #[test]
    fn credentials_come_from_config_or_env_and_stay_secret() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = S3Credentials::from_lookup(env(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
        ]))
        .unwrap();
        assert_eq!(c, S3Credentials::new("AK", "SK"));
        assert!(S3Credentials::from_lookup(env(&[("AWS_ACCESS_KEY_ID", "AK")])).is_none());
        assert!(
            S3Credentials::from_lookup(env(&[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "")
            ]))
            .is_none()
        );

        let err = S3Config::new("blobs").credentials(env(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{err}"
        );
        let given = S3Credentials::new("mine", "own");
        let config = S3Config::new("blobs").with_credentials(given.clone());
        let env_pair = env(&[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")]);
        assert_eq!(config.credentials(env_pair).unwrap(), given);

        let config = S3Config::new("blobs")
            .with_endpoint("http://127.0.0.1:1")
            .with_credentials(S3Credentials::new("AK", "very-secret"));
        let shown = format!("{config:?}");
        assert!(
            shown.contains("AK") && !shown.contains("very-secret"),
            "{shown}"
        );
        // Opening makes no request, so it works with nothing listening.
        config.open().unwrap();
    }
}
