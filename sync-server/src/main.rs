//! `dooz-server`: the Dooz Sync server.
//!
//! ```text
//! dooz-server [serve] [--data-dir DIR] [--listen ADDR] [--http-listen ADDR]
//!             [--advertise HOST:PORT] [--config FILE]
//! dooz-server admin enrol-code [--reusable] [--expires 1h] [--data-dir DIR]
//! dooz-server admin tenant-create NAME [--scopes admin,devices,usage:read] [--data-dir DIR]
//! dooz-server admin reset-admin-token [--data-dir DIR]
//! ```
//!
//! Runs with embedded defaults and no set-up: the first start makes the data dir, the metadata
//! store, the local blob store, the TLS identity and a default tenant and account, and prints
//! the control plane's admin token once (unless `DOOZ_ADMIN_TOKEN` sets it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use dooz_server::config::{DEFAULT_DATA_DIR, LogFormat, ServerConfig, ServerSettings};
use dooz_server::control::{
    ApiParts, CONTROL_DIR, ControlPolicy, ControlStore, EnrolTarget, Secret, ensure_admin_token,
};
use dooz_server::service::{Bootstrap, Server, ServerParts, mint_enrolment_code};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "dooz-server",
    version,
    about = "Dooz Sync server: end-to-end encrypted sync over QUIC",
    long_about = "Dooz Sync server: end-to-end encrypted sync over QUIC.\n\n\
                  With no command it serves: `dooz-server` alone starts on embedded defaults \
                  (data in ./dooz-data, listening on 127.0.0.1:7300)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct Global {
    /// Data directory: metadata store, blobs, TLS identity [default: ./dooz-data]
    #[arg(long, global = true, env = "DOOZ_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// JSON config file; flags and environment variables override it
    #[arg(long, global = true, env = "DOOZ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on [default: 127.0.0.1:7300]
    #[arg(long, global = true, env = "DOOZ_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TCP address of the control-plane HTTP API (/v1) [default: 127.0.0.1:7071]
    #[arg(long, global = true, env = "DOOZ_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Address devices dial, written into enrolment codes [default: the listen address]
    #[arg(long, global = true, env = "DOOZ_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Metadata store: sled, or a postgres:// URL that several servers share [default: sled]
    #[arg(long, global = true, env = "DOOZ_METADATA", value_name = "URL")]
    metadata: Option<String>,
    /// Log format on stderr: text or json [default: text]
    #[arg(long, global = true, env = "DOOZ_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default)
    Serve,
    /// Administer the server (works whether it is running or not)
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print metered usage (docs/METERING.md), from the running server or its stopped data dir
    Usage(UsageArgs),
    /// Copy a stopped single-node server's metadata from sled into an empty PostgreSQL
    /// database, then verify it table by table (row counts and checksums)
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// The sled store: sled:DIR, DIR being the server's data dir (or its meta/ dir)
    #[arg(long, value_name = "sled:DIR")]
    from: String,
    /// The PostgreSQL database: postgres://user:password@host:port/database
    #[arg(long, value_name = "URL")]
    to: String,
}

#[derive(Debug, Args)]
struct UsageArgs {
    /// Tenant id or name [default: every tenant]
    #[arg(long)]
    tenant: Option<String>,
    /// Start: unix seconds, 2026-11-01 or 2026-11-01T00:00:00Z [default: start of this month]
    #[arg(long)]
    from: Option<String>,
    /// End, excluded, as --from [default: now]
    #[arg(long)]
    to: Option<String>,
    /// hour, day or month [default: hour]
    #[arg(long)]
    window: Option<String>,
    /// account, vault or device [default: one row per tenant]
    #[arg(long)]
    group_by: Option<String>,
    /// csv or json [default: json]
    #[arg(long)]
    format: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Mint an enrolment code: give it to the person enrolling a device (`dooz enroll <code>`)
    EnrolCode {
        /// Let the code enrol any number of devices until it expires (default: one device)
        #[arg(long)]
        reusable: bool,
        /// How long the code is valid: a number with s, m, h or d (e.g. 90s, 15m, 1h, 7d)
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Make a tenant and print its first API key (server stopped; else use the HTTP API)
    TenantCreate {
        /// The tenant's name, unique on the server
        name: String,
        /// Scopes of the key, comma-separated: admin, devices, usage:read
        #[arg(long, default_value = "admin", value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Replace the control plane's admin token with a new one and print it (server stopped)
    ResetAdminToken,
}

/// Longest validity of an enrolment code.
const MAX_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration: write a number with s, m, h or d, e.g. 1h");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let duration = Duration::from_secs(n.saturating_mul(unit_secs));
    if duration.is_zero() || duration > MAX_EXPIRY {
        return Err(format!("{text:?}: give a duration between 1s and 365d"));
    }
    Ok(duration)
}

impl Global {
    /// Settings: the config file (or the defaults), then environment and flags on top.
    fn settings(&self) -> anyhow::Result<ServerSettings> {
        let mut settings = match &self.config {
            Some(path) => ServerSettings::from_json_file(path)?,
            None => ServerSettings::default(),
        };
        if let Some(dir) = &self.data_dir {
            settings.data_dir = dir.clone();
        }
        if let Some(listen) = self.listen {
            settings.listen = listen;
        }
        if let Some(http_listen) = self.http_listen {
            settings.http_listen = http_listen;
        }
        if let Some(advertise) = &self.advertise {
            settings.advertise = Some(advertise.clone());
        }
        if let Some(metadata) = &self.metadata {
            settings.metadata = Some(metadata.clone());
        }
        if let Some(format) = self.log_format {
            settings.log_format = format;
        }
        Ok(settings)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.global.settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,quinn=warn,quinn_proto=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        _ => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: ServerSettings) -> anyhow::Result<()> {
    let config = settings.validate()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Admin {
            command: AdminCommand::EnrolCode { reusable, expires },
        } => enrol_code(&config, reusable, expires).await,
        Command::Admin {
            command: AdminCommand::TenantCreate { name, scopes },
        } => tenant_create(&config, &name, &scopes).await,
        Command::Admin {
            command: AdminCommand::ResetAdminToken,
        } => reset_admin_token(&config).await,
        Command::Usage(args) => usage(&config, args).await,
        Command::Migrate(args) => migrate(args).await,
    }
}

fn open_context(config: &ServerConfig) -> String {
    format!(
        "could not open the server's data in {}",
        config.data_dir.display()
    )
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let (mut parts, bootstrap) = ServerParts::open(&config)
        .await
        .with_context(|| open_context(&config))?;
    let control = ControlStore::open(config.data_dir.join(CONTROL_DIR))
        .with_context(|| open_context(&config))?;
    let operator_token = std::env::var("DOOZ_ADMIN_TOKEN").ok();
    let new_admin_token = ensure_admin_token(&control, operator_token.as_deref()).await?;
    let policy = ControlPolicy::new(control.clone(), config.past_due_grace.as_secs());
    parts.policy = Arc::new(policy.clone());
    let store = parts.store.clone();
    let server = Arc::new(Server::start(parts)?);
    let data_plane: Arc<dyn dooz_server::control::DataPlane> = server.clone();
    let own_storage = dooz_server::control::storage::restore(&control, &data_plane)
        .await
        .context("could not restore the tenants' own storage settings")?;
    if own_storage > 0 {
        tracing::info!(tenants = own_storage, "tenants with storage of their own");
    }
    let address = match config.enrol_address(Some(server.local_addr())) {
        Ok(address) => Some(address),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    let cancel = server.shutdown_token();
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| {
            format!(
                "could not listen on {} for the control plane; pick another address with \
                 --http-listen",
                config.http_listen
            )
        })?;
    let http_addr = listener.local_addr()?;
    let webhooks = tokio::spawn(policy.webhooks().clone().run(store.clone(), cancel.clone()));
    let router = dooz_server::control::router(ApiParts {
        meta: store.clone(),
        control,
        data_plane: server.clone(),
        policy,
        enrol: address.clone().map(|address| EnrolTarget {
            address,
            fingerprint: server.fingerprint().to_owned(),
        }),
        rate_limit: config.api_rate_limit,
        billing_lateness: config.billing_lateness,
    });
    let http = tokio::spawn(dooz_server::control::serve(
        listener,
        router,
        cancel.clone(),
    ));
    #[cfg(unix)]
    let admin = {
        let path = config
            .data_dir
            .join(dooz_server::service::ADMIN_SOCKET_FILE);
        let (store, account, address) = (store.clone(), bootstrap.account.id, address.clone());
        let (fingerprint, cancel) = (server.fingerprint().to_owned(), cancel.clone());
        // Bound before the banner, so a CLI call made as soon as the banner shows reaches the
        // running server instead of finding its data dir locked.
        match dooz_server::service::AdminSocket::bind(&path).await {
            Ok(socket) => Some(tokio::spawn(socket.serve(
                store,
                account,
                address,
                fingerprint,
                cancel,
            ))),
            Err(e) => {
                tracing::warn!(
                    "admin socket {} unavailable ({e}); stop the server to mint enrolment codes",
                    path.display()
                );
                None
            }
        }
    };
    let first_code = match (&address, bootstrap.first_start) {
        (Some(address), true) => Some(
            mint_enrolment_code(
                store.as_ref(),
                bootstrap.account.id,
                address,
                server.fingerprint(),
                false,
                Duration::from_secs(3600),
            )
            .await?,
        ),
        _ => None,
    };
    print_banner(&config, &server, &bootstrap, first_code.as_ref(), &|| {
        print_control_plane(http_addr, new_admin_token.as_ref());
    });

    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutdown requested"),
        () = cancel.cancelled() => {}
    }
    eprintln!("dooz-server: shutting down (finishing requests in flight) ...");
    cancel.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the control plane stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the control plane task failed"),
    }
    if let Err(e) = webhooks.await {
        tracing::warn!(error = %e, "the webhook task failed");
    }
    // The API has stopped, so its handle on the server is gone.
    match Arc::try_unwrap(server) {
        Ok(server) => server.shutdown().await,
        Err(_) => tracing::warn!("the data plane is still referenced; not waiting for it"),
    }
    #[cfg(unix)]
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    eprintln!("dooz-server: stopped");
    Ok(())
}

fn print_banner(
    config: &ServerConfig,
    server: &Server,
    bootstrap: &Bootstrap,
    first_code: Option<&dooz_server::service::EnrolmentCode>,
    control_plane: &dyn Fn(),
) {
    let data_dir = config.data_dir.display();
    let dir_flag = if config.data_dir == std::path::Path::new(DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {data_dir}")
    };
    println!(
        "dooz-server {} listening on {} (QUIC, ALPN dooz/1)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    println!("  data dir:                {data_dir}");
    println!("  certificate fingerprint: {}", server.fingerprint());
    println!(
        "  devices enrol into:      tenant {:?}, account {:?}",
        bootstrap.tenant.name, bootstrap.account.name
    );
    println!();
    if let Some(code) = first_code {
        println!("First start. Enrol a first device with this code (one device, valid 1 hour):");
        println!();
        println!("    dooz enroll {code}");
        println!();
    }
    println!("To enrol a device, mint a code (in another terminal) and run `dooz enroll <code>`");
    println!("on the device:");
    println!();
    println!("    dooz-server admin enrol-code{dir_flag}              # one device, valid 1 hour");
    println!("    dooz-server admin enrol-code{dir_flag} --reusable --expires 7d");
    println!();
    control_plane();
    println!("Press Ctrl-C to stop.");
}

fn print_control_plane(addr: SocketAddr, new_admin_token: Option<&Secret>) {
    println!("Control plane (HTTP API): http://{addr}/v1  (docs/CONTROL-PLANE.md)");
    if let Some(token) = new_admin_token {
        println!();
        println!("First start. The operator's admin token, shown this once (only its hash is");
        println!("kept; set DOOZ_ADMIN_TOKEN to replace it):");
        println!();
        println!("    {}", token.expose());
    }
    println!();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn enrol_code(
    config: &ServerConfig,
    reusable: bool,
    expires: Duration,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use dooz_server::service::{ADMIN_SOCKET_FILE, AdminRequest, AdminResponse, admin_call};
        let path = config.data_dir.join(ADMIN_SOCKET_FILE);
        let request = AdminRequest::EnrolCode {
            reusable,
            expires_secs: expires.as_secs(),
        };
        let answer = admin_call(&path, &request).await.with_context(|| {
            format!(
                "could not ask the running server through {}",
                path.display()
            )
        })?;
        match answer {
            Some(AdminResponse::EnrolCode { code }) => {
                print_code(&code, reusable, expires);
                return Ok(());
            }
            Some(AdminResponse::Error { message }) => bail!("the server refused: {message}"),
            Some(other) => bail!("unexpected answer from the server: {other:?}"),
            None => {}
        }
    }
    // No server is running on this data dir: use the store directly.
    let (parts, bootstrap) = ServerParts::open(config)
        .await
        .with_context(|| open_context(config))?;
    let address = config.enrol_address(None)?;
    let code = mint_enrolment_code(
        parts.store.as_ref(),
        bootstrap.account.id,
        &address,
        parts.identity.fingerprint(),
        reusable,
        expires,
    )
    .await?;
    print_code(&code.to_string(), reusable, expires);
    Ok(())
}

async fn usage(config: &ServerConfig, args: UsageArgs) -> anyhow::Result<()> {
    let request = dooz_server::metering::RenderRequest {
        tenant: args.tenant,
        from: args.from,
        to: args.to,
        window: args.window,
        group_by: args.group_by,
        format: args.format,
    };
    #[cfg(unix)]
    {
        use dooz_server::service::{ADMIN_SOCKET_FILE, AdminRequest, AdminResponse, admin_call};
        let path = config.data_dir.join(ADMIN_SOCKET_FILE);
        let answer = admin_call(&path, &AdminRequest::Usage(request.clone()))
            .await
            .with_context(|| {
                format!(
                    "could not ask the running server through {}",
                    path.display()
                )
            })?;
        match answer {
            Some(AdminResponse::Usage { text }) => {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                return Ok(());
            }
            Some(AdminResponse::Error { message }) => bail!("{message}"),
            Some(other) => bail!("unexpected answer from the server: {other:?}"),
            None => {}
        }
    }
    // No server is running on this data dir: read the store directly.
    let meta = dooz_server::SledStore::open(config.data_dir.join(dooz_server::service::STORE_DIR))
        .with_context(|| open_context(config))?;
    let text = dooz_server::metering::render(&meta, &request, unix_now()).await?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the control store of a stopped server.
fn open_control(config: &ServerConfig) -> anyhow::Result<ControlStore> {
    ControlStore::open(config.data_dir.join(CONTROL_DIR)).with_context(|| {
        format!(
            "could not open the control store in {} (stop the server first, or use the HTTP API \
             with the admin token)",
            config.data_dir.display()
        )
    })
}

async fn tenant_create(config: &ServerConfig, name: &str, scopes: &[String]) -> anyhow::Result<()> {
    let scopes = scopes
        .iter()
        .map(|s| {
            serde_json::from_value(serde_json::Value::String(s.trim().to_owned())).map_err(|_| {
                anyhow::anyhow!("unknown scope {s:?}: use admin, devices or usage:read")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let control = open_control(config)?;
    let meta = dooz_server::SledStore::open(config.data_dir.join(dooz_server::service::STORE_DIR))
        .with_context(|| open_context(config))?;
    let (tenant, key, secret) =
        dooz_server::control::create_tenant_with_key(&meta, &control, name, scopes).await?;
    eprintln!(
        "Tenant {name:?} made (id {tenant}). Its API key (id {}), shown this once; use it as \
         Authorization: Bearer <key> on /v1/tenants/{tenant}/...:",
        key.id
    );
    println!("{}", secret.expose());
    Ok(())
}

/// `dooz-server migrate`: sled to PostgreSQL, verified.
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Some(dir) = args.from.strip_prefix("sled:") else {
        anyhow::bail!(
            "--from {:?}: give the sled store as sled:DIR (the server's data dir)",
            args.from
        );
    };
    let dir = PathBuf::from(dir);
    let meta = if dir.join(dooz_server::service::STORE_DIR).is_dir() {
        dir.join(dooz_server::service::STORE_DIR)
    } else {
        dir.clone()
    };
    if !meta.join("conf").is_file() {
        anyhow::bail!(
            "no sled store in {} (expected a server data dir with a meta/ directory)",
            dir.display()
        );
    }
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        anyhow::bail!("--to: give a postgres://user:password@host:port/database URL");
    }
    let from = dooz_server::SledStore::open(&meta).with_context(|| {
        format!(
            "could not open the sled store in {} (stop the server that uses it first)",
            meta.display()
        )
    })?;
    let to = dooz_server::PgStore::connect(&args.to, 4)
        .await
        .context("could not connect to PostgreSQL")?;
    eprintln!("Copying {} into PostgreSQL ...", meta.display());
    // One line per table, its row count rewritten in place as rows go in.
    let current = std::sync::Mutex::new(String::new());
    let progress = |table: &str, rows: u64| {
        let mut current = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        if *current != table {
            if !current.is_empty() {
                let _ = writeln!(err);
            }
            table.clone_into(&mut current);
        }
        let _ = write!(err, "\r  {table:<14} {rows:>12} rows");
        let _ = err.flush();
    };
    let report = dooz_server::migrate_sled_to_postgres(&from, &to, &progress).await?;
    eprintln!();
    println!(
        "{:<14} {:>12} {:>12}  checksum",
        "table", "sled", "postgres"
    );
    let mut rows = 0u64;
    for (table, exported, read_back) in &report.tables {
        let mark = if exported == read_back {
            "ok"
        } else {
            "MISMATCH"
        };
        println!(
            "{table:<14} {:>12} {:>12}  {}  {mark}",
            exported.rows,
            read_back.rows,
            exported.checksum_hex().get(..16).unwrap_or_default()
        );
        rows += exported.rows;
    }
    if !report.verified() {
        anyhow::bail!(
            "verification failed: PostgreSQL does not hold what sled does (see MISMATCH \
             above); drop its tables and migrate again"
        );
    }
    println!(
        "Verified: {rows} rows in {} tables. Start the servers with --metadata <the URL>.",
        report.tables.len()
    );
    Ok(())
}

async fn reset_admin_token(config: &ServerConfig) -> anyhow::Result<()> {
    let control = open_control(config)?;
    let secret = dooz_server::control::reset_admin_token(&control).await?;
    eprintln!("New admin token, shown this once (the old one no longer works):");
    println!("{}", secret.expose());
    Ok(())
}

fn print_code(code: &str, reusable: bool, expires: Duration) {
    let devices = if reusable {
        "any number of devices"
    } else {
        "one device"
    };
    eprintln!(
        "Enrolment code for {devices}, valid {}. On the device, run: dooz enroll <code>",
        humanize(expires)
    );
    println!("{code}");
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{} day(s)", s / 86_400),
        s if s % 3600 == 0 => format!("{} hour(s)", s / 3600),
        s if s % 60 == 0 => format!("{} minute(s)", s / 60),
        s => format!("{s} second(s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        for bad in ["", "h", "1w", "0s", "400d", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from(["dooz-server"]).unwrap();
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from([
            "dooz-server",
            "admin",
            "enrol-code",
            "--reusable",
            "--expires",
            "2h",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(matches!(
            cli.command,
            Some(Command::Admin {
                command: AdminCommand::EnrolCode { reusable: true, .. }
            })
        ));
    }
}
