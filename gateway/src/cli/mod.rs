//! The `tensorgate` command line: one file per command, each a `run` over the loaded
//! configuration; this module holds the argument definitions and the dispatch.

mod config;
mod convert;
mod fsck;
mod gc;
mod rebuild;
mod repack;
mod scrub;
mod serve;
mod stats;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tensorgate::config::Config;
use tensorgate_codec::container;

/// Threads for blocking file I/O (the local upstream, sled flushes); codec work runs on rayon.
const BLOCKING_THREADS: usize = 16;

/// How long an idle blocking thread waits for more work before it ends (tokio's default: 10 s).
const BLOCKING_THREADS_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Parser)]
#[command(version, about = "S3-compatible gateway that stores AI models deduplicated and delta-compressed")]
pub struct Cli {
    /// Config file (TOML); without one, defaults serve 127.0.0.1:9000 over ./tensorgate-data.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Log JSON lines instead of text (one object per event, with the request's span fields).
    #[arg(long, global = true)]
    log_json: bool,
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
    Gc {
        /// Run it again until re-basing has nothing left to switch, with a progress bar of the
        /// families of tensors settled.
        #[arg(long)]
        until_settled: bool,
    },
    /// Logical and physical bytes per tenant and bucket.
    Stats {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        bucket: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list the families of tensors (one shape, near fingerprints) and how each is
        /// stored against its root.
        #[arg(long)]
        families: bool,
    },
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Check the index's invariants and that upstream holds every pack and blob it uses;
    /// exits with status 1 if anything is wrong.
    Fsck {
        /// Also read and decode every frame, checking its checksum.
        #[arg(long)]
        verify_frames: bool,
        /// Write missing or stale manifests again and send orphans to the trash.
        #[arg(long)]
        repair: bool,
    },
    /// Read and verify every frame upstream, at a bounded rate; resumes an interrupted run.
    Scrub {
        /// Upstream MiB read per second at most (0: no limit).
        #[arg(long, default_value_t = 50)]
        rate_mib: u64,
        /// Start from the first frame even if an earlier scrub was interrupted.
        #[arg(long)]
        restart: bool,
    },
    /// Pack every object still stored as uploaded, then compact sparse packs, now.
    Repack,
    /// Maintenance of the index.
    Index {
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Encode a safetensors file with the codec (as a delta against BASE if given) and report
    /// the ratio and speed. Works in memory: for checking the codec on one's own models.
    Pack {
        /// Base model whose same-named tensors the deltas are taken against.
        #[arg(long)]
        base: Option<PathBuf>,
        file: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Rebuild the original file from `tensorgate pack` output (with the same BASE).
    Unpack {
        #[arg(long)]
        base: Option<PathBuf>,
        file: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum IndexAction {
    /// Fills an empty index from what the upstream holds (manifests, bucket markers, packs).
    Rebuild,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Parse and validate the config file, and print what it sets up.
    Check,
}

/// Parses the arguments, sets up logging and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "tensorgate=info".into());
    if cli.log_json {
        tracing_subscriber::fmt().json().with_current_span(true).with_env_filter(filter).init();
    } else {
        // Colour only on a terminal: a log file or a journal gets plain text.
        tracing_subscriber::fmt().with_ansi(std::io::stderr().is_terminal()).with_env_filter(filter).init();
    }
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        // A blocking thread gives its pages back when it ends; runtime threads collect as they
        // go idle (`allocator`).
        .thread_keep_alive(BLOCKING_THREADS_KEEP_ALIVE)
        .on_thread_park(crate::allocator::collect_if_due)
        .build()?;
    match cli.command {
        Command::Serve { listen, data_dir } => {
            config.listen = listen.unwrap_or(config.listen);
            config.data_dir = data_dir.unwrap_or(config.data_dir);
            runtime.block_on(serve::run(config, cli.config))
        }
        Command::Pack { base, file, output } => convert::run(&file, base.as_deref(), &output, "packed", container::pack),
        Command::Unpack { base, file, output } => convert::run(&file, base.as_deref(), &output, "unpacked", container::unpack),
        Command::Fsck { verify_frames, repair } => runtime.block_on(fsck::run(&config, verify_frames, repair)),
        Command::Stats { tenant, bucket, json, families } => stats::run(&config, tenant.as_deref(), bucket.as_deref(), json, families),
        Command::Config { action: ConfigAction::Check } => config::check(&config),
        Command::Scrub { rate_mib, restart } => runtime.block_on(scrub::run(&config, rate_mib, restart)),
        Command::Repack => runtime.block_on(repack::run(&config)),
        Command::Index { action: IndexAction::Rebuild } => runtime.block_on(rebuild::run(&config)),
        Command::Gc { until_settled } => runtime.block_on(gc::run(&config, until_settled)),
    }
}

/// A progress bar on the terminal for a long admin command; hidden when stderr is not one.
fn progress_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta} left)")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what);
    bar
}
