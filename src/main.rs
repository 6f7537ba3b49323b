//! The cachegate binary: CLI, logging, config, run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Exit code for a configuration that does not load (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

/// A TLS-terminating proxy for Redis with AUTH tokens and a command policy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Validate the configuration and exit (0 if valid, 64 if not).
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The options of running (and checking) the proxy; `bench` has its own.
#[derive(clap::Args, Debug, Default)]
struct Common {
    /// Configuration file (TOML). Without it, the embedded default runs: TLS on
    /// 127.0.0.1:6380 in front of Redis on 127.0.0.1:6379, with dev certificates.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run {
        #[command(flatten)]
        common: Common,
    },
    /// Validate the configuration and exit (0 if valid, 64 if not).
    Check {
        #[command(flatten)]
        common: Common,
        /// Certificate, key, CA and CRL files that do not exist here are listed, not errors
        /// (to check a config written for another machine, such as the shipped examples).
        #[arg(long)]
        allow_missing_files: bool,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// At-rest encryption keys of the configured listeners: status, rotate (a new primary
    /// data key), rotate-root (every data key re-wrapped under a new root key). Running
    /// cachegates take the result at their next reload.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        common: Common,
        /// Only this listener (default: every listener with encryption).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Ask a running cachegate to reload its configuration (POST /reload on its loopback admin
    /// listener; SIGHUP does the same): prints the outcome, exit 0 if it was reloaded.
    Reload {
        /// The admin listener's address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: std::net::SocketAddr,
    },
    /// Ask a running cachegate's admin listener whether it is live (exit 0 if /live answers
    /// 200): the container image's HEALTHCHECK, without curl.
    Live {
        /// The admin listener's address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: std::net::SocketAddr,
    },
    /// Generate load against a Redis or memcached endpoint (direct or through cachegate).
    Bench(Box<BenchArgs>),
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// The data keys of each keyring (ids, creation dates, the primary one), checked to
    /// unwrap with the root key.
    Status,
    /// Adds a new data key and makes it primary: new values are sealed under it, old ones
    /// still open.
    Rotate,
    /// Re-seals every value of the encrypted keyspaces (strings and hash fields) under the
    /// primary data key, on the backend (SCAN, then WATCH/MULTI per key: concurrent writes
    /// win); values in clear are sealed. An interrupted run resumes from its saved cursor.
    Rewrap {
        /// Start from the beginning instead of the saved cursor.
        #[arg(long)]
        restart: bool,
    },
    /// Retires a data key: never loaded again, so a value still under it is an error
    /// (counted) instead of opening. Needs a complete rewrap under the current primary key
    /// first (recorded by `rewrap`), unless --force.
    Retire {
        /// The data key's id (`keys status`).
        id: u32,
        /// Retire it even without a recorded complete rewrap.
        #[arg(long)]
        force: bool,
    },
    /// Re-wraps every data key under a new root key (the values are not touched); then point
    /// root_key_file at it and reload.
    RotateRoot {
        /// The new root key (32 bytes: `openssl rand -hex 32 > new-root-key`).
        #[arg(long)]
        new_root_key_file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Endpoint to load (IP:port).
    #[arg(long)]
    target: std::net::SocketAddr,
    /// With --compare: the backend itself, loaded the same way for the ratio.
    #[arg(long)]
    direct: Option<std::net::SocketAddr>,
    /// --direct is a Redis Cluster node: load the cluster directly as a cluster-aware client
    /// does (a connection to every primary, each key sent to its slot's node).
    #[arg(long)]
    direct_cluster: bool,
    /// Run the load against --direct too and print target/direct ratios.
    #[arg(long)]
    compare: bool,
    /// Speak memcached instead of Redis.
    #[arg(long)]
    memcached: bool,
    /// Connect to --target over TLS, trusting this CA bundle.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// AUTH password (Redis).
    #[arg(long)]
    password: Option<String>,
    /// AUTH user name (Redis).
    #[arg(long)]
    user: Option<String>,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 10_000)]
    keyspace: u64,
    /// How long each run lasts, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// get or set.
    #[arg(long, default_value = "get")]
    command: String,
    /// Report this process's CPU time per request (e.g. cachegate's pid).
    #[arg(long)]
    pid: Option<u32>,
    /// Another pid whose CPU per request is reported for the direct run (e.g. redis-server).
    #[arg(long)]
    direct_pid: Option<u32>,
    /// The backend behind the target (e.g. redis-server behind cachegate): its CPU per request
    /// in the target's run too. With --pid, --compare and --direct-pid (the same backend), the
    /// comparison also says where one shared core's time goes.
    #[arg(long)]
    backend_pid: Option<u32>,
    /// Instead of load: this many full TLS handshakes, then as many resumed ones, with the
    /// target's CPU per handshake (needs --cacert and --pid).
    #[arg(long)]
    handshakes: Option<usize>,
    /// Instead of load: open this many connections, keep them idle, and report the target's
    /// resident memory per connection (needs --pid).
    #[arg(long)]
    idle: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        common: Common::default(),
    });
    // `cachegate --config x check` and `cachegate check --config x` alike.
    let common = match &command {
        Command::Run { common } | Command::Check { common, .. } | Command::Keys { common, .. } => {
            Common {
                config: common.config.clone().or(cli.common.config.clone()),
                log_json: common.log_json || cli.common.log_json,
            }
        }
        _ => Common {
            config: cli.common.config.clone(),
            log_json: cli.common.log_json,
        },
    };
    init_tracing(common.log_json);
    if let Command::Live { admin } = command {
        return match live(admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cachegate live: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Reload { admin } = command {
        return match reload(admin) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cachegate reload: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::DefaultConfig = command {
        print!("{}", cachegate::config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    if let Command::Bench(args) = command {
        return match bench(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cachegate bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // SIGHUP (a reload) is caught from before the configuration is read, which may take
    // seconds (a `root_key_command`): its default action would end the process, and a reloader
    // sidecar may send one while the pod starts. Tokio's handler, once set, stays; one
    // arriving now is dropped (there is nothing to reload yet). Found by a reviewer.
    if matches!(command, Command::Run { .. }) {
        hold_sighup_from_now();
    }
    let loaded = match &common.config {
        Some(path) => cachegate::config::load(path),
        None => cachegate::config::default_config(),
    };
    let allow_missing = matches!(
        command,
        Command::Check {
            allow_missing_files: true,
            ..
        }
    );
    let (command, keys_action) = match command {
        Command::Keys {
            action, listener, ..
        } => (
            Command::Check {
                common: Common::default(),
                allow_missing_files: false,
            },
            Some((action, listener)),
        ),
        other => (other, None),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) if allow_missing && e.problems.iter().all(|p| p.is_missing_file()) => {
            println!(
                "{}: configuration is valid, but for files not found here:",
                e.source_name
            );
            for p in &e.problems {
                println!("  {}: {}", p.key, p.message);
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cachegate: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some((action, listener)) = keys_action {
        return match keys(&config, action, listener.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cachegate keys: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.check || matches!(command, Command::Check { .. }) {
        println!(
            "{}: configuration is valid ({} listener{})",
            common
                .config
                .as_ref()
                .map_or("embedded default".into(), |p| p.display().to_string()),
            config.listeners.len(),
            if config.listeners.len() == 1 { "" } else { "s" }
        );
        for secret in &config.secret_sources {
            println!("  secret {}: from {}", secret.key, secret.from);
        }
        return ExitCode::SUCCESS;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /live` on the admin listener, with a short deadline: 200 or an error.
fn live(admin: std::net::SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let deadline = std::time::Duration::from_secs(2);
    let mut tcp = std::net::TcpStream::connect_timeout(&admin, deadline)
        .with_context(|| format!("connecting to {admin}"))?;
    tcp.set_read_timeout(Some(deadline))?;
    tcp.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).context("reading the answer")?;
    anyhow::ensure!(
        &head[9..12] == b"200",
        "/live answered {}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}

/// `cachegate keys ...` on every listener with encryption (or the one named).
fn keys(
    config: &cachegate::config::Config,
    action: KeysAction,
    only: Option<&str>,
) -> anyhow::Result<()> {
    use cachegate::crypt::keyring;
    let new_root = match &action {
        KeysAction::RotateRoot { new_root_key_file } => {
            Some(keyring::RootKey::from_file(new_root_key_file).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let mut any = false;
    let mut retired = false;
    for l in &config.listeners {
        let Some(e) = &l.encryption else { continue };
        if only.is_some_and(|n| n != l.name) {
            continue;
        }
        any = true;
        let path = keyring::keyring_path(&config.data_dir, &l.name);
        match &action {
            KeysAction::Status => {
                let keys = keyring::status(&path, &e.root_key).map_err(anyhow::Error::msg)?;
                println!("listener {}: keyring {}", l.name, path.display());
                let date = |secs: u64| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                    )
                };
                for k in keys {
                    println!(
                        "  data key {:>10}  created {}  {} values sealed{}{}",
                        k.id,
                        date(k.created),
                        k.seals,
                        if k.primary { "  (primary)" } else { "" },
                        k.retired
                            .map(|r| format!("  (retired {})", date(r)))
                            .unwrap_or_default()
                    );
                }
            }
            KeysAction::Rotate => {
                let id = keyring::rotate(&path, &e.root_key).map_err(anyhow::Error::msg)?;
                println!(
                    "listener {}: data key {id} is primary now; reload running cachegates (SIGHUP or cachegate reload)",
                    l.name
                );
            }
            KeysAction::Rewrap { restart } => {
                let (keys, _) =
                    keyring::open_or_create(&path, &e.root_key).map_err(anyhow::Error::msg)?;
                let state = cachegate::rewrap::state_path(&path);
                if *restart {
                    let _ = std::fs::remove_file(&state);
                } else if state.exists() {
                    eprintln!("listener {}: resuming from {}", l.name, state.display());
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                // One line, rewritten in place on a terminal.
                let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let seals_now = keyring::seal_counts(&path).map_err(anyhow::Error::msg)?;
                let tally = runtime.block_on(cachegate::rewrap::rewrap(
                    config,
                    l,
                    &keys,
                    Some(&state),
                    seals_now,
                    |pattern, t| {
                        let line = format!(
                            "  {pattern}: {} keys scanned, {} values re-sealed ({} from clear), {} current",
                            t.scanned, t.resealed, t.from_clear, t.current
                        );
                        if tty {
                            eprint!("\r{line}\x1b[K");
                            if pattern == "(done)" {
                                eprintln!();
                            }
                        } else {
                            eprintln!("{line}");
                        }
                    },
                ))?;
                let under: Vec<String> = tally
                    .by_key
                    .iter()
                    .map(|(id, n)| format!("{n} under data key {id}"))
                    .collect();
                if !under.is_empty() {
                    println!("listener {}: before this run, {}", l.name, under.join(", "));
                }
                println!(
                    "listener {}: {} values scanned: {} re-sealed under data key {} ({} of them from clear), {} already under it, {} changed meanwhile (left as they are), {} that do not open",
                    l.name,
                    tally.scanned,
                    tally.resealed,
                    keys.primary.id,
                    tally.from_clear,
                    tally.current,
                    tally.changed,
                    tally.failed
                );
                if tally.empty > 0 {
                    println!(
                        "listener {}: {} empty values left as they are (items created by `mg ... N` awaiting their value: nothing to seal)",
                        l.name, tally.empty
                    );
                }
                anyhow::ensure!(
                    tally.failed == 0,
                    "{} values do not open (tampered, or under a data key no longer in the keyring)",
                    tally.failed
                );
                if tally.changed == 0 {
                    keyring::note_rewrapped(&path, keys.primary.id, &tally.seals_at_start)
                        .map_err(anyhow::Error::msg)?;
                } else {
                    println!(
                        "listener {}: {} values kept changing while they were re-sealed: run rewrap again (the run is not recorded as complete, so `keys retire` waits)",
                        l.name, tally.changed
                    );
                }
            }
            KeysAction::Retire { id, force } => {
                // Data key ids are random per keyring: the listener that has it.
                match keyring::retire(&path, &e.root_key, *id, *force) {
                    Err(keyring::RetireError::NoSuchKey(_)) => continue,
                    other => other?,
                }
                retired = true;
                println!(
                    "listener {}: data key {id} is retired; reload running cachegates (values still under it now fail, counted as retired_key)",
                    l.name
                );
            }
            KeysAction::RotateRoot { .. } => {
                let new = new_root.as_ref().expect("read above");
                let n =
                    keyring::rotate_root(&path, &e.root_key, new).map_err(anyhow::Error::msg)?;
                println!(
                    "listener {}: {n} data key(s) re-wrapped under the new root key; point encryption.root_key_file at it, then reload",
                    l.name
                );
            }
        }
    }
    anyhow::ensure!(
        any,
        "no listener with encryption{}",
        only.map(|n| format!(" named `{n}`")).unwrap_or_default()
    );
    if let KeysAction::Retire { id, .. } = action {
        anyhow::ensure!(retired, "no keyring has a data key {id}");
    }
    Ok(())
}

/// `POST /reload` on the admin listener: its answer, or an error with the reason.
/// Sets tokio's SIGHUP handler now, on a runtime of its own: the handler outlives it.
fn hold_sighup_from_now() {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    });
}

fn reload(admin: std::net::SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&admin, std::time::Duration::from_secs(2))
        .with_context(|| format!("connecting to {admin}"))?;
    // A reload reads files and builds TLS configurations: seconds at most.
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    tcp.write_all(
        b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .context("reading the answer")?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{}", body.trim_end());
    Ok(body.to_string())
}

fn run(config: cachegate::config::Config) -> anyhow::Result<()> {
    // One thread: tokio's single-threaded scheduler (no work stealing, no cross-thread wake-ups),
    // about a tenth less CPU per request than a multi-threaded runtime with one worker.
    let runtime = match config.threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    }
    .enable_all()
    .build()
    .context("starting the async runtime")?;
    runtime.block_on(async {
        // What the runtime is, as it says itself.
        let handle = tokio::runtime::Handle::current();
        tracing::info!(
            threads = handle.metrics().num_workers(),
            scheduler = match handle.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded",
                _ => "multi-threaded",
            },
            "starting"
        );
        let signals = cachegate::shutdown::signals().context("registering signal handlers")?;
        let hup = cachegate::shutdown::hangup().context("registering SIGHUP")?;
        let bound = cachegate::server::bind(&config).await?;
        let shutdown = async {
            let which = signals.await;
            tracing::info!(signal = which, "shutdown requested");
        };
        let prepared = cachegate::server::prepare(config, bound)?;
        let hangup = cachegate::shutdown::reload_on(hup, prepared.reloader.clone());
        prepared.run(shutdown).await;
        hangup.abort();
        Ok(())
    })
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.command != "get" && args.command != "set" {
        anyhow::bail!("--command is get or set");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let load = cachegate::bench::Load {
        target: args.target,
        memcached: args.memcached,
        tls_ca: args.cacert.clone(),
        password: args.password.clone(),
        user: args.user.clone(),
        connections: args.connections,
        pipeline: args.pipeline,
        value_size: args.size,
        keyspace: args.keyspace,
        duration: args.duration,
        command: args.command.clone(),
        pid: args.pid,
        backend_pid: args.backend_pid,
        cluster: false,
    };
    runtime.block_on(async {
        let describe = format!(
            "{} {} pipeline {} x {} connections, {} B values",
            if args.memcached { "memcached" } else { "redis" },
            args.command.to_uppercase(),
            args.pipeline,
            args.connections,
            args.size
        );
        if let Some(n) = args.handshakes {
            let (full, _) = cachegate::bench::handshakes(&load, n, false).await?;
            let (resumed, count) = cachegate::bench::handshakes(&load, n, true).await?;
            println!(
                "handshakes at {}: full {:.0}µs CPU each, resumed {:.0}µs CPU each ({count}/{n} resumed)",
                args.target,
                full.as_secs_f64() * 1e6,
                resumed.as_secs_f64() * 1e6
            );
            return anyhow::Ok(());
        }
        if let Some(n) = args.idle {
            let per = cachegate::bench::idle_memory(&load, n).await?;
            println!(
                "idle connections at {}: {n} held, {:.1} KiB resident each",
                args.target,
                per as f64 / 1024.0
            );
            return anyhow::Ok(());
        }
        println!("{describe}");
        let target = cachegate::bench::run(&load).await?;
        println!("  target {}: {target}", args.target);
        if args.compare {
            let direct_addr = args
                .direct
                .context("--compare needs --direct (the backend's address)")?;
            let direct_load = cachegate::bench::Load {
                target: direct_addr,
                cluster: args.direct_cluster,
                tls_ca: None,
                pid: args.direct_pid,
                backend_pid: None,
                ..load.clone()
            };
            let direct = cachegate::bench::run(&direct_load).await?;
            println!("  direct {direct_addr}: {direct}");
            println!(
                "  ratio target/direct: throughput {:.2}, p50 latency {:.2}x",
                target.throughput() / direct.throughput(),
                target.p50.as_secs_f64() / direct.p50.as_secs_f64().max(1e-9)
            );
            if let Some(split) = cachegate::bench::Split::of(&target, &direct) {
                println!("  {split}");
            }
        }
        anyhow::Ok(())
    })
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CACHEGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
