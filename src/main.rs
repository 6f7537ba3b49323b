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
    /// Configuration file (TOML). Without it, the embedded default runs: TLS on
    /// 127.0.0.1:6380 in front of Redis on 127.0.0.1:6379, with dev certificates.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 if valid, 64 if not).
    #[arg(long)]
    check: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and exit.
    Check,
    /// Print the embedded default configuration.
    DefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::DefaultConfig = command {
        print!("{}", cachegate::config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    let loaded = match &cli.config {
        Some(path) => cachegate::config::load(path),
        None => cachegate::config::default_config(),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachegate: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check || matches!(command, Command::Check) {
        println!(
            "{}: configuration is valid ({} listener{})",
            cli.config
                .as_ref()
                .map_or("embedded default".into(), |p| p.display().to_string()),
            config.listeners.len(),
            if config.listeners.len() == 1 { "" } else { "s" }
        );
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

fn run(config: cachegate::config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let signals = cachegate::shutdown::signals().context("registering signal handlers")?;
        let bound = cachegate::server::bind(&config).await?;
        let shutdown = async {
            let which = signals.await;
            tracing::info!(signal = which, "shutdown requested");
        };
        cachegate::server::serve(config, bound, shutdown).await?;
        Ok(())
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
