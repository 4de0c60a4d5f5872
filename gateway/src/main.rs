//! The `tensorgate` command: serve the S3 endpoint, or run one-off maintenance.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tensorgate::config::Config;
use tensorgate::{background, server};

#[derive(Parser)]
#[command(version, about = "S3-compatible gateway that stores AI models deduplicated and delta-compressed")]
struct Cli {
    /// Config file (TOML); without one, defaults serve 127.0.0.1:9000 over ./tensorgate-data.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the S3 endpoint.
    Serve {
        /// Address to listen on (overrides the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run one garbage collection now and exit.
    Gc,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "tensorgate=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve { listen, data_dir } => {
            config.listen = listen.unwrap_or(config.listen);
            config.data_dir = data_dir.unwrap_or(config.data_dir);
            runtime.block_on(serve(config))
        }
        Command::Gc => runtime.block_on(async {
            let store = server::open_store(&config)?;
            let report = background::collect_garbage(&store).await?;
            println!("collected {} chunks and {} upstream objects", report.chunks, report.upstream_objects);
            Ok(())
        }),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let gateway = server::start(config.clone()).await?;
    let key = &config.access_keys[0];
    println!("tensorgate is serving S3 at http://{}", gateway.address);
    println!("  data directory: {}", config.data_dir.display());
    println!("  upstream:       {}", gateway.store.upstream.describe());
    println!("  access key:     {}", key.access_key);
    println!("  secret key:     {}", key.secret_key);
    println!(
        "  try: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws --endpoint-url http://{} s3 ls",
        key.access_key, key.secret_key, gateway.address
    );
    tokio::signal::ctrl_c().await?;
    gateway.stop();
    Ok(())
}
