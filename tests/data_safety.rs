//! Data safety under races (issue 12): concurrent first writes of one model, a dedup hit racing
//! garbage collection, DeleteBucket racing PUTs; and what `index rebuild` and fsck make of the
//! upstream afterwards; a damaged base never served through a delta. Real clients (aws cli,
//! boto3) against the local directory and moto.

mod support;

use std::path::{Path, PathBuf};

use support::*;
use tensorgate_index::Envelope;

/// Groups of writers, each group storing one new model under as many keys at once.
const GROUPS: usize = 4;
const WRITERS: usize = 3;

/// The writers of one group send all but the last bytes of the same new model under their
/// own keys, pause together, then finish: each has stored its chunks in its own pack before
/// any of them commits, so every commit but the first finds the chunks stored already.
fn race_group(gateway: &TestGateway, file: &Path, group: usize) -> Vec<(String, PathBuf)> {
    let size = std::fs::metadata(file).unwrap().len() as usize;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let key = format!("g{group}/w{writer}");
            let child = slow_put(&gateway.endpoint, "race", &key, file, size - 1, 4.0);
            (key, child)
        })
        .collect();
    writers
        .into_iter()
        .map(|(key, child)| {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{key}: {}", String::from_utf8_lossy(&output.stdout));
            (key, file.to_owned())
        })
        .collect()
}

fn read_back(gateway: &TestGateway, work: &Path, expected: &[(String, PathBuf)]) {
    let out = work.join("read-back");
    for (key, file) in expected {
        let _ = std::fs::remove_file(&out);
        gateway.aws(&["s3", "cp", &format!("s3://race/{key}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(file).unwrap(), "{key} does not read back byte-identical");
        assert_eq!(gateway.etag("race", key), md5_hex(&std::fs::read(file).unwrap()), "{key}");
    }
}

/// Rebuilds the index from the upstream alone; no object may be lost to it.
fn rebuild(gateway: &mut TestGateway) {
    let report = gateway.rebuild_index();
    println!("rebuilt: {report:?}");
    assert!(report.unreadable.is_empty(), "objects lost to the rebuild: {:?}", report.unreadable);
}

/// Three writers store one new model at once under different keys, in several groups: each
/// write its own pack; the index keeps one copy of each chunk. After garbage collection has
/// deleted the copies the index dropped, and after the index is lost and rebuilt from the
/// upstream alone, every object reads back byte-identical, and fsck is clean.
fn concurrent_first_writes_survive_gc_and_rebuild(kind: UpstreamKind) {
    let mut gateway = TestGateway::start(kind);
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://race"]);
    let mut expected = Vec::new();
    for group in 0..GROUPS {
        let file = work.path().join(format!("model-{group}.safetensors"));
        std::fs::write(&file, perturbed_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), group as u8 + 1)).unwrap();
        expected.extend(race_group(&gateway, &file, group));
    }
    let collected = gateway.collect_garbage();
    println!("after {GROUPS} groups of {WRITERS} racing writers: {collected:?}");
    // Every group raced: at least one writer of each stored a copy the index did not keep.
    assert!(collected.upstream_objects >= GROUPS, "the writers did not race: {} packs collected", collected.upstream_objects);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    read_back(&gateway, work.path(), &expected);
    rebuild(&mut gateway);
    read_back(&gateway, work.path(), &expected);
    gateway.collect_garbage();
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "after the rebuild: {:?}", report.problems);
    read_back(&gateway, work.path(), &expected);
}

#[test]
fn concurrent_first_writes_survive_gc_and_rebuild_over_local_directory() {
    concurrent_first_writes_survive_gc_and_rebuild(UpstreamKind::LocalDirectory);
}

#[test]
fn concurrent_first_writes_survive_gc_and_rebuild_over_moto() {
    concurrent_first_writes_survive_gc_and_rebuild(UpstreamKind::Moto);
}

/// A manifest whose chunk table names a pack that is not upstream (what the race above left
/// before it was fixed) is reported by fsck, written again from the index by `--repair`, and
/// an index rebuilt over it takes the chunk from the pack that holds it.
#[test]
fn fsck_finds_and_repairs_a_manifest_naming_a_missing_pack() {
    let mut gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://race"]);
    let file = work.path().join("model.safetensors");
    std::fs::write(&file, perturbed_model(&corpus("base/minilm-l6.bf16.safetensors"), 7)).unwrap();
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://race/first"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://race/second"]);
    let expected = vec![("first".to_owned(), file.clone()), ("second".to_owned(), file.clone())];
    let manifests = gateway.dir.path().join("data/upstream/manifests");
    let second = tensorgate_index::manifest_key("", "default", "race", "second");
    let path = gateway.dir.path().join("data/upstream").join(&second);
    let mut manifest = tensorgate_index::Manifest::open(&std::fs::read(&path).unwrap()).unwrap();
    for location in &mut manifest.chunks {
        location.pack = "packs/deleted-by-gc".to_owned();
    }
    std::fs::write(&path, manifest.seal().unwrap()).unwrap();
    assert!(manifests.is_dir());

    let report = gateway.fsck();
    let named = report.problems.iter().filter(|p| p.contains("race/second") && p.contains("packs/deleted-by-gc")).count();
    assert!(named > 0, "fsck did not name the manifest and the missing pack: {:?}", report.problems);
    let repaired = gateway.fsck_repairing();
    assert!(repaired.repaired.iter().any(|r| r.contains("race/second")), "{:?}", repaired.repaired);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "after --repair: {:?}", report.problems);

    // Broken again, then the index is lost: the rebuild finds the chunks in the pack that
    // holds them (through the other manifest), and recovery writes the manifest right.
    std::fs::write(&path, manifest.seal().unwrap()).unwrap();
    rebuild(&mut gateway);
    read_back(&gateway, work.path(), &expected);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "after the rebuild: {:?}", report.problems);
}

/// A PUT whose chunks deduplicate against chunks no object uses any more, with a garbage
/// collection between its dedup hits and its commit (the client pauses midway through its
/// body): the sweep leaves the chunks the write holds alone, and the write succeeds, where it
/// used to fail with 500 "chunk ... is referenced but not stored".
#[test]
fn a_dedup_hit_survives_a_sweep_before_its_commit() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("model.safetensors");
    std::fs::write(&file, perturbed_model(&corpus("base/minilm-l6.bf16.safetensors"), 3)).unwrap();
    gateway.aws(&["s3", "mb", "s3://race"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://race/old"]);
    gateway.aws(&["s3", "rm", "s3://race/old"]);
    let dead = gateway.store().index.dead_chunks(i64::MAX).unwrap().len();
    assert!(dead > 10, "the deleted model's chunks are dead: {dead}");

    let size = std::fs::metadata(&file).unwrap().len() as usize;
    let deduplicated = gateway.store().metrics.chunks.get_or_create(&tensorgate::metrics::ChunkLabels { outcome: "deduplicated" }).clone();
    let before = deduplicated.get();
    let writer = slow_put(&gateway.endpoint, "race", "new", &file, size * 9 / 10, 3.0);
    let started = std::time::Instant::now();
    while deduplicated.get() < before + 5 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the PUT made no dedup hit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let collected = gateway.collect_garbage();
    let output = writer.wait_with_output().unwrap();
    let status = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the deduplicating PUT failed: {status}");
    println!("{dead} dead chunks; a sweep during the PUT collected {}", collected.chunks);
    assert!(collected.chunks < dead, "the sweep collected every chunk, those a write in progress held included");
    read_back(&gateway, work.path(), &[("new".to_owned(), file.clone())]);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// 20 rounds of DeleteBucket racing PUTs into the bucket (tests/clients/bucket_race.py): every
/// acknowledged PUT is readable, or the delete failed; a bucket created again is empty; fsck
/// finds no object outside a bucket.
#[test]
fn delete_bucket_racing_puts_loses_no_acknowledged_write() {
    for kind in [UpstreamKind::LocalDirectory, UpstreamKind::Moto] {
        let gateway = TestGateway::start(kind);
        let said = gateway.python_client("bucket_race.py", &["20".as_ref()]);
        println!("{kind:?}: {said}");
        assert!(said.contains("all checks passed"), "{said}");
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{kind:?}: {:?}", report.problems);
    }
}

/// Under 10% upstream faults (errors, short reads, stalls) a concurrent workload of uploads and
/// downloads sees no corrupt read, and once the faults stop every acknowledged write reads back.
/// With the upstream down, a GET that needs it answers 503 before any byte (the chunk cache is
/// off here: a GET of chunks it keeps would be served, rightly, without the upstream).
#[test]
fn upstream_faults_never_corrupt_or_lose_acknowledged_writes() {
    let injected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (injected_handle, enabled_handle, down_handle) = (injected.clone(), enabled.clone(), down.clone());
    let no_chunk_cache = |config: &mut tensorgate::config::Config| config.chunk_cache_bytes = 0;
    let gateway = TestGateway::start_wrapped(UpstreamKind::LocalDirectory, no_chunk_cache, move |upstream| {
        let mut faulty = support::faults::FaultyUpstream::new(upstream, 100);
        faulty.enabled = enabled_handle;
        faulty.injected = injected_handle;
        faulty.down = down_handle;
        std::sync::Arc::new(faulty)
    });
    let work = tempfile::tempdir().unwrap();
    let noise_file = work.path().join("noise");
    std::fs::write(&noise_file, noise(700_000, 5)).unwrap();
    let files = [
        corpus("base/minilm-l6.bf16.safetensors"),
        corpus("ft/ft-a-contrastive.bf16.safetensors"),
        corpus("lora/lora-r8-qv-merged.bf16.safetensors"),
        noise_file,
    ];
    let state = work.path().join("state.json");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/fault_workload.py");
    let run = |mode: &str| {
        let output = std::process::Command::new("python3")
            .arg(&script)
            .args([gateway.endpoint.as_str(), mode])
            .arg(&state)
            .args(if mode == "load" { files.iter().map(|f| f.as_os_str()).collect() } else { Vec::new() })
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let load = run("load");
    enabled.store(false, std::sync::atomic::Ordering::Relaxed);
    let verify = run("verify");
    println!("faults injected: {}, load: {load}, after faults: {verify}", injected.load(std::sync::atomic::Ordering::Relaxed));
    assert!(injected.load(std::sync::atomic::Ordering::Relaxed) > 5, "the workload met too few faults");
    assert_eq!(load["corrupt_reads"], 0, "{load}");
    assert_eq!(verify["corrupt_reads"], 0, "{verify}");
    assert_eq!(verify["lost"], 0, "{verify}");
    assert!(load["acknowledged"].as_u64().unwrap() > 10, "{load}");
    down.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = work.path().join("out");
    let unavailable = gateway.aws_unchecked(&["s3api", "get-object", "--bucket", "faults", "--key", "t0-k0", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&unavailable.stderr);
    assert!(stderr.contains("ServiceUnavailable"), "a GET with the upstream down must get a 503: {stderr}");
}

/// Parallel PUTs of one key, PUTs racing DELETEs, and GETs while the packer swaps a manifest
/// and GC (every second, no grace) collects: every reader sees a whole old or new object, and
/// the index is consistent afterwards.
#[test]
fn concurrent_writers_and_readers_see_whole_objects() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.gc_interval_secs = 1);
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.safetensors");
    std::fs::write(&big, replicated_model(&corpus("ft/ft-b-mlm.bf16.safetensors"), 6)).unwrap();
    let noise_file = work.path().join("noise");
    std::fs::write(&noise_file, noise(400_000, 11)).unwrap();
    let (base, tuned) = (corpus("base/minilm-l6.bf16.safetensors"), corpus("ft/ft-a-contrastive.bf16.safetensors"));
    gateway.python_client("concurrency.py", &[big.as_os_str(), base.as_os_str(), tuned.as_os_str(), noise_file.as_os_str()]);
    gateway.drain_packer();
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A base read back wrong (a byte of its pack changed, then mended) makes the GET of a
/// fine-tune stored as deltas against it fail rather than answer wrong bytes, and is not kept:
/// once the pack is whole again, the fine-tune reads back. Bases are decoded for deltas without
/// their own check, which the delta's covers (`engine::chunk_cache::Checked`).
#[test]
fn a_base_read_wrong_is_neither_served_nor_kept() {
    use tensorgate_codec::frame::{Codec, FrameHeader};
    let mut gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let tuned = corpus("ft/ft-b-mlm.bf16.safetensors");
    gateway.aws(&["s3", "mb", "s3://bases"]);
    gateway.aws(&["s3", "cp", corpus("base/minilm-l6.bf16.safetensors").to_str().unwrap(), "s3://bases/base"]);
    gateway.aws(&["s3", "cp", tuned.to_str().unwrap(), "s3://bases/tuned"]);
    // A delta's base whose frame stores a plane as it is: a byte changed there still decodes,
    // to wrong bytes.
    let upstream = gateway.dir.path().join("data/upstream");
    let (pack, at) = {
        let store = gateway.store();
        let bases: Vec<_> = store.index.chunks_after(None).map(Result::unwrap).filter_map(|(_, record)| record.base).collect();
        bases
            .iter()
            .find_map(|base| {
                let record = store.index.chunk(base).unwrap().unwrap();
                let bytes = std::fs::read(upstream.join(&record.pack)).unwrap();
                let frame = &bytes[record.offset as usize..][..record.frame_len as usize];
                let header = FrameHeader::read(frame).unwrap();
                if header.codec != Codec::Planes || header.base.is_some() {
                    return None;
                }
                let mut plane = header.header_len();
                for _ in 0..header.width {
                    let body_len = u32::from_le_bytes(frame[plane + 1..plane + 5].try_into().unwrap()) as usize;
                    if frame[plane] == 0 && body_len > 16 {
                        return Some((upstream.join(&record.pack), record.offset as usize + plane + 5 + body_len / 2));
                    }
                    plane += 5 + body_len;
                }
                None
            })
            .expect("a base stored as planes, one of them as it is")
    };
    let whole = std::fs::read(&pack).unwrap();
    let mut damaged = whole.clone();
    damaged[at] ^= 0x01;
    std::fs::write(&pack, &damaged).unwrap();
    // Nothing kept from the uploads: the base is read from the damaged pack.
    gateway.restart();
    let out = work.path().join("tuned");
    let answer = gateway.aws_unchecked(&["s3", "cp", "s3://bases/tuned", out.to_str().unwrap()]);
    assert!(!answer.status.success(), "the fine-tune was answered over a damaged base");
    std::fs::write(&pack, &whole).unwrap();
    gateway.aws(&["s3", "cp", "s3://bases/tuned", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&tuned).unwrap(), "the fine-tune read back wrong once its base was whole");
}
