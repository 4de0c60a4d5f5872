//! The `tensorgate` command: serve the S3 endpoint, or run one-off maintenance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use clap::{Parser, Subcommand};
use tensorgate::config::{Config, DEFAULT_ACCESS_KEY};
use tensorgate::maintenance::{compact, fsck, gc, packer, rebuild, scrub};
use tensorgate::server;
use tensorgate_codec::container;

/// mimalloc keeps freed chunk buffers for reuse instead of returning them to the kernel and
/// faulting fresh zeroed pages for the next chunk, which costs a third of decode time otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Threads for blocking file I/O (the local upstream, sled flushes); codec work runs on rayon.
const BLOCKING_THREADS: usize = 16;

#[derive(Parser)]
#[command(version, about = "S3-compatible gateway that stores AI models deduplicated and delta-compressed")]
struct Cli {
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
    Gc,
    /// Logical and physical bytes per tenant and bucket.
    Stats {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        bucket: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
    /// Encode a safetensors file with the codec (as a delta against BASE if given) and report
    /// the ratio and speed. Works in memory: for checking the codec on one's own models.
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "tensorgate=info".into());
    if cli.log_json {
        tracing_subscriber::fmt().json().with_current_span(true).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    match cli.command {
        Command::Serve { listen, data_dir } => {
            config.listen = listen.unwrap_or(config.listen);
            config.data_dir = data_dir.unwrap_or(config.data_dir);
            runtime.block_on(serve(config, cli.config))
        }
        Command::Pack { base, file, output } => convert(&file, base.as_deref(), &output, "packed", container::pack),
        Command::Unpack { base, file, output } => convert(&file, base.as_deref(), &output, "unpacked", container::unpack),
        Command::Fsck { verify_frames, repair } => runtime.block_on(async {
            let store = server::open_store(&config)?;
            let bar = progress_bar("frames verified");
            let report = fsck::fsck(&store, fsck::FsckOptions { verify_frames, repair }, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            println!(
                "{} objects, {} chunks, {} packs, {} blobs, {} frames verified",
                report.objects, report.chunks, report.packs, report.blobs, report.frames_verified
            );
            for repaired in &report.repaired {
                println!("repaired: {repaired}");
            }
            for note in &report.notes {
                println!("note: {note}");
            }
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if !report.problems.is_empty() {
                std::process::exit(1);
            }
            println!("clean");
            Ok(())
        }),
        Command::Stats { tenant, bucket, json } => {
            let store = server::open_store(&config)?;
            let selected = |row_tenant: &str, row_bucket: &str| {
                tenant.as_ref().is_none_or(|t| t == row_tenant) && bucket.as_ref().is_none_or(|b| b == row_bucket)
            };
            let rows: Vec<_> = store.index.usage()?.into_iter().filter(|row| selected(&row.tenant, &row.bucket)).collect();
            let savings = store.index.savings(|key| selected(&key.tenant, &key.bucket))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "buckets": rows, "savings": savings }))?);
            } else {
                print_stats(&rows, &savings);
            }
            Ok(())
        }
        Command::Config { action: ConfigAction::Check } => {
            config.validate()?;
            let tenants = config.all_tenants();
            let keys: usize = tenants.iter().map(|t| t.access_keys.len()).sum();
            let upstream = config.upstream.as_ref().map_or_else(
                || format!("local directory {}", config.data_dir.join("upstream").display()),
                |s3| format!("S3 {} bucket {}", s3.endpoint, s3.bucket),
            );
            println!("config is valid: listen {}, {} tenants, {keys} keys, upstream {upstream}", config.listen, tenants.len());
            Ok(())
        }
        Command::Scrub { rate_mib, restart } => runtime.block_on(async {
            let store = server::open_store(&config)?;
            let bar = progress_bar("chunks");
            let options = scrub::ScrubOptions { bytes_per_second: Some(rate_mib << 20), restart, resumable: true };
            let report = scrub::scrub(&store, options, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            let resumed = if report.resumed { " (resumed an interrupted scrub)" } else { "" };
            println!("verified {} frames, {} bytes{resumed}", report.frames, report.bytes);
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if !report.problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }),
        Command::Repack => runtime.block_on(async {
            let store = server::open_store(&config)?;
            let bar = progress_bar("objects packed");
            bar.set_length(store.index.pack_queue_len() as u64);
            let mut packed = 0;
            while packer::pack_next(&store).await? {
                packed += 1;
                bar.inc(1);
            }
            bar.finish_and_clear();
            let compacted = compact::compact(&store).await?;
            println!(
                "packed {packed} objects; compacted {} packs ({} frames moved, {} bytes freed once the grace period ends)",
                compacted.packs, compacted.frames_moved, compacted.bytes_freed
            );
            Ok(())
        }),
        Command::Index { action: IndexAction::Rebuild } => runtime.block_on(async {
            let store = server::open_store(&config)?;
            anyhow::ensure!(
                store.index.is_empty(),
                "the index in {} is not empty: stop the gateway and move that directory aside first",
                config.data_dir.join("index").display()
            );
            let bar = progress_bar("manifests");
            let report = rebuild::rebuild(&store, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            println!(
                "rebuilt the index: {} buckets, {} packs, {} objects ({} queued for the packer, {} found in another pack, {} unused packs sent to the trash)",
                report.buckets, report.packs, report.objects, report.queued, report.relocated, report.unused_packs
            );
            for object in &report.unreadable {
                println!("unreadable: {object} needs a chunk that no pack upstream holds");
            }
            anyhow::ensure!(report.unreadable.is_empty(), "{} objects could not be rebuilt", report.unreadable.len());
            Ok(())
        }),
        Command::Gc => runtime.block_on(async {
            let store = server::open_store(&config)?;
            let report = gc::collect_garbage(&store).await?;
            println!(
                "collected {} chunks and {} upstream objects; {} orphans sent to the trash",
                report.chunks, report.upstream_objects, report.orphans
            );
            if !report.leased {
                println!("another gateway holds the garbage-collection lease: only the local index was swept");
            }
            Ok(())
        }),
    }
}

/// Runs `pack` or `unpack` on files and reports sizes and speed (wall clock, all cores).
/// The stats tables: usage per tenant and bucket, then where the bytes went.
fn print_stats(rows: &[tensorgate_index::Usage], savings: &tensorgate_index::Savings) {
    let percent = |part: f64| 100.0 * part / savings.logical_bytes.max(1) as f64;
    println!("{:<16} {:<24} {:>8} {:>16} {:>16} {:>8}", "tenant", "bucket", "objects", "logical bytes", "physical bytes", "saved");
    for row in rows {
        let saved = 100.0 * (1.0 - row.physical_bytes as f64 / row.logical_bytes.max(1) as f64);
        println!(
            "{:<16} {:<24} {:>8} {:>16} {:>16} {:>7.1}%",
            row.tenant, row.bucket, row.objects, row.logical_bytes, row.physical_bytes, saved
        );
    }
    println!();
    println!("{:<36} {:>16} {:>9}", "where the logical bytes went", "bytes", "share");
    let lines: [(&str, f64); 7] = [
        ("stored upstream (physical)", savings.physical_bytes as f64),
        ("saved by file dedup", savings.file_dedup as f64),
        ("saved by tensor dedup", savings.tensor_dedup as f64),
        ("saved by deltas against a base", savings.delta as f64),
        ("saved by compression on its own", savings.compression as f64),
        ("headers kept in the manifests", savings.headers as f64),
        ("of which stored as they came", savings.stored_as_is as f64),
    ];
    for (what, bytes) in lines {
        println!("{what:<36} {bytes:>16.0} {:>8.1}%", percent(bytes));
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

fn convert(
    input: &Path,
    base: Option<&Path>,
    output: &Path,
    verb: &str,
    transform: fn(&[u8], Option<&[u8]>) -> tensorgate_codec::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let base = base.map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display()))).transpose()?;
    let started = Instant::now();
    let result = transform(&bytes, base.as_deref()).with_context(|| format!("{verb} {}", input.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(output, &result).with_context(|| format!("writing {}", output.display()))?;
    let raw = bytes.len().max(result.len()) as f64;
    println!(
        "{verb} {} bytes into {} bytes ({:.1}% of raw, {:.2}x) in {:.3} s: {:.0} MB/s",
        bytes.len(),
        result.len(),
        100.0 * bytes.len().min(result.len()) as f64 / raw,
        raw / bytes.len().min(result.len()).max(1) as f64,
        seconds,
        raw / 1e6 / seconds.max(1e-9)
    );
    Ok(())
}

/// Serves until SIGTERM or SIGINT, then drains and stops cleanly; on SIGHUP, reloads the
/// access keys and tenants from the config file.
async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Taken before starting, so that a SIGTERM during start-up (recovery) is a clean stop too.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminations = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let gateway = server::start(config.clone()).await?;
    println!("tensorgate is serving S3 at http://{}", gateway.address);
    println!("  data directory: {}", config.data_dir.display());
    println!("  upstream:       {}", gateway.store.upstream.describe());
    let built_in = config.access_keys.iter().find(|key| key.access_key == DEFAULT_ACCESS_KEY && config.tenants.is_empty());
    match built_in {
        Some(key) => {
            println!("  access key:     {}", key.access_key);
            println!("  secret key:     {}", key.secret_key);
            println!(
                "  try: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws --endpoint-url http://{} s3 ls",
                key.access_key, key.secret_key, gateway.address
            );
        }
        None => {
            let tenants = config.all_tenants();
            let keys: usize = tenants.iter().map(|t| t.access_keys.len()).sum();
            println!("  access keys:    {keys} keys of {} tenants, from the config", tenants.len());
        }
    }
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result?;
                break;
            }
            _ = terminations.recv() => break,
            _ = hangups.recv() => {
                let reloaded = config_path.as_deref().map(|path| Config::load(Some(path)).and_then(|new| gateway.reload_keys(&new)));
                match reloaded {
                    Some(Ok(())) => tracing::info!("access keys reloaded"),
                    Some(Err(error)) => tracing::error!(error = format!("{error:#}"), "reload refused; the keys in use are kept"),
                    None => tracing::warn!("SIGHUP without --config: nothing to reload"),
                }
            }
        }
    }
    tracing::info!("stopping: no new connections; draining the requests in progress");
    if gateway.shut_down().await? {
        tracing::info!("stopped cleanly");
    } else {
        tracing::warn!("stopped with requests still in progress after drain_secs");
    }
    Ok(())
}
