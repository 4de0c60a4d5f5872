//! `tensorgate gc`: one garbage collection, now.

use tensorgate::config::Config;
use tensorgate::maintenance::gc;
use tensorgate::server;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    let report = gc::collect_garbage(&store).await?;
    println!(
        "collected {} chunks and {} upstream objects; {} orphans sent to the trash",
        report.chunks, report.upstream_objects, report.orphans
    );
    let rebase = report.rebase;
    println!(
        "re-based {} chunks ({} frame bytes -> {}); {} of {} families of tensors settled{}",
        rebase.chunks,
        rebase.bytes_before,
        rebase.bytes_after,
        rebase.settled_families,
        rebase.total_families,
        if rebase.unfinished { "; the rest waits for the next run (rebase_bytes_per_run)" } else { "" }
    );
    if !report.leased {
        println!("another gateway holds the garbage-collection lease: only the local index was swept");
    }
    Ok(())
}
