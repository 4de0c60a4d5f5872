//! The upstream as the source of truth: `tensorgate index rebuild` restores a lost index from
//! the manifests upstream, and two gateways over one upstream serve each other's objects while
//! garbage collection on one never deletes what the other references.

mod support;


use support::shared::*;
use support::*;

#[test]
fn index_rebuild_restores_every_object_from_the_upstream() {
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = state.path().join("data");
    let keys = ["base", "tuned", "noise", "big-ft", "overwritten"];
    let before: Vec<Seen> = {
        let gateway = shared_upstream_gateway(&moto, &data_dir, false);
        gateway.aws(&["s3", "mb", "s3://kept"]);
        gateway.aws(&["s3", "mb", "s3://empty-bucket"]);
        let base = std::fs::read(corpus("base/minilm-l6.bf16.safetensors")).unwrap();
        let tuned = std::fs::read(corpus("ft/ft-a-contrastive.bf16.safetensors")).unwrap();
        put(&gateway, &base, "s3://kept/base", &[], scratch.path());
        put(&gateway, &tuned, "s3://kept/tuned", &["--metadata", "origin=ft-a,step=100"], scratch.path());
        put(&gateway, &noise(300_000, 1), "s3://kept/noise", &["--content-type", "application/x-noise"], scratch.path());
        let big = replicated_model(&corpus("ft/ft-b-mlm.bf16.safetensors"), 3);
        let big_file = scratch.path().join("big");
        std::fs::write(&big_file, &big).unwrap();
        gateway.boto3(&["put", big_file.to_str().unwrap(), "kept", "big-ft", "--multipart"]);
        gateway.drain_packer();
        put(&gateway, &noise(100_000, 2), "s3://kept/overwritten", &[], scratch.path());
        put(&gateway, &noise(120_000, 3), "s3://kept/overwritten", &[], scratch.path());
        put(&gateway, &noise(1000, 4), "s3://kept/deleted", &[], scratch.path());
        gateway.aws(&["s3", "rm", "s3://kept/deleted"]);
        keys.iter().map(|key| seen(&gateway, "kept", key, scratch.path())).collect()
    };
    std::fs::remove_dir_all(data_dir.join("index")).unwrap();

    let upstream = moto.upstream_config();
    let config_file = state.path().join("tensorgate.toml");
    std::fs::write(
        &config_file,
        format!(
            "data_dir = {:?}\n[upstream]\nendpoint = {:?}\nbucket = {:?}\nprefix = {:?}\naccess_key = \"moto\"\nsecret_key = \"moto\"\n",
            data_dir.to_str().unwrap(),
            upstream.endpoint,
            upstream.bucket,
            upstream.prefix
        ),
    )
    .unwrap();
    let rebuild = std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate"))
        .arg("--config")
        .arg(&config_file)
        .args(["index", "rebuild"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&rebuild.stdout);
    assert!(rebuild.status.success(), "{said}{}", String::from_utf8_lossy(&rebuild.stderr));
    assert!(said.contains("2 buckets") && said.contains("5 objects"), "{said}");

    let gateway = shared_upstream_gateway(&moto, &data_dir, false);
    for (key, expected) in keys.iter().zip(&before) {
        assert_eq!(&seen(&gateway, "kept", key, scratch.path()), expected, "{key} differs after the rebuild");
    }
    let listing = String::from_utf8_lossy(&gateway.aws(&["s3", "ls", "s3://kept/"]).stdout).into_owned();
    assert_eq!(listing.lines().count(), keys.len(), "{listing}");
    assert!(!gateway.aws_unchecked(&["s3api", "head-object", "--bucket", "kept", "--key", "deleted"]).status.success());
    assert!(gateway.aws(&["s3", "ls"]).stdout.windows(12).any(|w| w == b"empty-bucket"));
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn two_gateways_over_one_upstream_serve_each_other_and_gc_spares_the_other() {
    let moto = Moto::start();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let scratch = tempfile::tempdir().unwrap();
    let a = shared_upstream_gateway(&moto, state_a.path(), true);
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    let base = std::fs::read(corpus("base/minilm-l6.bf16.safetensors")).unwrap();

    a.aws(&["s3", "mb", "s3://shared"]);
    put(&a, &base, "s3://shared/base", &["--metadata", "written-by=a"], scratch.path());
    let through_a = seen(&a, "shared", "base", scratch.path());
    assert_eq!(seen(&b, "shared", "base", scratch.path()), through_a, "b reads what a wrote");
    assert_eq!(through_a.bytes, base);

    // b stores the same model again: its chunks are a's, in a's pack.
    put(&b, &base, "s3://shared/copy", &[], scratch.path());
    assert_eq!(seen(&a, "shared", "copy", scratch.path()).bytes, base, "a reads what b wrote");
    a.aws(&["s3", "rm", "s3://shared/copy"]);
    put(&b, &base, "s3://shared/copy", &[], scratch.path());

    // a deletes its object: its index frees the pack, but b's manifest still uses it.
    a.aws(&["s3", "rm", "s3://shared/base"]);
    for _ in 0..2 {
        assert!(a.collect_garbage().leased, "a takes the lease");
    }
    assert!(!b.collect_garbage().leased, "b waits while a holds the lease");
    assert_eq!(seen(&b, "shared", "copy", scratch.path()).bytes, base, "b's object survived a's gc");
    assert_eq!(seen(&a, "shared", "copy", scratch.path()).bytes, base);
    assert!(!b.aws_unchecked(&["s3api", "head-object", "--bucket", "shared", "--key", "base"]).status.success(), "b sees a's delete");

    // Listings catch up: b lists what a wrote, without having read it.
    put(&a, &noise(1000, 5), "s3://shared/listed-only", &[], scratch.path());
    a.aws(&["s3", "mb", "s3://made-by-a"]);
    let caught_up = sync(&b);
    assert!(caught_up.objects_adopted >= 1 && caught_up.buckets >= 1, "{caught_up:?}");
    let listing = String::from_utf8_lossy(&b.aws(&["s3", "ls", "s3://shared/"]).stdout).into_owned();
    assert!(listing.contains("listed-only") && listing.contains("copy") && !listing.contains("base"), "{listing}");
    assert!(String::from_utf8_lossy(&b.aws(&["s3", "ls"]).stdout).contains("made-by-a"));
    a.aws(&["s3", "rm", "s3://shared/listed-only"]);
    a.aws(&["s3", "rb", "s3://made-by-a"]);
    let caught_up = sync(&b);
    assert_eq!((caught_up.objects_removed, caught_up.buckets_removed), (1, 1), "{caught_up:?}");
    assert!(!String::from_utf8_lossy(&b.aws(&["s3", "ls"]).stdout).contains("made-by-a"));
    a.aws(&["s3", "mb", "s3://raced"]);
    // The bucket is the tenant's already (made through a): creating it again succeeds, as in
    // S3's us-east-1, and makes nothing new.
    let again = b.aws_unchecked(&["s3api", "create-bucket", "--bucket", "raced"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&b.aws(&["s3", "ls"]).stdout).contains("raced"));

    // Overwrites through one are read through the other.
    put(&a, &noise(50_000, 9), "s3://shared/copy", &[], scratch.path());
    assert_eq!(seen(&b, "shared", "copy", scratch.path()).bytes, noise(50_000, 9));
    for gateway in [&a, &b] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    // fsck on one gateway checks the other's manifests too: a blob lost from under b's object
    // is reported by a, which never read that object.
    // Under `min_model_bytes`, so stored as it came, as one blob.
    put(&b, &noise(60_000, 3), "s3://shared/victim", &[], scratch.path());
    let (_, victim) = b.store().index.all_objects().map(Result::unwrap).find(|(key, _)| key.key == "victim").unwrap();
    let Some(tensorgate_index::Segment::Blob { key: blob, .. }) = victim.segments.first() else { panic!("{victim:?}") };
    let lost = aws_command(&moto.endpoint, "moto", "moto").args(["s3", "rm", &format!("s3://upstream/tg/{blob}")]).output().unwrap();
    assert!(lost.status.success(), "{}", String::from_utf8_lossy(&lost.stderr));
    let report = a.fsck();
    assert!(report.problems.iter().any(|problem| problem.contains("shared/victim") && problem.contains(blob.as_str())), "{:?}", report.problems);
}

/// A multipart upload spread over two gateways as a round-robin load balancer would spread it
/// (tests/clients/multipart_across.py): created on one, parts through both, completed on the
/// other, read back byte-identical with its ETag; an upload aborted through the gateway that
/// did not create it ends on both (when next asked, or at the next sync).
#[test]
fn multipart_uploads_span_gateways_over_one_upstream() {
    let moto = Moto::start();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_upstream_gateway(&moto, state_a.path(), true);
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    let said = a.python_client("multipart_across.py", &[b.endpoint.as_ref()]);
    let aborted = said.trim();
    assert_eq!(aborted.len(), 32, "{said}");
    let caught_up = sync(&b);
    assert_eq!(caught_up.uploads_ended, 1, "{caught_up:?}");
    assert!(b.store().index.upload(aborted).unwrap().is_none());
    // With no grace period, a pack one gateway's packer has written but not yet published is an
    // orphan to the other: both packers finish before either judges.
    for gateway in [&a, &b] {
        gateway.drain_packer();
    }
    for gateway in [&a, &b] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// After its first sync (every manifest listed), a gateway catches up from the change journal
/// alone: what another gateway wrote, overwrote and deleted shows in its listings, and no
/// manifest listing is needed.
#[test]
fn sync_after_the_first_reads_only_the_change_journal() {
    let moto = Moto::start();
    let (state_a, state_b, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_upstream_gateway(&moto, state_a.path(), true);
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3", "mb", "s3://journaled"]);
    let mut state = tensorgate::maintenance::sync::SyncState::default();
    let first = sync_from(&b, &mut state);
    assert!(first.listed_everything && first.objects_adopted == 0, "{first:?}");
    let quiet = sync_from(&b, &mut state);
    assert!(!quiet.listed_everything, "a quiet journal needs no full listing: {quiet:?}");
    for (n, key) in ["kept", "overwritten", "deleted"].iter().enumerate() {
        put(&a, &noise(2000, n as u64), &format!("s3://journaled/{key}"), &[], scratch.path());
    }
    let written = sync_from(&b, &mut state);
    assert!(!written.listed_everything && written.objects_adopted == 3, "{written:?}");

    put(&a, &noise(3000, 7), "s3://journaled/overwritten", &[], scratch.path());
    put(&a, &noise(3000, 8), "s3://journaled/new", &[], scratch.path());
    a.aws(&["s3", "rm", "s3://journaled/deleted"]);
    let next = sync_from(&b, &mut state);
    assert!(!next.listed_everything, "{next:?}");
    assert_eq!((next.objects_adopted, next.objects_removed), (2, 1), "{next:?}");
    let listing = String::from_utf8_lossy(&b.aws(&["s3", "ls", "s3://journaled/"]).stdout).into_owned();
    assert!(listing.contains("kept") && listing.contains("new") && !listing.contains("deleted"), "{listing}");
    assert!(listing.lines().any(|line| line.contains("overwritten") && line.contains(" 3000 ")), "{listing}");
    let again = sync_from(&b, &mut state);
    assert_eq!((again.objects_adopted, again.objects_removed, again.listed_everything), (0, 0, false), "{again:?}");
}
