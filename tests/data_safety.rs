//! Data safety under races (issue 12): concurrent first writes of one model, a dedup hit racing
//! garbage collection, DeleteBucket racing PUTs; and what `index rebuild` and fsck make of the
//! upstream afterwards. Real clients (aws cli, boto3) against the local directory and moto.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tensorgate_index::Envelope;

/// Groups of writers, each group storing one new model under as many keys at once.
const GROUPS: usize = 4;
const WRITERS: usize = 3;

/// Starts the aws cli processes of one group together, so that their first writes overlap.
fn race_group(gateway: &TestGateway, file: &Path, group: usize) -> Vec<(String, PathBuf)> {
    let children: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let key = format!("g{group}/w{writer}");
            let child = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY)
                .args(["s3", "cp", file.to_str().unwrap(), &format!("s3://race/{key}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (key, child)
        })
        .collect();
    children
        .into_iter()
        .map(|(key, child)| {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{key}: {}", String::from_utf8_lossy(&output.stderr));
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

/// Rebuilds the index of `gateway`'s data directory from the upstream alone, as `tensorgate
/// index rebuild` does after the index is lost, and starts a gateway over it.
fn rebuilt(gateway: TestGateway) -> TestGateway {
    let TestGateway { gateway: running, runtime, dir, moto, .. } = gateway;
    let config = running.as_ref().unwrap().store.config.clone();
    running.unwrap().stop();
    drop(runtime);
    std::fs::remove_dir_all(config.data_dir.join("index")).unwrap();
    let store = tensorgate::server::open_store(&config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = runtime.block_on(tensorgate::catalog::rebuild(&store, &|_, _| {})).unwrap();
    assert!(report.unreadable.is_empty(), "objects lost to the rebuild: {:?}", report.unreadable);
    drop(store);
    let running = runtime.block_on(tensorgate::server::start_with(config.clone(), tensorgate::server::open_upstream(&config).unwrap())).unwrap();
    let endpoint = format!("http://{}", running.address);
    TestGateway { gateway: Some(running), runtime, endpoint, dir, moto }
}

/// Three writers store one new model at once under different keys, in several groups: each
/// write its own pack; the index keeps one copy of each chunk. After garbage collection has
/// deleted the copies the index dropped, and after the index is lost and rebuilt from the
/// upstream alone, every object reads back byte-identical, and fsck is clean.
fn concurrent_first_writes_survive_gc_and_rebuild(kind: UpstreamKind) {
    let gateway = TestGateway::start(kind);
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
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    read_back(&gateway, work.path(), &expected);
    let gateway = rebuilt(gateway);
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
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
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
    std::fs::write(&path, manifest.seal()).unwrap();
    assert!(manifests.is_dir());

    let report = gateway.fsck();
    let named = report.problems.iter().filter(|p| p.contains("race/second") && p.contains("packs/deleted-by-gc")).count();
    assert!(named > 0, "fsck did not name the manifest and the missing pack: {:?}", report.problems);
    let store = gateway.gateway.as_ref().unwrap().store.clone();
    let options = tensorgate::fsck::FsckOptions { verify_frames: false, repair: true };
    let repaired = gateway.runtime.block_on(tensorgate::fsck::fsck(&store, options, &|_, _| {})).unwrap();
    assert!(repaired.repaired.iter().any(|r| r.contains("race/second")), "{:?}", repaired.repaired);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "after --repair: {:?}", report.problems);

    // Broken again, then the index is lost: the rebuild finds the chunks in the pack that
    // holds them (through the other manifest), and recovery writes the manifest right.
    std::fs::write(&path, manifest.seal()).unwrap();
    let gateway = rebuilt(gateway);
    read_back(&gateway, work.path(), &expected);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "after the rebuild: {:?}", report.problems);
}

/// A PUT whose every chunk deduplicates against chunks that no object uses any more, while a
/// garbage collection runs between its dedup hits and its commit: the sweep leaves the held
/// chunks alone and the write succeeds (no 500 "referenced but not stored").
#[test]
fn a_dedup_hit_survives_a_sweep_before_its_commit() {
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiting = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (held_handle, waiting_handle) = (held.clone(), waiting.clone());
    let gateway = TestGateway::start_wrapped(UpstreamKind::LocalDirectory, |_| {}, move |upstream| {
        let mut gated = support::faults::GatedUpstream::new(upstream, "manifests/");
        gated.held = held_handle;
        gated.waiting = waiting_handle;
        Arc::new(gated)
    });
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("model.safetensors");
    std::fs::write(&file, perturbed_model(&corpus("base/minilm-l6.bf16.safetensors"), 3)).unwrap();
    gateway.aws(&["s3", "mb", "s3://race"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://race/old"]);
    gateway.aws(&["s3", "rm", "s3://race/old"]);
    let dead = gateway.store().index.dead_chunks(i64::MAX).unwrap().len();
    assert!(dead > 10, "the deleted model's chunks are dead: {dead}");

    held.store(true, Ordering::SeqCst);
    let writer = {
        let mut command = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY);
        command.args(["s3", "cp", file.to_str().unwrap(), "s3://race/new"]).env("AWS_MAX_ATTEMPTS", "1");
        std::thread::spawn(move || command.output().unwrap())
    };
    let started = Instant::now();
    while waiting.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "the PUT never reached its manifest");
        std::thread::sleep(Duration::from_millis(20));
    }
    let collected = gateway.collect_garbage();
    held.store(false, Ordering::SeqCst);
    let output = writer.join().unwrap();
    assert!(output.status.success(), "the deduplicating PUT failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(collected.chunks, 0, "the sweep collected chunks a write in progress held");
    read_back_key(&gateway, work.path(), "new", &file);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn read_back_key(gateway: &TestGateway, work: &Path, key: &str, file: &Path) {
    read_back(gateway, work, &[(key.to_owned(), file.to_owned())]);
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
