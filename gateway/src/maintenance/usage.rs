//! The usage gauges of `/metrics` (per-tenant logical and physical bytes, the packer's queue),
//! recomputed from the index every `usage_refresh_secs` on a blocking thread, so that a scrape
//! only encodes counters and never scans the index.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Store;

/// Refreshes the usage gauges now, then every `usage_refresh_secs`, until the task is aborted.
pub async fn run_usage(store: Arc<Store>) {
    let interval = Duration::from_secs(store.config.usage_refresh_secs.max(1));
    loop {
        if let Err(error) = refresh_usage(store.clone()).await {
            tracing::warn!(error = format!("{error:#}"), "usage could not be read from the index; the gauges keep their last values");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Reads per-tenant usage and the packer's queue length from the index into the gauges.
pub async fn refresh_usage(store: Arc<Store>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let usage = store.index.usage()?;
        store.metrics.set_usage(store.index.pack_queue_len(), usage);
        Ok(())
    })
    .await?
}
