//! Several gateways over one upstream lose no acknowledged write: every manifest change is
//! conditional on what its writer saw upstream, so recovery after a kill, the clean-up after
//! a failed delete and the packer never put back an older version over a peer's newer one; a
//! packed object gets a new version that peers read; fsck away from the lease raises no false
//! alarm. Each test holds or fails upstream requests at the moment that used to lose data.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::faults::GatedUpstream;
use support::shared::*;
use support::*;

/// Waits until `gated` holds at least one write back.
fn wait_for_held_write(gated: &GatedUpstream) {
    let started = Instant::now();
    while gated.waiting.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no write reached the gate");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway over `moto` whose writes under `prefix` can be held back and whose deletes there
/// can be failed; returns the gate too.
fn gated_gateway(moto: &Moto, data_dir: &std::path::Path, prefix: &str) -> (TestGateway, Arc<GatedUpstream>) {
    let mut gate = None;
    let gateway = shared_gateway_over(moto, data_dir, true, |_| {}, |upstream| {
        let gated = Arc::new(GatedUpstream::new(upstream, prefix));
        gate = Some(gated.clone());
        gated
    });
    (gateway, gate.unwrap())
}

/// Gateway a is killed while its manifest write for a key is in flight; gateway b then writes
/// a newer version and answers 200. When a restarts, its recovery adopts b's version instead
/// of writing its own index's older one back.
#[test]
fn recovery_after_a_kill_keeps_a_peers_newer_write() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, gate) = gated_gateway(&moto, state_a.path(), "manifests/");
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3", "mb", "s3://models"]);
    put(&a, &noise(40_000, 1), "s3://models/k", &[], scratch.path());
    put(&a, &noise(40_000, 2), "s3://models/new", &[], scratch.path());

    gate.held.store(true, Ordering::SeqCst);
    let held_file = scratch.path().join("held");
    std::fs::write(&held_file, noise(40_000, 3)).unwrap();
    let mut held_put = aws_command(&a.endpoint, ACCESS_KEY, SECRET_KEY)
        .args(["s3", "cp", held_file.to_str().unwrap(), "s3://models/k", "--cli-read-timeout", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_held_write(&gate);
    put(&b, &noise(40_000, 4), "s3://models/k", &[], scratch.path());
    put(&b, &noise(40_000, 5), "s3://models/fresh", &[], scratch.path());
    b.aws(&["s3", "rm", "s3://models/new"]);
    kill(a);
    let _ = held_put.kill();
    let _ = held_put.wait();

    let a = shared_upstream_gateway(&moto, state_a.path(), true);
    for gateway in [&a, &b] {
        assert_eq!(md5_through(gateway, "models", "k", scratch.path()), Some(md5_hex(&noise(40_000, 4))), "b's acknowledged write survives");
        assert_eq!(md5_through(gateway, "models", "new", scratch.path()), None, "b's acknowledged delete survives");
        assert_eq!(md5_through(gateway, "models", "fresh", scratch.path()), Some(md5_hex(&noise(40_000, 5))));
    }
    for gateway in [&a, &b] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// A DELETE through a gateway whose index is behind fails upstream (503): the clean-up adopts
/// the version a peer wrote meanwhile instead of writing the older one back.
#[test]
fn a_failed_delete_never_reverts_a_peers_write() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, gate) = gated_gateway(&moto, state_a.path(), "manifests/");
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3", "mb", "s3://models"]);
    put(&a, &noise(30_000, 1), "s3://models/k", &[], scratch.path());
    put(&b, &noise(30_000, 2), "s3://models/k", &[], scratch.path());

    gate.failing_deletes.store(true, Ordering::SeqCst);
    let refused = a.boto3_unchecked(&["delete", "models", "k"]);
    assert!(!refused.status.success(), "the delete cannot succeed while the upstream fails it");
    gate.failing_deletes.store(false, Ordering::SeqCst);
    for gateway in [&a, &b] {
        assert_eq!(md5_through(gateway, "models", "k", scratch.path()), Some(md5_hex(&noise(30_000, 2))), "b's write survives a's failed delete");
    }
    a.boto3(&["delete", "models", "k"]);
    for gateway in [&a, &b] {
        assert_eq!(md5_through(gateway, "models", "k", scratch.path()), None);
    }
}

/// Uploads a model made of three copies of corpus file `source` by multipart through `gateway`
/// while its packer's pack writes are held, then waits until the packer is stuck on one.
fn multipart_model_with_packer_held(gateway: &TestGateway, gate: &GatedUpstream, source: &str, key: &str, scratch: &std::path::Path) -> Vec<u8> {
    let model = replicated_model(&corpus(source), 3);
    let file = scratch.join("model");
    std::fs::write(&file, &model).unwrap();
    gate.held.store(true, Ordering::SeqCst);
    gateway.boto3(&["put", file.to_str().unwrap(), "models", key, "--multipart"]);
    wait_for_held_write(gate);
    model
}

/// The packer re-encodes a multipart object on one gateway while a peer overwrites or deletes
/// it: the packer's manifest write finds a version it did not read and gives up, so the peer's
/// acknowledged write (or delete) stands.
#[test]
fn the_packer_never_replaces_a_peers_newer_write_or_delete() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, gate) = gated_gateway(&moto, state_a.path(), "packs/");
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3", "mb", "s3://models"]);

    multipart_model_with_packer_held(&a, &gate, "ft/ft-b-mlm.bf16.safetensors", "overwritten", scratch.path());
    put(&b, &noise(20_000, 7), "s3://models/overwritten", &[], scratch.path());
    gate.held.store(false, Ordering::SeqCst);
    a.drain_packer();
    multipart_model_with_packer_held(&a, &gate, "ft/ft-a-contrastive.bf16.safetensors", "deleted", scratch.path());
    b.aws(&["s3", "rm", "s3://models/deleted"]);
    gate.held.store(false, Ordering::SeqCst);
    a.drain_packer();

    let fresh_state = tempfile::tempdir().unwrap();
    let fresh = shared_upstream_gateway(&moto, fresh_state.path(), true);
    for gateway in [&a, &b, &fresh] {
        assert_eq!(md5_through(gateway, "models", "overwritten", scratch.path()), Some(md5_hex(&noise(20_000, 7))));
        assert_eq!(md5_through(gateway, "models", "deleted", scratch.path()), None);
    }
}

/// A peer reads a multipart object as uploaded; the packer then re-encodes it and garbage
/// collection deletes its part blobs. The peer still reads it: the packed object is a new
/// version, which the peer's read finds upstream.
#[test]
fn a_packed_object_stays_readable_through_peers_after_its_parts_are_collected() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, gate) = gated_gateway(&moto, state_a.path(), "packs/");
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3", "mb", "s3://models"]);
    let model = multipart_model_with_packer_held(&a, &gate, "ft/ft-b-mlm.bf16.safetensors", "model", scratch.path());
    let as_uploaded = seen(&b, "models", "model", scratch.path());
    assert_eq!(as_uploaded.bytes, model);
    gate.held.store(false, Ordering::SeqCst);
    a.drain_packer();
    for _ in 0..2 {
        assert!(a.collect_garbage().leased);
    }
    assert_eq!(seen(&b, "models", "model", scratch.path()), as_uploaded, "same bytes and ETag after packing");
    for gateway in [&a, &b] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// A pack in the lease holder's trash (its object deleted, waiting out the grace period) is no
/// orphan: fsck on a gateway without the lease leaves orphans to the holder, and says so.
#[test]
fn fsck_away_from_the_lease_raises_no_false_orphans() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_grace = |data_dir: &std::path::Path| shared_gateway_over(&moto, data_dir, true, |config| config.gc_grace_secs = 2, |upstream| upstream);
    let (a, b) = (with_grace(state_a.path()), with_grace(state_b.path()));
    a.aws(&["s3", "mb", "s3://models"]);
    put(&a, &std::fs::read(corpus("base/minilm-l6.bf16.safetensors")).unwrap(), "s3://models/base", &[], scratch.path());
    a.aws(&["s3", "rm", "s3://models/base"]);
    std::thread::sleep(Duration::from_millis(2500));
    let collected = a.collect_garbage();
    assert!(collected.leased && collected.chunks > 0, "{collected:?}");

    let away = b.fsck();
    assert!(away.problems.is_empty(), "{:?}", away.problems);
    assert!(away.notes.iter().any(|note| note.contains("lease")), "{:?}", away.notes);
    let holder = a.fsck();
    assert!(holder.problems.is_empty(), "the pack is in the holder's trash: {:?}", holder.problems);
}

/// A pack that only a peer's object named at the holder's last orphan listing, freed since, is
/// no problem for the holder's fsck, before a restart or after: the next listing sends it to
/// the trash. An object nothing named at that listing, and that is not in the trash, still is.
#[test]
fn fsck_leaves_what_a_peer_freed_after_the_listing_to_the_next() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = shared_gateway_over(&moto, state_a.path(), true, |_| {}, |upstream| upstream);
    let b = shared_gateway_over(&moto, state_b.path(), true, |_| {}, |upstream| upstream);
    a.aws(&["s3", "mb", "s3://models"]);
    // Written through b and never read or synced through a: only b's manifest names its pack.
    put(&b, &noise(300_000, 9), "s3://models/peer", &[], scratch.path());
    let stray = "packs/named-by-nothing";
    let frames = bytes::Bytes::from_static(b"frames nobody committed");
    a.runtime.block_on(tensorgate::upstream::put(&*a.store().upstream, stray, frames)).unwrap();
    let collected = a.collect_garbage();
    assert!(collected.leased && collected.orphans == 1, "only the stray is an orphan: {collected:?}");
    b.aws(&["s3", "rm", "s3://models/peer"]);

    let freed_since = |report: &tensorgate::maintenance::fsck::FsckReport| {
        report.notes.iter().any(|note| note.starts_with("orphans that only upstream records or writes in flight held at or since the last orphan listing") && note.ends_with(": 1 unreferenced upstream objects"))
    };
    let report = a.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(freed_since(&report), "{:?}", report.notes);

    // The stray taken out of the trash, as if the listing had missed it.
    a.restart_changing_index(|index| {
        index.open_tree("trash").unwrap().remove(stray).unwrap().expect("the listing sent the stray to the trash");
    });
    let report = a.fsck();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains(stray), "{:?}", report.problems);
    assert!(freed_since(&report), "{:?}", report.notes);

    let collected = a.collect_garbage();
    assert_eq!(collected.orphans, 2, "{collected:?}");
    let report = a.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A blob the holder's collection takes out of its trash because only a peer's part marker
/// names it, and that the peer frees after (its upload aborted), is the next orphan listing's:
/// the holder's fsck notes it rather than reporting it.
#[test]
fn fsck_leaves_a_blob_taken_out_of_the_trash_for_a_peer_and_freed_since_to_the_next() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Blobs of age at once; a listing at the first collection only, so that the second one
    // takes the blob out of the trash with no listing to record it instead.
    let blobs_at_once = |config: &mut tensorgate::config::Config| {
        config.orphan_blob_secs = 0;
        config.orphan_scan_secs = 3600;
    };
    let a = shared_gateway_over(&moto, state_a.path(), true, blobs_at_once, |upstream| upstream);
    let b = shared_gateway_over(&moto, state_b.path(), true, blobs_at_once, |upstream| upstream);
    a.aws(&["s3", "mb", "s3://models"]);
    // b's upload in progress: its part's blob is named by b's part marker alone.
    let json = |output: std::process::Output| -> serde_json::Value { serde_json::from_slice(&output.stdout).unwrap() };
    let created = json(b.aws(&["s3api", "create-multipart-upload", "--bucket", "models", "--key", "dropped"]));
    let upload_id = created["UploadId"].as_str().unwrap().to_owned();
    let part_file = scratch.path().join("part");
    std::fs::write(&part_file, noise(1 << 20, 3)).unwrap();
    b.aws(&["s3api", "upload-part", "--bucket", "models", "--key", "dropped", "--part-number", "1", "--upload-id", &upload_id, "--body", part_file.to_str().unwrap()]);
    let store = a.store();
    let blobs: Vec<String> = store
        .config
        .upstream_prefixes()
        .into_iter()
        .flat_map(|prefix| a.runtime.block_on(store.upstream.list(&format!("{prefix}blobs/"))).unwrap())
        .map(|listed| listed.key)
        .collect();
    let [blob] = &blobs[..] else { panic!("the part is not one blob: {blobs:?}") };

    // In a's trash, as if a listing had sent it there before b's marker was written; dated
    // ahead, so that a's first collection lists the upstream (which skips what is in the
    // trash) and leaves the entry.
    store.index.trash_key(blob, i64::MAX).unwrap();
    let collected = a.collect_garbage();
    assert!(collected.leased && collected.orphans == 0, "{collected:?}");
    assert!(store.index.in_trash(blob).unwrap() && !store.index.spared_from_orphan_scan(blob).unwrap());
    // Of age now: the next collection, with no listing due, takes it out for b's marker.
    store.index.forget_trash(blob).unwrap();
    store.index.trash_key(blob, 0).unwrap();
    a.collect_garbage();
    assert!(!store.index.in_trash(blob).unwrap() && store.index.spared_from_orphan_scan(blob).unwrap());

    b.aws(&["s3api", "abort-multipart-upload", "--bucket", "models", "--key", "dropped", "--upload-id", &upload_id]);
    let report = a.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let freed_since = "orphans that only upstream records or writes in flight held at or since the last orphan listing";
    assert!(report.notes.iter().any(|note| note.starts_with(freed_since) && note.ends_with(": 1 unreferenced upstream objects")), "{:?}", report.notes);
}

/// Two gateways store one new model at once, each in its own pack; the only manifest left
/// names b's copy, while a's index reads its own. b's collector condemns a's pack, a's sync
/// vetoes it, and the pack stays: a keeps reading, and what a writes against its copy stays
/// readable from the upstream alone after the other objects are gone.
#[test]
fn a_pack_a_peer_still_reads_is_never_deleted() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, model) = one_chunk_in_two_packs(&moto, state_a.path(), state_b.path(), scratch.path());
    let collect_while_a_syncs = || {
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(1100));
            assert!(b.collect_garbage().leased, "b holds the lease");
            sync(&a);
        }
    };
    collect_while_a_syncs();
    assert_eq!(md5_through(&a, "models", "second", scratch.path()), Some(md5_hex(&model)), "a still reads its copy");
    put(&a, &model, "s3://models/third", &[], scratch.path());
    b.aws(&["s3", "rm", "s3://models/second"]);
    collect_while_a_syncs();
    let fresh_state = tempfile::tempdir().unwrap();
    let fresh = shared_upstream_gateway(&moto, fresh_state.path(), true);
    for gateway in [&a, &b, &fresh] {
        assert_eq!(md5_through(gateway, "models", "third", scratch.path()), Some(md5_hex(&model)));
    }
    for gateway in [&a, &b, &fresh] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// Gateway x holds a fine-tune as a delta against its base; gateway y, which never saw the
/// base, holds the same fine-tune standalone and stores a close variant as a delta against it.
/// x reads the variant (its base is a delta there: decoded with its own base), and so does a
/// gateway whose index was rebuilt from the upstream alone.
#[test]
fn a_delta_written_through_one_gateway_reads_through_another_that_holds_its_base_as_a_delta() {
    let moto = Moto::start();
    let (state_x, state_y, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let x = shared_upstream_gateway(&moto, state_x.path(), true);
    let y = shared_upstream_gateway(&moto, state_y.path(), true);
    let tuned_path = corpus("ft/ft-a-contrastive.bf16.safetensors");
    let (base, tuned, variant) =
        (std::fs::read(corpus("base/minilm-l6.bf16.safetensors")).unwrap(), std::fs::read(&tuned_path).unwrap(), perturbed_model(&tuned_path, 3));
    x.aws(&["s3", "mb", "s3://models"]);
    put(&x, &base, "s3://models/base", &[], scratch.path());
    put(&x, &tuned, "s3://models/tuned", &[], scratch.path());
    put(&y, &tuned, "s3://models/tuned-again", &[], scratch.path());
    put(&y, &variant, "s3://models/variant", &[], scratch.path());
    let deltas = |gateway: &TestGateway| gateway.store().index.all_chunks().map(Result::unwrap).filter(|(_, chunk)| chunk.base.is_some()).count();
    assert!(deltas(&x) > 0 && deltas(&y) > 0, "both gateways stored deltas");

    assert_eq!(md5_through(&x, "models", "variant", scratch.path()), Some(md5_hex(&variant)));
    let state_rebuilt = tempfile::tempdir().unwrap();
    let mut rebuilt = shared_upstream_gateway(&moto, state_rebuilt.path(), true);
    rebuilt.rebuild_index();
    for gateway in [&x, &y, &rebuilt] {
        assert_eq!(md5_through(gateway, "models", "variant", scratch.path()), Some(md5_hex(&variant)));
        assert_eq!(md5_through(gateway, "models", "tuned", scratch.path()), Some(md5_hex(&tuned)));
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// Compaction with a shared upstream: the lease holder copies the live frames of a sparse pack,
/// writes every manifest naming it again (a peer's included), and publishes the moves; the
/// peer points its index at the copies when the pack is condemned, so nobody vetoes and the
/// pack is deleted. Every object reads back through both gateways and a fresh one.
#[test]
fn compaction_with_a_shared_upstream_frees_the_pack_and_peers_follow() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_gateway_over(&moto, state_a.path(), true, short_grace, |upstream| upstream);
    let b = shared_gateway_over(&moto, state_b.path(), true, short_grace, |upstream| upstream);
    let kept_path = corpus("ft/ft-a-contrastive.bf16.safetensors");
    let kept = std::fs::read(&kept_path).unwrap();
    let both = combined_model(&[&kept_path, &corpus("ft/ft-b-mlm.bf16.safetensors"), &corpus("ft/ft-c-cls.bf16.safetensors")]);
    a.aws(&["s3", "mb", "s3://models"]);
    put(&a, &both, "s3://models/both", &[], scratch.path());
    put(&b, &kept, "s3://models/kept-by-b", &[], scratch.path());
    put(&a, &kept, "s3://models/kept-by-a", &[], scratch.path());
    // What the packer re-encodes of these uploads is in its pack before compaction looks.
    for gateway in [&a, &b] {
        gateway.drain_packer();
    }
    assert_eq!(md5_through(&b, "models", "kept-by-a", scratch.path()), Some(md5_hex(&kept)), "b reads the shared pack");
    let sparse_pack = a.store().index.chunk(&first_chunk(&a, "kept-by-a")).unwrap().unwrap().pack;
    a.aws(&["s3", "rm", "s3://models/both"]);

    let mut compacted = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1100));
        compacted += a.collect_garbage().packs_compacted;
        sync(&b);
    }
    assert_eq!(compacted, 1, "the pack was compacted once");
    let listed = aws_command(&moto.endpoint, "moto", "moto").args(["s3", "ls", "--recursive", "s3://upstream/"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&sparse_pack), "the sparse pack is deleted");
    let fresh_state = tempfile::tempdir().unwrap();
    let fresh = shared_upstream_gateway(&moto, fresh_state.path(), true);
    for gateway in [&a, &b, &fresh] {
        for key in ["kept-by-a", "kept-by-b"] {
            assert_eq!(md5_through(gateway, "models", key, scratch.path()), Some(md5_hex(&kept)), "{key}");
        }
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// The first chunk of an object, as the gateway's index holds it.
fn first_chunk(gateway: &TestGateway, key: &str) -> tensorgate_index::ChunkHash {
    let object = tensorgate_index::ObjectKey::new("default", "models", key);
    let record = gateway.store().index.object(&object).unwrap().unwrap();
    record.segments.iter().find_map(tensorgate_index::Segment::chunk_hash).unwrap()
}

/// A gateway that is down cannot veto: the collector waits for its acknowledgement before it
/// deletes a pack, so a pack the stopped gateway's index reads outlives any grace period, and
/// the gateway reads it again when it comes back.
#[test]
fn a_gateway_that_is_down_holds_pack_deletions_back() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, model) = one_chunk_in_two_packs(&moto, state_a.path(), state_b.path(), scratch.path());
    let own_pack = a.store().index.chunk(&first_chunk(&a, "second")).unwrap().unwrap().pack;
    sync(&a);
    kill(a);

    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1100));
        assert!(b.collect_garbage().leased);
    }
    let listed = aws_command(&moto.endpoint, "moto", "moto").args(["s3", "ls", "--recursive", "s3://upstream/"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&format!("condemned/{}", own_pack.rsplit('/').next().unwrap())), "b announced a's pack: {listed}");
    assert!(listed.contains(&own_pack), "but did not delete it while a was down");

    let a = shared_gateway_over(&moto, state_a.path(), true, short_grace, |upstream| upstream);
    assert_eq!(md5_through(&a, "models", "second", scratch.path()), Some(md5_hex(&model)), "a reads its copy again");
    sync(&a);
    assert!(b.collect_garbage().leased);
    let report = a.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Gateways a and b (grace period 1 s, orphans scanned at every collection) store one new model
/// each in its own pack; a reads b's object, then the object naming a's pack is deleted: the
/// only manifest left names b's copy, while a's index reads its own. Returns a, b and the model.
fn one_chunk_in_two_packs(moto: &Moto, state_a: &std::path::Path, state_b: &std::path::Path, scratch: &std::path::Path) -> (TestGateway, TestGateway, Vec<u8>) {
    let a = shared_gateway_over(moto, state_a, true, short_grace, |upstream| upstream);
    let b = shared_gateway_over(moto, state_b, true, short_grace, |upstream| upstream);
    let model = std::fs::read(corpus("ft/ft-a-contrastive.bf16.safetensors")).unwrap();
    a.aws(&["s3", "mb", "s3://models"]);
    put(&a, &model, "s3://models/first", &[], scratch);
    put(&b, &model, "s3://models/second", &[], scratch);
    assert_eq!(md5_through(&a, "models", "second", scratch), Some(md5_hex(&model)));
    a.aws(&["s3", "rm", "s3://models/first"]);
    (a, b, model)
}

/// A grace period of a second, and orphans looked for at every collection.
fn short_grace(config: &mut tensorgate::config::Config) {
    config.gc_grace_secs = 1;
    config.orphan_scan_secs = 0;
}

/// The parts of an upload in progress on gateway a are in no manifest and in no index of the
/// collector b: b's garbage collection, with orphans judged at once, must still leave them, and
/// the upload completes into the exact bytes.
#[test]
fn the_parts_of_a_peers_upload_in_progress_are_not_orphans() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let orphans_at_once = |config: &mut tensorgate::config::Config| {
        config.orphan_blob_secs = 0;
        config.orphan_scan_secs = 0;
    };
    let a = shared_gateway_over(&moto, state_a.path(), true, orphans_at_once, |upstream| upstream);
    let b = shared_gateway_over(&moto, state_b.path(), true, orphans_at_once, |upstream| upstream);
    a.aws(&["s3", "mb", "s3://models"]);
    let json = |output: std::process::Output| -> serde_json::Value { serde_json::from_slice(&output.stdout).unwrap() };
    let created = json(a.aws(&["s3api", "create-multipart-upload", "--bucket", "models", "--key", "open"]));
    let upload_id = created["UploadId"].as_str().unwrap().to_owned();
    let part = noise(6 << 20, 7);
    let part_file = scratch.path().join("part");
    std::fs::write(&part_file, &part).unwrap();
    let uploaded = json(a.aws(&[
        "s3api", "upload-part", "--bucket", "models", "--key", "open", "--part-number", "1", "--upload-id", &upload_id, "--body", part_file.to_str().unwrap(),
    ]));
    let etag = uploaded["ETag"].as_str().unwrap().to_owned();

    for _ in 0..2 {
        let collected = b.collect_garbage();
        assert!(collected.leased && collected.orphans == 0, "{collected:?}");
    }
    let parts = format!(r#"{{"Parts":[{{"ETag":{etag:?},"PartNumber":1}}]}}"#);
    a.aws(&["s3api", "complete-multipart-upload", "--bucket", "models", "--key", "open", "--upload-id", &upload_id, "--multipart-upload", &parts]);
    assert_eq!(seen(&b, "models", "open", scratch.path()).bytes, part);
}

/// A gateway whose heartbeat has not reached the upstream for half of `gateway_expiry_secs`
/// refuses writes with a retryable 503 (past the expiry the collector stops waiting for it and
/// may delete packs a new manifest would name), and takes them again once a sync catches up.
#[test]
fn a_gateway_out_of_step_refuses_writes_until_it_catches_up() {
    let moto = Moto::start();
    let (state, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_gateway_over(&moto, state.path(), true, |config| config.gateway_expiry_secs = 4, |upstream| upstream);
    a.aws(&["s3", "mb", "s3://models"]);
    sync(&a);
    put(&a, &noise(10_000, 1), "s3://models/in-step", &[], scratch.path());
    std::thread::sleep(Duration::from_millis(2500));
    let file = scratch.path().join("late");
    std::fs::write(&file, noise(10_000, 2)).unwrap();
    let refused = a.boto3_unchecked(&["put", file.to_str().unwrap(), "models", "late"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned() + &String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success() && said.contains("ServiceUnavailable"), "{said}");
    sync(&a);
    put(&a, &noise(10_000, 2), "s3://models/late", &[], scratch.path());
    assert_eq!(seen(&a, "models", "late", scratch.path()).bytes, noise(10_000, 2));
}
