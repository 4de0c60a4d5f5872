//! `tensorgate repack`: packs every object still stored as uploaded, then compacts sparse
//! packs, now. Compaction deletes packs, so with a shared upstream it runs only under the
//! garbage-collection lease, as the collector's does.

use tensorgate::config::Config;
use tensorgate::ids::now_ms;
use tensorgate::maintenance::{compact, condemned, gc, packer};
use tensorgate::server;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    if store.config.shared_upstream {
        // As a starting gateway does: refuse a stale index, and catch up with condemnations
        // before committing anything.
        condemned::check_not_expired(&store, now_ms()).await?;
        condemned::veto(&store).await?;
    }
    let bar = super::progress_bar("objects packed");
    bar.set_length(store.index.pack_queue_len() as u64);
    let mut packed = 0;
    while packer::pack_next(&store).await? {
        packed += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if store.config.shared_upstream && !gc::may_collect(&store, now_ms(), true).await? {
        println!("packed {packed} objects; another gateway holds the garbage-collection lease, so it compacts, not this command");
        return Ok(());
    }
    let compacted = compact::compact(&store).await?;
    println!(
        "packed {packed} objects; compacted {} packs ({} frames moved, {} bytes freed once the grace period ends)",
        compacted.packs, compacted.frames_moved, compacted.bytes_freed
    );
    Ok(())
}
