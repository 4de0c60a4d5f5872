//! `tensorgate serve`: the S3 endpoint, until a signal stops it.

use std::path::PathBuf;

use tensorgate::config::{Config, DEFAULT_ACCESS_KEY};
use tensorgate::server;

/// Serves until SIGTERM or SIGINT, then drains and stops cleanly; on SIGHUP, reloads the
/// access keys and tenants from the config file.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Taken before starting, so that a SIGTERM during start-up (recovery) is a clean stop too.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminations = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let gateway = server::start(config.clone()).await?;
    tokio::spawn(crate::allocator::collect_on_coding_threads());
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
