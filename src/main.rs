//! The `logbridge` binary: parse the command line, load the config, run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use logbridge::auth::{NewKey, Scope, add_key, ensure_keys_file, load_keys, revoke_key};
use logbridge::config::Config;
use logbridge::emit::{EmitOptions, emit};
use logbridge::lifecycle::snapshot;
use logbridge::server::{self, Listeners};
use tracing_subscriber::EnvFilter;

// Ingest allocates and frees many small buffers per record; mimalloc does that markedly faster
// than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "logbridge",
    version,
    about = "OpenTelemetry-native activity-log collector and audit API"
)]
struct Cli {
    /// Config file (default: config/logbridge.toml when it exists, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Send simulated activity logs over OTLP with the OpenTelemetry SDK.
    Emit(EmitArgs),
    /// Copy the committed state of the index (of a running server too) to a new folder, with
    /// hard links where the file system allows; `serve` with `index.path` set to it starts from it.
    Snapshot {
        /// The new folder (absent or empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Cluster mode: act on the cluster the config's `[cluster]` section names.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Spread a very large user's logs over several shards, from a cut-over time on (by the
    /// logs' timestamps). Reads of the user then gather from all of them.
    Spread {
        #[arg(long)]
        user: String,
        /// Shards to spread over (the user's own and the ones after it); more than before.
        #[arg(long)]
        shards: u32,
        /// The cut-over, RFC 3339, at least a minute ahead so that every gateway knows it first.
        #[arg(long, value_name = "TIME")]
        from: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key, append its hash to the keys file and print the secret once.
    Add {
        /// The user the key reads (and ingests) for.
        #[arg(long)]
        user: String,
        /// Comma-separated scopes: read, ingest, delete, alerts.
        #[arg(long, value_delimiter = ',', default_value = "read")]
        scope: Vec<String>,
        /// A name for operators, unique in the keys file (default: the user and scopes).
        #[arg(long)]
        name: Option<String>,
        /// When the key stops working, RFC 3339 (e.g. 2027-01-31T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// List the keys: names, users, scopes and expiry; never secrets.
    List,
    /// Remove a key from the keys file; a running server stops accepting it within 2 seconds.
    Revoke {
        /// The key's name, as `keys list` shows it.
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[value(name = "http/json")]
    HttpJson,
}

#[derive(clap::Args)]
struct EmitArgs {
    /// OTLP protocol (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc).
    #[arg(long, value_enum, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    protocol: Option<ProtocolArg>,
    /// Base URL of the receiver, e.g. http://127.0.0.1:4317 (default: OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    endpoint: Option<String>,
    /// API key with the ingest scope (default: LOGBRIDGE_KEY, else OTEL_EXPORTER_OTLP_HEADERS).
    /// A key given here shows in `ps`: prefer LOGBRIDGE_KEY or --key-file.
    #[arg(long, env = "LOGBRIDGE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Read the API key from this file (its first line), so it shows neither in `ps` nor in
    /// the environment; takes precedence over --key and LOGBRIDGE_KEY.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Number of activity logs to send.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Set the user.id attribute (for platform keys without a user).
    #[arg(long)]
    user: Option<String>,
    /// Seed of the simulated traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compress exports with gzip.
    #[arg(long)]
    gzip: bool,
}

fn keys(keys_file: &Path, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Add {
            user,
            scope,
            name,
            expires_at,
        } => {
            let scopes = scope
                .iter()
                .map(|s| {
                    Scope::parse(s.trim()).with_context(|| {
                        format!("unknown scope {s:?} (expected read, ingest, delete, alerts)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let expires_at = expires_at
                .map(|text| {
                    DateTime::parse_from_rfc3339(&text)
                        .map(|time| time.to_utc())
                        .with_context(|| {
                            format!("--expires-at {text:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z")
                        })
                })
                .transpose()?;
            let name = name.unwrap_or_else(|| format!("{user} ({})", scope.join(",")));
            let secret = add_key(
                keys_file,
                &NewKey {
                    name,
                    user_id: user,
                    scopes,
                    expires_at,
                },
            )?;
            eprintln!(
                "added a key to {}; its secret is shown only once:",
                keys_file.display()
            );
            println!("{}", secret.expose());
        }
        KeysCommand::List => {
            let now = Utc::now();
            println!("NAME\tUSER\tSCOPES\tEXPIRES");
            for key in load_keys(keys_file)? {
                let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
                let expires = match key.expires_at {
                    None => "never".to_owned(),
                    Some(at) => {
                        let time = at.to_rfc3339_opts(SecondsFormat::Secs, true);
                        if at <= now {
                            format!("{time} (expired)")
                        } else {
                            time
                        }
                    }
                };
                println!(
                    "{}\t{}\t{}\t{expires}",
                    key.name,
                    key.user_id.as_deref().unwrap_or("(any, from user.id)"),
                    scopes.join(","),
                );
            }
        }
        KeysCommand::Revoke { name } => {
            revoke_key(keys_file, &name)?;
            eprintln!("revoked key {name:?} in {}", keys_file.display());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    server::install_provider();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = load_config(cli.config)?;
            init_tracing(&config.log.level);
            runtime.block_on(serve(config))
        }
        Command::Keys { command } => {
            let config = load_config(cli.config)?;
            keys(&config.auth.keys_file, command)
        }
        Command::Cluster {
            command: ClusterCommand::Spread { user, shards, from },
        } => {
            let config = load_config(cli.config)?;
            let Some(cluster) = &config.cluster else {
                anyhow::bail!(
                    "the config has no [cluster] role: this is not a cluster node's config"
                );
            };
            let from = chrono::DateTime::parse_from_rfc3339(&from)
                .with_context(|| format!("--from {from:?} is not an RFC 3339 time"))?;
            let from = u64::try_from(from.timestamp_nanos_opt().unwrap_or(-1))
                .map_err(|_| anyhow::anyhow!("--from must be after 1970 and before 2262"))?;
            let spreads =
                runtime.block_on(logbridge::cluster::spread(cluster, &user, shards, from))?;
            for spread in spreads {
                println!(
                    "{user}: logs stamped from {} on spread over {} shards",
                    chrono::DateTime::from_timestamp_nanos(spread.from as i64).to_rfc3339(),
                    spread.shards
                );
            }
            Ok(())
        }
        Command::Snapshot { to } => {
            let config = load_config(cli.config)?;
            let report = snapshot(&config.index.path, &to)?;
            println!(
                "snapshot of {} logs (through sequence {}) in {}: {} files linked, {} copied",
                report.logs,
                report.last_seq,
                to.display(),
                report.linked,
                report.copied
            );
            Ok(())
        }
        Command::Emit(args) => {
            init_tracing("warn");
            let key = match &args.key_file {
                Some(path) => Some(read_key_file(path)?),
                None => args.key,
            };
            let options = EmitOptions {
                protocol: match args.protocol.unwrap_or(ProtocolArg::Grpc) {
                    ProtocolArg::Grpc => opentelemetry_otlp::Protocol::Grpc,
                    ProtocolArg::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
                    ProtocolArg::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                },
                endpoint: args.endpoint,
                key,
                count: args.count,
                user: args.user,
                seed: args.seed,
                gzip: args.gzip,
            };
            runtime.block_on(emit(&options))?;
            eprintln!("sent {} activity logs", options.count);
            Ok(())
        }
    }
}

/// The key in the first line of a key file.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    let key = text.lines().next().unwrap_or_default().trim();
    anyhow::ensure!(!key.is_empty(), "the key file {} is empty", path.display());
    Ok(key.to_owned())
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Ok(Config::load(path.as_deref(), &env)?)
}

fn init_tracing(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if let Some(secret) = ensure_keys_file(&config.auth.keys_file)? {
        eprintln!(
            "\nNo keys file was found, so {} was created with one key for user \"default\"\n\
             (scopes read and ingest). Its secret is shown only this once:\n\n    {}\n",
            config.auth.keys_file.display(),
            secret.expose()
        );
    }
    let listeners = Listeners::bind(&config).await?;
    if let Some(cluster) = &config.cluster {
        let node = server::start_cluster(&config, cluster, listeners).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        return Ok(());
    }
    let mut running = server::start(&config, listeners).await?;
    let writer_died = tokio::select! {
        () = shutdown_signal() => None,
        reason = running.writer_died() => Some(reason),
    };
    match &writer_died {
        None => tracing::info!("shutting down"),
        Some(reason) => tracing::error!(
            reason = %reason,
            "logbridge cannot ingest any more; stopping so that a supervisor restarts it"
        ),
    }
    running.shutdown().await;
    match writer_died {
        None => Ok(()),
        Some(reason) => anyhow::bail!("the index writer stopped: {reason}"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
