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
    if !report.leased {
        println!("another gateway holds the garbage-collection lease: only the local index was swept");
    }
    Ok(())
}
