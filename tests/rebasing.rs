//! Savings that do not depend on upload order (issue 16): a model family whose tensors found no
//! base when they were written (fine-tunes committed before their base, as a parallel sync
//! commits them) is re-based by garbage collection until it costs what it costs uploaded base
//! first; objects read back byte-identical while it runs, and fsck stays clean.

mod support;

use support::objects::*;
use support::*;

/// Uploads the family in order, one PUT each, and returns the gateway and the upstream bytes
/// (before any garbage collection, so before any re-basing); with `bases` false the gateway
/// takes no deltas on the way in, and re-bases 4 MiB of raw bytes a pass.
fn upload(bases: bool) -> (TestGateway, u64) {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        if !bases {
            config.base_selection = tensorgate::config::BaseSelection::None;
            config.rebase_bytes_per_run = 4 << 20;
            // A read that found a chunk's old frame still decodes it, against its old base,
            // for the grace period.
            config.gc_grace_secs = GRACE_SECS;
        }
    });
    gateway.aws(&["s3", "mb", "s3://family"]);
    for file in BF16_FAMILY {
        gateway.aws(&["s3api", "put-object", "--bucket", "family", "--key", file, "--body", corpus(file).to_str().unwrap()]);
    }
    gateway.drain_packer();
    let stored = upstream_bytes(&gateway.dir.path().join("data/upstream"));
    (gateway, stored)
}

/// Over every family of tensors (`tensorgate stats --families`): chunks, frame bytes, and
/// chunks stored on their own, against their family's root, and against anything else.
fn family_totals(gateway: &TestGateway) -> (usize, u64, usize, usize, usize) {
    let families = tensorgate::maintenance::families::tensor_families(gateway.store()).unwrap();
    let mut totals = (0, 0, 0, 0, 0);
    for stats in families.iter().map(|family| family.stats()) {
        assert!(stats.dtypes.iter().all(|dtype| *dtype == "BF16"), "{stats:?}");
        totals.0 += stats.chunks;
        totals.1 += stats.stored_bytes;
        totals.2 += stats.standalone;
        totals.3 += stats.against_root;
        totals.4 += stats.against_other;
    }
    totals
}

/// The grace period of the gateway that re-bases while it is read.
const GRACE_SECS: u64 = 2;

/// Runs garbage collection until re-basing finds nothing more to do; returns the passes run.
fn settle(gateway: &TestGateway) -> usize {
    for pass in 1..=80 {
        let report = gateway.collect_garbage();
        if report.rebase.chunks == 0 && !report.rebase.unfinished {
            return pass;
        }
    }
    panic!("re-basing did not settle in 80 passes");
}

#[test]
fn a_family_stored_without_bases_settles_to_what_it_costs_base_first() {
    let raw: u64 = BF16_FAMILY.iter().map(|file| std::fs::metadata(corpus(file)).unwrap().len()).sum();
    let (forward, forward_cost) = upload(true);
    settle(&forward);
    let forward_settled = settled_upstream(&forward);

    let (unbased, unbased_cost) = upload(false);
    let unsettled_families = family_totals(&unbased);
    assert!(unsettled_families.0 > 0, "no family found");
    assert_eq!(unsettled_families.2, unsettled_families.0, "without bases every chunk is stored on its own");
    // Objects read back, again and again, while re-basing runs.
    let (passes, reads) = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = read_corpus_until(unbased.endpoint.clone(), "family", &BF16_FAMILY, stop.clone());
        let passes = settle(&unbased);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (passes, handle.join().expect("the reads during re-basing are byte-identical"))
    };
    // Old frames and bases are collected a grace period later, then their packs compacted.
    std::thread::sleep(std::time::Duration::from_secs(GRACE_SECS + 1));
    unbased.collect_garbage();
    std::thread::sleep(std::time::Duration::from_secs(GRACE_SECS + 1));
    let unbased_settled = settled_upstream(&unbased);
    let settled_families = family_totals(&unbased);
    println!("families (chunks, stored bytes, standalone, against the root, against another): {unsettled_families:?} before re-basing, {settled_families:?} after");
    assert!(settled_families.3 * 2 > settled_families.0, "most chunks are stored against their root once settled: {settled_families:?}");
    assert!(settled_families.1 * 2 < unsettled_families.1, "re-basing did not halve the families' frames: {unsettled_families:?} -> {settled_families:?}");
    let share = |bytes: u64| 100.0 * bytes as f64 / raw as f64;
    println!(
        "{raw} bytes raw: base first {forward_cost} ({:.1}%), settled {forward_settled} ({:.1}%); without bases {unbased_cost} ({:.1}%), settled after {} passes {unbased_settled} ({:.1}%), {} reads meanwhile",
        share(forward_cost),
        share(forward_settled),
        share(unbased_cost),
        passes,
        share(unbased_settled),
        reads
    );
    assert!(share(unbased_settled) <= share(forward_settled) + 2.0, "without bases settled at {unbased_settled}, base first at {forward_settled}");
    // The index keeps what re-basing saved, as the metrics counted it.
    let metrics = &unbased.store().metrics;
    let counted = (metrics.rebase_chunks.get(), metrics.rebase_bytes_before.get() - metrics.rebase_bytes_after.get());
    assert!(counted.0 > 0);
    assert_eq!(unbased.store().index.rebase_totals().unwrap(), counted);
    // What re-basing found settled stays settled across a restart: nothing is weighed again.
    let mut unbased = unbased;
    unbased.restart();
    let report = unbased.collect_garbage();
    assert_eq!((report.rebase.chunks, report.rebase.unfinished, report.rebase.families), (0, false, 0));
    assert!(report.rebase.total_families > 0 && report.rebase.settled_families == report.rebase.total_families, "{:?}", report.rebase);
    assert_eq!(unbased.store().metrics.rebase_raw_bytes.get(), 0, "a restarted gateway weighed settled families again");
    assert_eq!(unbased.store().index.rebase_totals().unwrap(), counted);
    for gateway in [&forward, &unbased] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let work = tempfile::tempdir().unwrap();
        for file in BF16_FAMILY {
            assert!(get(gateway, "family", file, &work.path().join("back")) == std::fs::read(corpus(file)).unwrap(), "{file} differs");
        }
    }
}

/// The size of every pack upstream, by name.
fn pack_sizes(upstream: &std::path::Path) -> std::collections::HashMap<String, u64> {
    match std::fs::read_dir(upstream.join("packs")) {
        Ok(entries) => entries.map(|entry| entry.unwrap()).map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.metadata().unwrap().len())).collect(),
        Err(_) => Default::default(),
    }
}

/// Every file of the corpus, relative to it, in name order.
fn corpus_files() -> Vec<String> {
    let root = corpus_dir();
    let mut files = Vec::new();
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// The whole corpus in four upload orders, each settled by re-basing: forward with one
/// connection; reversed with one connection and every tensor renamed; `aws s3 sync` (10 requests
/// at a time); `rclone copy --transfers 8`. Each ends within 2 points of raw of the best, and
/// the fine-tunes (checkpoints and merged LoRA included) shrink by at least 80% in each.
#[test]
fn every_upload_order_of_the_corpus_settles_alike() {
    let files = corpus_files();
    let raw: u64 = files.iter().map(|file| std::fs::metadata(corpus(file)).unwrap().len()).sum();
    let work = tempfile::tempdir().unwrap();
    // What the fine-tunes cost in an order: the settled upstream less what the rest of the
    // corpus costs settled on its own.
    let is_fine_tune = |file: &String| ["ft/", "ckpt/", "lora/"].iter().any(|folder| file.starts_with(folder));
    let fine_tunes_raw: u64 = files.iter().filter(|file| is_fine_tune(file)).map(|file| std::fs::metadata(corpus(file)).unwrap().len()).sum();
    let without_fine_tunes = {
        let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
        gateway.aws(&["s3", "mb", "s3://corpus"]);
        for file in files.iter().filter(|file| !is_fine_tune(file)) {
            gateway.aws(&["s3api", "put-object", "--bucket", "corpus", "--key", file, "--body", corpus(file).to_str().unwrap()]);
        }
        settle(&gateway);
        settled_upstream(&gateway)
    };
    let mut shares = Vec::new();
    let mut fine_tune_reductions = Vec::new();
    // `TG_REBASE_ORDERS` (orders joined by commas) runs others, or one several times.
    let orders: Vec<String> = match std::env::var("TG_REBASE_ORDERS") {
        Ok(chosen) => chosen.split(',').map(str::to_owned).collect(),
        Err(_) => ["forward", "reversed and renamed", "aws s3 sync", "rclone copy --transfers 8"].map(str::to_owned).to_vec(),
    };
    for order in orders.iter().map(String::as_str) {
        let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
        gateway.aws(&["s3", "mb", "s3://corpus"]);
        let dir = corpus_dir();
        match order {
            "forward" => {
                for file in &files {
                    gateway.aws(&["s3api", "put-object", "--bucket", "corpus", "--key", file, "--body", corpus(file).to_str().unwrap()]);
                }
            }
            "reversed and renamed" => {
                for file in files.iter().rev() {
                    let body = work.path().join("renamed");
                    match file.ends_with(".safetensors") {
                        true => std::fs::write(&body, renamed_model(&corpus(file), "renamed.")).unwrap(),
                        false => std::fs::write(&body, std::fs::read(corpus(file)).unwrap()).unwrap(),
                    }
                    gateway.aws(&["s3api", "put-object", "--bucket", "corpus", "--key", file, "--body", body.to_str().unwrap()]);
                }
            }
            "aws s3 sync" => {
                gateway.aws(&["s3", "sync", dir.to_str().unwrap(), "s3://corpus"]);
            }
            "rclone copy --transfers 8" => {
                gateway.rclone(&["copy", "--transfers", "8", dir.to_str().unwrap(), "tg:corpus"]);
            }
            unknown => panic!("no upload order {unknown:?}"),
        }
        gateway.drain_packer();
        let upstream = gateway.dir.path().join("data/upstream");
        let stored = upstream_bytes(&upstream);
        let (packs_before, read_before) = (pack_sizes(&upstream), gateway.store().metrics.upstream_read_bytes.get());
        let started = std::time::Instant::now();
        let passes = settle(&gateway);
        let seconds = started.elapsed().as_secs_f64();
        let settled = settled_upstream(&gateway);
        // The cost: raw bytes re-encoded, upstream bytes read, and bytes written (the packs that
        // re-basing and its compaction made), against the bytes saved.
        let metrics = &gateway.store().metrics;
        let written: u64 = pack_sizes(&upstream).into_iter().filter(|(pack, _)| !packs_before.contains_key(pack)).map(|(_, size)| size).sum();
        let read = metrics.upstream_read_bytes.get() - read_before;
        let saved = stored.saturating_sub(settled).max(1);
        let share = 100.0 * settled as f64 / raw as f64;
        println!(
            "{order}: {:.1}% of raw as stored, {share:.1}% settled after {passes} passes in {seconds:.1} s; re-encoded {} raw bytes, read {read} and wrote {written} upstream bytes for {saved} saved ({:.2} read and {:.2} written a byte saved)",
            100.0 * stored as f64 / raw as f64,
            metrics.rebase_raw_bytes.get(),
            read as f64 / saved as f64,
            written as f64 / saved as f64
        );
        shares.push((order, share));
        let reduction = 100.0 * (1.0 - settled.saturating_sub(without_fine_tunes) as f64 / fine_tunes_raw as f64);
        println!("{order}: the fine-tunes ({fine_tunes_raw} bytes raw) shrink by {reduction:.1}%");
        fine_tune_reductions.push((order, reduction));
        if order != "reversed and renamed" {
            let back = work.path().join("back");
            for file in ["ft/ft-b-mlm.bf16.safetensors", "base/minilm-l6.bf16.safetensors"] {
                assert!(get(&gateway, "corpus", file, &back) == std::fs::read(corpus(file)).unwrap(), "{order}: {file} differs");
            }
        }
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{order}: {:?}", report.problems);
    }
    let best = shares.iter().map(|(_, share)| *share).fold(f64::MAX, f64::min);
    for (order, share) in &shares {
        assert!(*share <= best + 2.0, "{order} settled at {share:.1}% of raw, the best order at {best:.1}%");
    }
    // Issue 16 asks for 82%; measured 82.4-82.8% over runs (docs/benchmarks.md). The floor
    // leaves room for the parallel orders' runs differing.
    for (order, reduction) in &fine_tune_reductions {
        assert!(*reduction >= 80.0, "{order}: the fine-tunes shrink by only {reduction:.1}%");
    }
}
