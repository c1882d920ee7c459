//! `gitgate`: the smart-git HTTP gateway.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gitgate::config::Config;
use gitgate_storage_client::daemon;

/// An HTTP smart-git gateway.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "config.example.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Read a client token on stdin and print the hash to put in `[[auth.tokens]]`.
    HashToken,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::HashToken) = args.command {
        let mut token = String::new();
        std::io::stdin()
            .read_line(&mut token)
            .context("reading the token from stdin")?;
        let token = token.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(!token.is_empty(), "no token on stdin");
        println!("{}", gitgate::auth::token::hash_token(token));
        return Ok(());
    }
    if let Some(Command::CheckConfig) = args.command {
        return match Config::load(&args.config).await {
            Ok(_) => {
                println!("{}: ok", args.config.display());
                Ok(())
            }
            Err(err) => {
                for problem in err.to_string().lines() {
                    eprintln!("{}: {problem}", args.config.display());
                }
                std::process::exit(1);
            }
        };
    }
    let config = Config::load(&args.config)
        .await
        .with_context(|| format!("invalid configuration {}", args.config.display()))?;
    daemon::init_logging(config.log.format, &config.log.level);
    let listener = tokio::net::TcpListener::bind(config.listen.addr)
        .await
        .with_context(|| format!("binding {}", config.listen.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gitgate listening");
    // One line on stdout for scripts and test harnesses that asked for port 0.
    let scheme = if config.listen.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!("listening on {scheme}://{addr}");
    gitgate::serve(listener, config, daemon::shutdown_signal()).await?;
    tracing::info!("gitgate stopped");
    Ok(())
}
