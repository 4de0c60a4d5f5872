//! Maintenance on real traffic: fsck is clean and finds corruption (never served), scrub is rate
//! limited and resumes, sparse packs are compacted, a grace too long for the clock keeps what
//! was freed.

mod support;

use std::time::Duration;

use support::*;

/// fsck finds nothing wrong after real traffic, and finds a corrupted pack; a GET of the
/// corrupted object fails rather than serving wrong bytes (the chunk cache is off: it would
/// serve the chunks it keeps, rightly, without reading their frames again).
#[test]
fn fsck_is_clean_and_corruption_is_detected_never_served() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.chunk_cache_bytes = 0);
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://checked"]);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = corpus("ft/ft-a-contrastive.bf16.safetensors");
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://checked/base"]);
    gateway.aws(&["s3", "cp", tuned.to_str().unwrap(), "s3://checked/tuned"]);
    let noise = work.path().join("noise");
    std::fs::write(&noise, support::noise(300_000, 3)).unwrap();
    gateway.aws(&["s3", "cp", noise.to_str().unwrap(), "s3://checked/noise"]);
    gateway.aws(&["s3", "rm", "s3://checked/noise"]);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.frames_verified > 10 && report.objects == 2);

    let packs = gateway.dir.path().join("data/upstream/packs");
    let first_pack = std::fs::read_dir(&packs).unwrap().flatten().map(|e| e.path()).max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&first_pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&first_pack, bytes).unwrap();
    let report = gateway.fsck();
    assert!(!report.problems.is_empty(), "a corrupted frame went unnoticed");
    let out = work.path().join("out");
    let downloads: Vec<bool> = ["base", "tuned"]
        .iter()
        .map(|key| {
            let output = gateway.aws_unchecked(&["s3", "cp", &format!("s3://checked/{key}"), out.to_str().unwrap()]);
            let original = std::fs::read(if *key == "base" { &base } else { &tuned }).unwrap();
            assert!(!output.status.success() || std::fs::read(&out).unwrap() == original, "{key}: wrong bytes served");
            output.status.success()
        })
        .collect();
    assert!(downloads.contains(&false), "the corrupted object was served");
}

/// `scrub` verifies every live frame at the rate asked, and a scrub cut off midway resumes
/// where it stopped instead of starting over.
#[test]
fn scrub_is_rate_limited_and_resumes() {
    use tensorgate::maintenance::scrub::{scrub, ScrubOptions};
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://scrubbed"]);
    for (key, file) in [("base", "base/minilm-l6.bf16.safetensors"), ("tuned", "ft/ft-b-mlm.bf16.safetensors")] {
        gateway.aws(&["s3", "cp", corpus(file).to_str().unwrap(), &format!("s3://scrubbed/{key}")]);
    }
    let store = gateway.store();
    let everything = gateway.runtime.block_on(scrub(store, ScrubOptions::default(), &|_, _| {})).unwrap();
    assert!(everything.problems.is_empty() && everything.frames > 10, "{everything:?}");

    let rate = everything.bytes / 2;
    let limited = ScrubOptions { bytes_per_second: Some(rate), restart: false, resumable: true };
    let cut = gateway.runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(900), scrub(store, limited, &|_, _| {})).await
    });
    assert!(cut.is_err(), "a scrub at half the bytes per second finished within a second");
    assert!(store.index.scrub_cursor().unwrap().is_some(), "the cut scrub left no cursor");
    let started = std::time::Instant::now();
    let resumed = gateway.runtime.block_on(scrub(store, limited, &|_, _| {})).unwrap();
    assert!(resumed.resumed && resumed.frames < everything.frames, "{resumed:?}");
    assert!(started.elapsed().as_secs_f64() >= resumed.bytes as f64 / rate as f64 * 0.9, "the rate limit was not kept");
    assert!(store.index.scrub_cursor().unwrap().is_none());
}

/// A scrub cursor that is no chunk id is reported, and the scrub verifies every frame from the
/// first rather than taking the value for "no cursor" silently.
#[test]
fn scrub_reports_a_cursor_that_is_no_chunk_id() {
    use tensorgate::maintenance::scrub::{scrub, ScrubOptions};
    let mut gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://scrubbed"]);
    gateway.aws(&["s3", "cp", corpus("base/minilm-l6.bf16.safetensors").to_str().unwrap(), "s3://scrubbed/base"]);
    let everything = gateway.runtime.block_on(scrub(gateway.store(), ScrubOptions::default(), &|_, _| {})).unwrap();
    gateway.restart_changing_index(|index| {
        index.open_tree("meta").unwrap().insert("scrub-cursor", &[7u8; 31][..]).unwrap();
    });
    let resumable = ScrubOptions { resumable: true, ..ScrubOptions::default() };
    let report = gateway.runtime.block_on(scrub(gateway.store(), resumable, &|_, _| {})).unwrap();
    assert!(report.problems.iter().any(|problem| problem.contains("\"scrub-cursor\" value is malformed")), "{report:?}");
    assert!(!report.resumed && report.frames == everything.frames, "{report:?} against {everything:?}");
    assert!(gateway.store().index.scrub_cursor().unwrap().is_none());
}

/// A pack left mostly dead by a delete is compacted: its live frames move to a new pack, the
/// surviving object reads back byte-identical with its manifest updated, and the old pack is
/// deleted a grace period later.
#[test]
fn sparse_packs_are_compacted() {
    // Without bases and without re-basing, so that big's chunks are all in one pack.
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.base_selection = tensorgate::config::BaseSelection::None;
        config.rebase_bytes_per_run = 0;
    });
    let work = tempfile::tempdir().unwrap();
    let (base, tuned_a, tuned_b) =
        (corpus("base/minilm-l6.bf16.safetensors"), corpus("ft/ft-a-contrastive.bf16.safetensors"), corpus("ft/ft-b-mlm.bf16.safetensors"));
    let big = work.path().join("big");
    std::fs::write(&big, combined_model(&[&base, &tuned_a, &tuned_b])).unwrap();
    let small = work.path().join("small");
    std::fs::write(&small, combined_model(&[&base])).unwrap();
    gateway.aws(&["s3", "mb", "s3://dense"]);
    // One PUT, so that big's chunks are one pack (a multipart upload makes one per part).
    gateway.aws(&["s3api", "put-object", "--bucket", "dense", "--key", "big", "--body", big.to_str().unwrap()]);
    gateway.aws(&["s3", "cp", small.to_str().unwrap(), "s3://dense/small"]);
    let packs_dir = gateway.dir.path().join("data/upstream/packs");
    let packs = || std::fs::read_dir(&packs_dir).unwrap().count();
    assert_eq!(gateway.collect_garbage().packs_compacted, 0);
    assert_eq!(packs(), 1, "small should only reference big's pack");

    gateway.aws(&["s3", "rm", "s3://dense/big"]);
    let first = gateway.collect_garbage();
    assert_eq!(first.packs_compacted, 1, "{first:?}");
    assert_eq!(packs(), 2, "the copy is written, the old pack waits in the trash");
    let second = gateway.collect_garbage();
    assert!(second.upstream_objects >= 1 && second.packs_compacted == 0, "{second:?}");
    assert_eq!(packs(), 1);
    assert!(std::fs::metadata(packs_dir.read_dir().unwrap().next().unwrap().unwrap().path()).unwrap().len() < std::fs::metadata(&small).unwrap().len());

    let out = work.path().join("out");
    gateway.aws(&["s3", "cp", "s3://dense/small", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&small).unwrap());
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// fsck finds a manifest missing upstream and an orphan pack past its grace period;
/// `--repair` writes the manifest again and sends the orphan to the trash (the next collection
/// deletes it), after which fsck is clean and the object still reads back.
#[test]
fn fsck_repair_restores_manifests_and_trashes_orphans() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    gateway.aws(&["s3", "mb", "s3://repaired"]);
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://repaired/base"]);
    let upstream = gateway.dir.path().join("data/upstream");
    let manifests: Vec<_> = std::fs::read_dir(upstream.join("manifests")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(manifests.len(), 1);
    std::fs::remove_file(&manifests[0]).unwrap();
    let orphan = upstream.join("packs/left-by-a-crash");
    std::fs::write(&orphan, b"frames nobody committed").unwrap();

    let check = |repair| gateway.fsck_with(tensorgate::maintenance::fsck::FsckOptions { verify_frames: true, repair });
    let found = check(false);
    assert_eq!(found.problems.len(), 2, "{:?}", found.problems);
    assert!(found.problems.iter().any(|p| p.contains("manifest") && p.contains("missing")), "{:?}", found.problems);
    assert!(found.problems.iter().any(|p| p.contains("left-by-a-crash")), "{:?}", found.problems);
    let repaired = check(true);
    assert_eq!(repaired.repaired.len(), 2, "{:?}", repaired.repaired);
    assert!(manifests[0].exists(), "the manifest was not written again");
    gateway.collect_garbage();
    assert!(!orphan.exists(), "the orphan outlived a collection after its trashing");
    assert!(check(false).problems.is_empty());
    let out = gateway.dir.path().join("out");
    gateway.aws(&["s3", "cp", "s3://repaired/base", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&base).unwrap());
}

/// A chunk that an object reads through a chain of two deltas moves when its pack is compacted:
/// the manifest of every object whose chain reaches it is written again, not only of those one
/// delta away, so the manifests upstream keep naming where each chunk is (fsck compares them
/// with the index; `index rebuild` reads nothing else).
#[test]
fn compaction_rewrites_every_manifest_whose_chain_reaches_a_moved_chunk() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.compact_live_ratio = 0.9);
    let work = tempfile::tempdir().unwrap();
    // The far fine-tune first, beside another model's tensors that die with it; then the base,
    // a delta of the far fine-tune; then a fine-tune named as a delta of the base, so that it
    // reaches the far fine-tune's chunks only through the base's.
    let far = work.path().join("far");
    std::fs::write(&far, combined_model(&[&corpus("ft/ft-b-mlm.bf16.safetensors"), &corpus("other/paraphrase-minilm-l3.f32.safetensors")])).unwrap();
    gateway.aws(&["s3", "mb", "s3://chain"]);
    gateway.aws(&["s3", "cp", far.to_str().unwrap(), "s3://chain/far"]);
    gateway.drain_packer();
    // Without the tensors it shares byte for byte with the far fine-tune.
    let tuned = work.path().join("tuned");
    std::fs::write(&tuned, model_without(&corpus("ft/ft-a-contrastive.bf16.safetensors"), &["position_ids", "pooler"])).unwrap();
    let later = [("base", corpus("base/minilm-l6.bf16.safetensors")), ("tuned", tuned)];
    for (key, file) in &later {
        let hint = if *key == "tuned" { vec!["--metadata", "tensorgate-base=chain/base"] } else { Vec::new() };
        gateway.aws(&[&["s3", "cp", file.to_str().unwrap(), &format!("s3://chain/{key}")], hint.as_slice()].concat());
        gateway.drain_packer();
    }
    assert!(gateway.fsck().problems.is_empty());
    let index = &gateway.store().index;
    let tuned = index.object(&tensorgate_index::ObjectKey::new("default", "chain", "tuned")).unwrap().unwrap();
    let depth = |hash: &[u8; 32]| std::iter::successors(Some(*hash), |hash| index.chunk(hash).unwrap().unwrap().base).count() - 1;
    let base = index.object(&tensorgate_index::ObjectKey::new("default", "chain", "base")).unwrap().unwrap();
    let base_chunks: std::collections::HashSet<_> = base.segments.iter().filter_map(tensorgate_index::Segment::chunk_hash).collect();
    let tuned_chunks: Vec<_> = tuned.segments.iter().filter_map(tensorgate_index::Segment::chunk_hash).collect();
    assert!(tuned_chunks.iter().all(|hash| index.chunk(hash).unwrap().unwrap().base.is_none_or(|base| base_chunks.contains(&base))));
    assert_eq!(tuned_chunks.iter().map(depth).max(), Some(2), "the fine-tune reads the far one's chunks through the base");

    gateway.aws(&["s3", "rm", "s3://chain/far"]);
    let report = gateway.collect_garbage();
    assert!(report.packs_compacted >= 1, "{report:?}");

    let problems = gateway.fsck().problems;
    assert!(problems.is_empty(), "{problems:?}");
    for (key, file) in &later {
        let out = work.path().join(key);
        gateway.aws(&["s3", "cp", &format!("s3://chain/{key}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(file).unwrap(), "{key} differs");
    }
}

/// A pack of age that a write held at the orphan listing, and that the write abandoned after,
/// is the next listing's: fsck notes it rather than reporting it, also after a restart, and the
/// next listing sends it to the trash.
#[test]
fn fsck_leaves_a_pack_a_write_abandoned_after_the_listing_to_the_next() {
    let mut gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.orphan_scan_secs = 0);
    let held = "packs/held-by-a-write";
    let write = gateway.store().in_flight.begin(held);
    let frames = bytes::Bytes::from_static(b"frames of an upload still arriving");
    gateway.runtime.block_on(tensorgate::upstream::put(&*gateway.store().upstream, held, frames)).unwrap();
    let collected = gateway.collect_garbage();
    assert_eq!(collected.orphans, 0, "a pack a write holds was taken for an orphan: {collected:?}");
    drop(write);

    let abandoned_since = |report: &tensorgate::maintenance::fsck::FsckReport| {
        report.notes.iter().any(|note| note.starts_with("orphans that only upstream records or writes in flight held at or since") && note.ends_with(": 1 unreferenced upstream objects"))
    };
    let report = gateway.fsck();
    assert!(report.problems.is_empty() && abandoned_since(&report), "{report:?}");
    gateway.restart();
    let report = gateway.fsck();
    assert!(report.problems.is_empty() && abandoned_since(&report), "{report:?}");

    let collected = gateway.collect_garbage();
    assert_eq!(collected.orphans, 1, "{collected:?}");
    let report = gateway.fsck();
    assert!(report.problems.is_empty() && !abandoned_since(&report), "{report:?}");
}

/// An orphan that came of age after the last orphan listing waits for the next: fsck notes it
/// and finds no problem, also after a restart (the listing's time is in the index). One of age
/// at that listing, which should have sent it to the trash, is a problem.
#[test]
fn fsck_leaves_orphans_younger_than_the_last_listing_to_the_next() {
    let mut gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.collect_garbage();
    gateway.restart();
    let scanned = gateway.store().index.last_orphan_scan_ms().unwrap().expect("the collection listed the upstream");
    let packs = gateway.dir.path().join("data/upstream/packs");
    std::fs::create_dir_all(&packs).unwrap();
    let orphan = packs.join("written-after-the-listing");
    std::fs::write(&orphan, b"frames nobody committed").unwrap();
    // The grace period is zero: an orphan comes of age when it is written.
    let dated = |ms: i64| {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
        std::fs::File::options().write(true).open(&orphan).unwrap().set_modified(at).unwrap();
    };

    // Dated two seconds after the listing, once that is in the past.
    while tensorgate::ids::now_ms() < scanned + 2500 {
        std::thread::sleep(Duration::from_millis(100));
    }
    dated(scanned + 2000);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.notes.iter().any(|note| note.starts_with("orphans of age after the last orphan listing") && note.ends_with(": 1 unreferenced upstream objects")), "{:?}", report.notes);

    dated(scanned);
    let report = gateway.fsck();
    assert!(report.problems.iter().any(|problem| problem.contains("written-after-the-listing")), "{:?}", report.problems);
}

/// A time of the last orphan listing that the index cannot read is a problem fsck reports,
/// not a listing it takes never to have happened in silence; a repair records a new one.
#[test]
fn fsck_reports_a_last_listing_that_is_no_time() {
    let mut gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.collect_garbage();
    gateway.restart_changing_index(|index| {
        index.open_tree("meta").unwrap().insert("orphan-scan", &b"no time"[..]).unwrap();
    });
    let report = gateway.fsck();
    assert!(report.problems.iter().any(|problem| problem.contains("\"orphan-scan\" value is malformed")), "{:?}", report.problems);

    let repaired = gateway.fsck_repairing();
    assert!(repaired.repaired.iter().any(|repair| repair.contains("\"orphan-scan\" value is malformed")), "{:?}", repaired.repaired);
    assert!(gateway.store().index.last_orphan_scan_ms().unwrap().is_some());
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A grace period too long for a clock in milliseconds (`u64::MAX` seconds, meant as "never")
/// keeps every freed chunk and the packs that hold them: it once wrapped round to a negative
/// grace, under which a collection deleted them at once.
#[test]
fn a_grace_longer_than_the_clock_keeps_what_was_freed() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.gc_grace_secs = u64::MAX);
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://kept"]);
    let noise = work.path().join("noise");
    std::fs::write(&noise, support::noise(300_000, 5)).unwrap();
    gateway.aws(&["s3", "cp", noise.to_str().unwrap(), "s3://kept/noise"]);
    gateway.aws(&["s3", "rm", "s3://kept/noise"]);
    let packs = || std::fs::read_dir(gateway.dir.path().join("data/upstream/packs")).unwrap().count();
    let stored = packs();
    assert!(stored > 0 && !gateway.store().index.dead_chunks(i64::MAX).unwrap().is_empty(), "the deleted object freed no chunk");
    let collected = gateway.collect_garbage();
    assert_eq!((collected.chunks, collected.upstream_objects), (0, 0), "{collected:?}");
    assert_eq!(packs(), stored, "a pack was deleted");
}
