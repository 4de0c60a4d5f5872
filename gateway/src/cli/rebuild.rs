//! `tensorgate index rebuild`: fills an empty index from what the upstream holds.

use tensorgate::config::Config;
use tensorgate::maintenance::rebuild;
use tensorgate::server;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    anyhow::ensure!(
        store.index.is_empty(),
        "the index in {} is not empty: stop the gateway and move that directory aside first",
        config.data_dir.join("index").display()
    );
    let bar = super::progress_bar("manifests");
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
}
