//! `tensorgate gc`: one garbage collection now, or with `--until-settled` as many as re-basing
//! needs to settle every family of tensors, with a progress bar.

use tensorgate::config::Config;
use tensorgate::maintenance::gc::{self, GcReport};
use tensorgate::server;

pub async fn run(config: &Config, until_settled: bool) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    let bar = until_settled.then(|| super::progress_bar("families of tensors settled"));
    let (mut collected, mut chunks, mut before, mut after) = (GcReport::default(), 0, 0, 0);
    let report = loop {
        let report = gc::collect_garbage(&store).await?;
        collected.chunks += report.chunks;
        collected.upstream_objects += report.upstream_objects;
        collected.orphans += report.orphans;
        let rebase = report.rebase;
        (chunks, before, after) = (chunks + rebase.chunks, before + rebase.bytes_before, after + rebase.bytes_after);
        let settled = !report.leased || (rebase.chunks == 0 && !rebase.unfinished);
        match &bar {
            Some(bar) if !settled => {
                bar.set_length(rebase.total_families as u64);
                bar.set_position(rebase.settled_families as u64);
            }
            _ => break report,
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "collected {} chunks and {} upstream objects; {} orphans sent to the trash",
        collected.chunks, collected.upstream_objects, collected.orphans
    );
    let rebase = report.rebase;
    println!(
        "re-based {chunks} chunks ({before} frame bytes -> {after}); {} of {} families of tensors settled{}",
        rebase.settled_families,
        rebase.total_families,
        if rebase.unfinished { "; the rest waits for the next run (rebase_bytes_per_run)" } else { "" }
    );
    if !report.leased {
        println!("another gateway holds the garbage-collection lease: only the local index was swept");
    }
    Ok(())
}
