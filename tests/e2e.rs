//! End-to-end tests: real S3 clients (aws cli, boto3, rclone) against a gateway whose upstream
//! is a local directory or an independent S3 server (moto), started by the tests themselves.

mod support;

use std::path::Path;

use support::*;

/// The objects every client suite uploads: (key, bytes, uploaded with multipart).
fn suite_objects(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("models/base.safetensors", std::fs::read(corpus("base/minilm-l6.bf16.safetensors")).unwrap()),
        ("models/big-ft.safetensors", replicated_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 6)),
        ("plain/noise.bin", noise((1 << 20) + 17, 7)),
        ("plain/empty", Vec::new()),
        ("plain/lying-header.safetensors", {
            let mut bytes = replicated_model(&corpus("base/minilm-l6.bf16.safetensors"), 1);
            bytes.truncate(bytes.len() / 2);
            bytes
        }),
    ];
    files
        .into_iter()
        .map(|(key, bytes)| {
            let path = dir.join(key.replace('/', "_"));
            std::fs::write(&path, bytes).unwrap();
            (key.to_owned(), path)
        })
        .collect()
}

fn expected_etag(bytes: &[u8], part_size: usize) -> String {
    if bytes.len() >= part_size {
        multipart_etag(bytes, part_size)
    } else {
        md5_hex(bytes)
    }
}

/// Uploads, downloads and compares every suite object with the given client, before and after
/// the packer has re-encoded multipart uploads.
fn round_trip_with(gateway: &TestGateway, client: &str) {
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://suite"]);
    let objects = suite_objects(work.path());
    let part_size = if client == "rclone" { 5 << 20 } else { 8 << 20 };
    for (key, path) in &objects {
        let path = path.to_str().unwrap();
        let remote = format!("tg:suite/{key}");
        match client {
            "aws" => drop(gateway.aws(&["s3", "cp", path, &format!("s3://suite/{key}")])),
            "boto3" => drop(gateway.boto3(&["put", path, "suite", key, "--multipart"])),
            "rclone" => drop(gateway.rclone(&["copyto", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", path, &remote])),
            other => panic!("unknown client {other}"),
        }
    }
    for pass in ["as stored", "after packing"] {
        if pass == "after packing" {
            gateway.drain_packer();
        }
        for (key, path) in &objects {
            let original = std::fs::read(path).unwrap();
            let out = work.path().join("download");
            let out_str = out.to_str().unwrap();
            match client {
                "aws" => drop(gateway.aws(&["s3", "cp", &format!("s3://suite/{key}"), out_str])),
                "boto3" => drop(gateway.boto3(&["get", "suite", key, out_str])),
                _ => drop(gateway.rclone(&["copyto", &format!("tg:suite/{key}"), out_str])),
            }
            let downloaded = std::fs::read(&out).unwrap();
            assert!(downloaded == original, "{client}: {key} differs {pass} ({} vs {} bytes)", downloaded.len(), original.len());
            assert_eq!(gateway.etag("suite", key), expected_etag(&original, part_size), "{client}: ETag of {key} {pass}");
        }
    }
    let store = gateway.store();
    assert!(store.index.pack_bytes().unwrap() > 0, "models were stored as packs");
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{client}: fsck after the round trips: {:?}", report.problems);
}

#[test]
fn aws_cli_round_trips_over_local_directory() {
    round_trip_with(&TestGateway::start(UpstreamKind::LocalDirectory), "aws");
}

#[test]
fn aws_cli_round_trips_over_moto() {
    round_trip_with(&TestGateway::start(UpstreamKind::Moto), "aws");
}

#[test]
fn boto3_round_trips_over_local_directory() {
    round_trip_with(&TestGateway::start(UpstreamKind::LocalDirectory), "boto3");
}

#[test]
fn boto3_round_trips_over_moto() {
    round_trip_with(&TestGateway::start(UpstreamKind::Moto), "boto3");
}

#[test]
fn rclone_round_trips_over_local_directory() {
    round_trip_with(&TestGateway::start(UpstreamKind::LocalDirectory), "rclone");
}

#[test]
fn rclone_round_trips_over_moto() {
    round_trip_with(&TestGateway::start(UpstreamKind::Moto), "rclone");
}

/// Ranged GETs return the right bytes and read only the frames they need.
#[test]
fn ranged_gets_read_only_the_frames_they_need() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let model_path = corpus("base/minilm-l6.bf16.safetensors");
    let model = std::fs::read(&model_path).unwrap();
    let layout = tensorgate_codec::parse_file(&model).unwrap();
    gateway.aws(&["s3", "mb", "s3://ranges"]);
    gateway.aws(&["s3", "cp", model_path.to_str().unwrap(), "s3://ranges/model.safetensors"]);
    let data_start = layout.data_start();
    let small = layout.tensors.iter().find(|t| t.len() > 100 && t.len() < 4096).unwrap();
    let big = layout.tensors.iter().max_by_key(|t| t.len()).unwrap();
    let chunk = tensorgate_codec::DEFAULT_CHUNK_SIZE as u64;
    let after_small = layout.tensors.iter().find(|t| t.start == small.end).unwrap();
    let cases: Vec<(String, u64, u64, u64)> = vec![
        ("first 8 bytes".into(), 0, 7, 0),
        ("the header".into(), 0, data_start - 1, 0),
        ("one small tensor".into(), data_start + small.start, data_start + small.end - 1, 1),
        ("across two tensors".into(), data_start + small.start + 10, data_start + after_small.start + 10, 2),
        ("inside the biggest tensor".into(), data_start + big.start + 100, data_start + big.start + 200, 1),
        ("whole biggest tensor".into(), data_start + big.start, data_start + big.end - 1, big.len().div_ceil(chunk)),
    ];
    for (name, first, last, frames) in cases {
        let out = work.path().join("range");
        let before = gateway.upstream_reads();
        gateway.boto3(&["get", "ranges", "model.safetensors", out.to_str().unwrap(), &format!("bytes={first}-{last}")]);
        let reads = gateway.upstream_reads() - before;
        assert_eq!(std::fs::read(&out).unwrap(), &model[first as usize..=last as usize], "bytes of {name}");
        assert_eq!(reads, frames, "upstream reads for {name}");
    }
    let out = work.path().join("suffix");
    gateway.boto3(&["get", "ranges", "model.safetensors", out.to_str().unwrap(), "bytes=-1000"]);
    assert_eq!(std::fs::read(&out).unwrap(), &model[model.len() - 1000..], "suffix range");
    let beyond = gateway.boto3_unchecked(&["get", "ranges", "model.safetensors", out.to_str().unwrap(), "bytes=99999999-"]);
    assert_eq!(String::from_utf8_lossy(&beyond.stderr).trim(), "InvalidRange");
}

/// A base and two fine-tunes cost far less upstream than the three files; deleting them
/// leaves no pack behind.
#[test]
fn fine_tunes_are_stored_as_deltas_and_deletes_free_everything() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://family"]);
    let files = [
        "base/minilm-l6.bf16.safetensors",
        "ft/ft-a-contrastive.bf16.safetensors",
        "ft/ft-c-cls.bf16.safetensors",
    ];
    let mut raw = 0;
    for (i, file) in files.iter().enumerate() {
        let path = corpus(file);
        raw += std::fs::metadata(&path).unwrap().len();
        gateway.aws(&["s3", "cp", path.to_str().unwrap(), &format!("s3://family/m{i}.safetensors")]);
    }
    let stored = gateway.store().index.pack_bytes().unwrap();
    println!("base + two fine-tunes: {raw} bytes raw, {stored} bytes upstream ({:.1}%)", 100.0 * stored as f64 / raw as f64);
    assert!(stored * 100 < raw * 40, "stored {stored} of {raw}");
    for i in 0..files.len() {
        gateway.aws(&["s3", "rm", &format!("s3://family/m{i}.safetensors")]);
    }
    let report = gateway.collect_garbage();
    assert!(report.chunks > 0);
    let check = gateway.fsck();
    assert!(check.problems.is_empty() && check.chunks == 0, "{:?}", check.problems);
    assert_eq!(gateway.store().index.pack_bytes().unwrap(), 0);
    let packs = gateway.dir.path().join("data/upstream/packs");
    let left = std::fs::read_dir(&packs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "pack files left in {}", packs.display());
}

/// Listing with prefixes, delimiters and pages, as boto3's paginator drives it.
#[test]
fn listings_page_and_roll_up_prefixes() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("small");
    std::fs::write(&file, b"hello").unwrap();
    gateway.aws(&["s3", "mb", "s3://listing"]);
    let keys = ["a/1", "a/2", "b/x/1", "b/y", "c", "d", "e"];
    for key in keys {
        gateway.boto3(&["put", file.to_str().unwrap(), "listing", key]);
    }
    let all = gateway.boto3(&["list", "listing", "", "", "2"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(all["keys"], serde_json::json!(keys));
    assert_eq!(all["pages"], 4);
    let rolled = gateway.boto3(&["list", "listing", "", "/", "2"]);
    let rolled: serde_json::Value = serde_json::from_slice(&rolled.stdout).unwrap();
    assert_eq!(rolled["keys"], serde_json::json!(["c", "d", "e"]));
    assert_eq!(rolled["prefixes"], serde_json::json!(["a/", "b/"]));
    let nested = gateway.boto3(&["list", "listing", "b/", "/", "1"]);
    let nested: serde_json::Value = serde_json::from_slice(&nested.stdout).unwrap();
    assert_eq!(nested["keys"], serde_json::json!(["b/y"]));
    assert_eq!(nested["prefixes"], serde_json::json!(["b/x/"]));
}

/// Requests with a wrong secret, without a signature, or with a body that does not match its
/// Content-MD5 are refused with the codes AWS gives.
#[test]
fn bad_signatures_and_digests_are_refused() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://guarded"]);
    let wrong = aws_command(&gateway.endpoint, ACCESS_KEY, "not-the-secret").args(["s3api", "list-objects-v2", "--bucket", "guarded"]).output().unwrap();
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("SignatureDoesNotMatch"), "{}", String::from_utf8_lossy(&wrong.stderr));
    let unknown = aws_command(&gateway.endpoint, "nobody", "x").args(["s3api", "list-objects-v2", "--bucket", "guarded"]).output().unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("InvalidAccessKeyId"), "{}", String::from_utf8_lossy(&unknown.stderr));
    let anonymous = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY).args(["--no-sign-request", "s3api", "list-objects-v2", "--bucket", "guarded"]).output().unwrap();
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("AccessDenied"), "{}", String::from_utf8_lossy(&anonymous.stderr));
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("body");
    std::fs::write(&file, b"the real body").unwrap();
    let bad_md5 = gateway.aws_unchecked(&[
        "s3api", "put-object", "--bucket", "guarded", "--key", "k", "--body", file.to_str().unwrap(),
        "--content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==",
    ]);
    assert!(String::from_utf8_lossy(&bad_md5.stderr).contains("BadDigest"), "{}", String::from_utf8_lossy(&bad_md5.stderr));
    let missing = gateway.aws_unchecked(&["s3api", "head-object", "--bucket", "guarded", "--key", "k"]);
    assert!(!missing.status.success(), "a refused write left an object behind");
}

/// `tensorgate pack` / `unpack` round-trip a fine-tune against its base, and report the ratio.
#[test]
fn pack_and_unpack_commands_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = corpus("ft/ft-a-contrastive.bf16.safetensors");
    let packed = work.path().join("packed");
    let unpacked = work.path().join("unpacked");
    let run = |args: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate")).args(args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let report = run(&["pack".as_ref(), "--base".as_ref(), base.as_os_str(), tuned.as_os_str(), "-o".as_ref(), packed.as_os_str()]);
    assert!(report.contains("% of raw"), "{report}");
    run(&["unpack".as_ref(), "--base".as_ref(), base.as_os_str(), packed.as_os_str(), "-o".as_ref(), unpacked.as_os_str()]);
    assert_eq!(std::fs::read(&unpacked).unwrap(), std::fs::read(&tuned).unwrap());
    assert!(std::fs::metadata(&packed).unwrap().len() * 5 < std::fs::metadata(&tuned).unwrap().len());
}

/// Fingerprints find bases with no names to go on: fine-tunes uploaded before their base, in
/// shuffled order, under other keys and buckets, and a copy with every tensor renamed.
#[test]
fn fingerprints_find_bases_in_any_order_and_under_any_name() {
    let work = tempfile::tempdir().unwrap();
    let renamed = work.path().join("renamed.safetensors");
    std::fs::write(&renamed, renamed_model(&corpus("ft/ft-b-mlm.bf16.safetensors"), "model.encoder.")).unwrap();
    let uploads = [
        ("zoo", "c.safetensors", corpus("ft/ft-c-cls.bf16.safetensors")),
        ("hub", "x/weights", corpus("lora/lora-r8-qv-merged.bf16.safetensors")),
        ("zoo", "a", corpus("ft/ft-a-contrastive.bf16.safetensors")),
        ("hub", "base.safetensors", corpus("base/minilm-l6.bf16.safetensors")),
        ("zoo", "renamed-b", renamed),
    ];
    let mut stored = Vec::new();
    for selection in [tensorgate::config::BaseSelection::None, tensorgate::config::BaseSelection::Fingerprint] {
        let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.base_selection = selection);
        gateway.aws(&["s3", "mb", "s3://zoo"]);
        gateway.aws(&["s3", "mb", "s3://hub"]);
        let mut sizes = Vec::new();
        for (bucket, key, path) in &uploads {
            let before = gateway.store().index.pack_bytes().unwrap();
            gateway.aws(&["s3api", "put-object", "--bucket", bucket, "--key", key, "--body", path.to_str().unwrap()]);
            sizes.push(gateway.store().index.pack_bytes().unwrap() - before);
            let out = work.path().join("back");
            gateway.aws(&["s3", "cp", &format!("s3://{bucket}/{key}"), out.to_str().unwrap()]);
            assert!(std::fs::read(&out).unwrap() == std::fs::read(path).unwrap(), "{key} read back differently");
        }
        stored.push(sizes);
    }
    let raw: u64 = uploads.iter().map(|(_, _, path)| std::fs::metadata(path).unwrap().len()).sum();
    let (alone, fingerprint): (u64, u64) = (stored[0].iter().sum(), stored[1].iter().sum());
    println!("raw {raw}, no delta {alone} {:?}, fingerprint {fingerprint} {:?}", stored[0], stored[1]);
    assert!(fingerprint * 100 < alone * 55, "fingerprint {fingerprint} vs no delta {alone}");
    for (index, (_, key, path)) in uploads.iter().enumerate().skip(1) {
        let raw = std::fs::metadata(path).unwrap().len();
        assert!(stored[1][index] * 100 < raw * 40, "{key}: {} of {raw} bytes, no base found", stored[1][index]);
    }
}

/// A sharded model (three shards and the index json) goes up and comes back with recursive
/// copies, byte for byte, and its shards deduplicate against the unsharded base.
#[test]
fn sharded_models_round_trip_with_recursive_copies() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let upload = work.path().join("up");
    let download = work.path().join("down");
    std::fs::create_dir_all(&upload).unwrap();
    let files = sharded_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 3);
    for (name, bytes) in &files {
        std::fs::write(upload.join(name), bytes).unwrap();
    }
    gateway.aws(&["s3", "mb", "s3://sharded"]);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://sharded/base/model.safetensors"]);
    let before = gateway.store().index.pack_bytes().unwrap();
    gateway.aws(&["s3", "cp", "--recursive", upload.to_str().unwrap(), "s3://sharded/ft-a/"]);
    let added = gateway.store().index.pack_bytes().unwrap() - before;
    gateway.aws(&["s3", "cp", "--recursive", "s3://sharded/ft-a/", download.to_str().unwrap()]);
    for (name, bytes) in &files {
        assert!(&std::fs::read(download.join(name)).unwrap() == bytes, "{name} differs");
    }
    let raw: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    assert!(added * 5 < raw as u64, "shards took {added} of {raw} bytes: their bases were not found");
}

/// fsck finds nothing wrong after real traffic, and finds a corrupted pack; a GET of the
/// corrupted object fails rather than serving wrong bytes.
#[test]
fn fsck_is_clean_and_corruption_is_detected_never_served() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
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

fn two_tenants(config: &mut tensorgate::config::Config) {
    use tensorgate::config::{AccessKey, TenantConfig};
    let key = AccessKey::new;
    config.tenants = vec![
        TenantConfig { name: "a".into(), access_keys: vec![key("tenant-a", "secret-a")], max_buckets: Some(3), upstream: None, dedup_group: None },
        TenantConfig {
            name: "b".into(),
            access_keys: vec![key("tenant-b", "secret-b"), key("tenant-b2", "secret-b2")],
            max_buckets: None,
            upstream: None,
            dedup_group: None,
        },
    ];
}

/// Tenant B attempts every S3 operation on tenant A's buckets, objects and uploads; each is
/// refused as if A's data did not exist, and A's data is untouched.
#[test]
fn tenants_cannot_see_or_touch_each_other() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, two_tenants);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/tenants.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args([gateway.endpoint.as_str(), "tenant-a", "secret-a", "tenant-b", "secret-b"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let quota = aws_command(&gateway.endpoint, "tenant-a", "secret-a").args(["s3", "mb", "s3://third"]).output().unwrap();
    assert!(quota.status.success());
    let over = aws_command(&gateway.endpoint, "tenant-a", "secret-a").args(["s3", "mb", "s3://fourth"]).output().unwrap();
    assert!(String::from_utf8_lossy(&over.stderr).contains("TooManyBuckets"), "{}", String::from_utf8_lossy(&over.stderr));
}

/// Within a tenant every key reaches the same buckets; across tenants identical models are
/// stored once only when dedup is shared, by all or by a named group.
#[test]
fn dedup_is_per_tenant_unless_shared() {
    use tensorgate::config::DedupScope;
    let model = corpus("base/minilm-l6.bf16.safetensors");
    for (scope, group, second_upload_is_free) in [
        (DedupScope::Tenant, None, false),
        (DedupScope::Shared, None, true),
        (DedupScope::Tenant, Some("partners"), true),
    ] {
        let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
            two_tenants(config);
            config.dedup_scope = scope;
            for tenant in &mut config.tenants {
                tenant.dedup_group = group.map(str::to_owned);
            }
        });
        let mut added = Vec::new();
        for (key, secret) in [("tenant-a", "secret-a"), ("tenant-b", "secret-b")] {
            let aws = |args: &[&str]| {
                let output = aws_command(&gateway.endpoint, key, secret).args(args).output().unwrap();
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            };
            aws(&["s3", "mb", "s3://models"]);
            let before = gateway.store().index.pack_bytes().unwrap();
            aws(&["s3", "cp", model.to_str().unwrap(), "s3://models/base.safetensors"]);
            added.push(gateway.store().index.pack_bytes().unwrap() - before);
        }
        let other_key = aws_command(&gateway.endpoint, "tenant-b2", "secret-b2").args(["s3", "ls", "s3://models"]).output().unwrap();
        assert!(String::from_utf8_lossy(&other_key.stdout).contains("base.safetensors"), "a tenant's second key sees its buckets");
        assert!(added[0] > 1_000_000);
        assert_eq!(added[1] == 0, second_upload_is_free, "{scope:?}: second tenant's upload added {} bytes", added[1]);
        let usage = gateway.store().index.usage().unwrap();
        let physical: Vec<u64> = usage.iter().map(|row| row.physical_bytes).collect();
        let stored: u64 = physical.iter().sum();
        let live = gateway.store().index.pack_bytes().unwrap();
        assert!(usage.iter().all(|row| row.logical_bytes == std::fs::metadata(&model).unwrap().len()), "{usage:?}");
        assert!(stored.abs_diff(live) * 100 <= live, "{scope:?}: attributed {stored} of {live} pack bytes");
        if second_upload_is_free {
            assert!(physical[0].abs_diff(physical[1]) * 100 <= physical[0], "shared chunks are split evenly: {usage:?}");
        }
    }
}

/// The shipped deployment config passes `tensorgate config check`; a broken one does not.
#[test]
fn deploy_config_passes_config_check() {
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate")).arg("--config").arg(path).args(["config", "check"]).output().unwrap()
    };
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tensorgate.toml");
    let output = check(&shipped);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let work = tempfile::tempdir().unwrap();
    // The config inside the Kubernetes Secret: the block under `tensorgate.toml: |`, dedented.
    let manifests = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/tensorgate.yaml")).unwrap();
    let block = manifests.split("tensorgate.toml: |\n").nth(1).and_then(|rest| rest.split("\n---").next()).unwrap();
    let kubernetes = work.path().join("kubernetes.toml");
    std::fs::write(&kubernetes, block.lines().map(|line| line.strip_prefix("    ").unwrap_or(line)).collect::<Vec<_>>().join("\n")).unwrap();
    let output = check(&kubernetes);
    assert!(output.status.success(), "the Kubernetes config: {}", String::from_utf8_lossy(&output.stderr));
    let broken = work.path().join("broken.toml");
    let text = std::fs::read_to_string(&shipped).unwrap() + "\n[[tenants]]\nname = \"models\"\n[[tenants.access_keys]]\naccess_key = \"x\"\nsecret_key = \"y\"\n";
    std::fs::write(&broken, text).unwrap();
    let output = check(&broken);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("defined twice"));
}

/// The README's first command: `tensorgate serve` with no config serves the embedded default
/// (data under ./tensorgate-data, the printed default key), and `aws s3 cp` round-trips a model.
#[test]
fn serve_without_config_round_trips_a_model() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    while !banner.contains("secret key") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "serve exited: {banner}");
        banner.push_str(&line);
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let key = tensorgate::config::DEFAULT_ACCESS_KEY;
    let secret = tensorgate::config::DEFAULT_SECRET_KEY;
    assert!(banner.contains(key) && banner.contains(secret), "{banner}");
    let model = corpus("ft/ft-b-mlm.bf16.safetensors");
    let out = work.path().join("back.safetensors");
    for args in [
        vec!["s3", "mb", "s3://models"],
        vec!["s3", "cp", model.to_str().unwrap(), "s3://models/ft-b.safetensors"],
        vec!["s3", "cp", "s3://models/ft-b.safetensors", out.to_str().unwrap()],
    ] {
        let output = aws_command(&endpoint, key, secret).args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&model).unwrap());
    assert!(work.path().join("tensorgate-data/upstream/packs").is_dir(), "the embedded upstream is ./tensorgate-data");
}

/// `x-amz-meta-tensorgate-base: bucket/key` names the base when a client knows it: used with
/// base selection off, ignored when it names nothing, never needed for correct bytes.
#[test]
fn a_named_base_is_used_when_given() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.base_selection = tensorgate::config::BaseSelection::None;
    });
    gateway.aws(&["s3", "mb", "s3://bases"]);
    gateway.aws(&["s3", "mb", "s3://tunes"]);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://bases/base.safetensors"]);
    let mut added = Vec::new();
    let cases = [
        ("unhinted", None, "ft/ft-b-mlm.bf16.safetensors"),
        ("dangling", Some("bases/missing"), "ckpt/ft-a-contrastive.step0030.bf16.safetensors"),
        ("hinted", Some("bases/base.safetensors"), "ft/ft-a-contrastive.bf16.safetensors"),
    ];
    for (key, hint, file) in cases {
        let tuned = corpus(file);
        let before = gateway.store().index.pack_bytes().unwrap();
        let mut args = vec!["s3api", "put-object", "--bucket", "tunes", "--key", key, "--body", tuned.to_str().unwrap()];
        let metadata = hint.map(|h| format!("tensorgate-base={h}"));
        if let Some(metadata) = &metadata {
            args.extend(["--metadata", metadata.as_str()]);
        }
        gateway.aws(&args);
        added.push(gateway.store().index.pack_bytes().unwrap() - before);
        let out = gateway.dir.path().join("back");
        gateway.aws(&["s3", "cp", &format!("s3://tunes/{key}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&tuned).unwrap());
    }
    let raw = std::fs::metadata(corpus("ft/ft-a-contrastive.bf16.safetensors")).unwrap().len();
    assert!(added[0] * 100 > raw * 50 && added[1] * 100 > raw * 50, "without a usable hint nothing is a delta: {added:?}");
    assert!(added[2] * 100 < raw * 15, "the hinted base was not used: {added:?}");
}

/// The JavaScript SDK streams PutObject as an aws-chunked body with a trailing CRC32 even over
/// plain HTTP: the model must be stored as chunks, keep its MD5 ETag and read back whole.
#[test]
fn javascript_sdk_streams_aws_chunked_uploads() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://jsbucket"]);
    let model = corpus("ft/ft-b-mlm.bf16.safetensors");
    let out = gateway.dir.path().join("js-download");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/js/put_get.mjs");
    let output = std::process::Command::new("node")
        .arg(script)
        .args([gateway.endpoint.as_str(), ACCESS_KEY, SECRET_KEY, "jsbucket", "model.safetensors"])
        .arg(&model)
        .arg(&out)
        .output()
        .expect("node must be installed (tests/run installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let original = std::fs::read(&model).unwrap();
    assert_eq!(reply["etag"].as_str().unwrap().trim_matches('"'), md5_hex(&original));
    assert_eq!(reply["getEtag"], reply["etag"]);
    assert!(reply["crc32"].is_string(), "the trailing checksum was verified and echoed: {reply}");
    assert!(std::fs::read(&out).unwrap() == original);
    assert!(gateway.store().index.pack_bytes().unwrap() > 0, "the streamed model was stored as chunks");
}

/// Under 10% upstream faults (errors, short reads, stalls) a concurrent workload of uploads and
/// downloads sees no corrupt read, and once the faults stop every acknowledged write reads back.
#[test]
fn upstream_faults_never_corrupt_or_lose_acknowledged_writes() {
    let injected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (injected_handle, enabled_handle, down_handle) = (injected.clone(), enabled.clone(), down.clone());
    let gateway = TestGateway::start_wrapped(UpstreamKind::LocalDirectory, |_| {}, move |upstream| {
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

/// Expired presigned URLs, requests signed with a skewed clock and signed requests replayed on
/// another key are refused with the codes AWS gives.
#[test]
fn expired_skewed_and_replayed_signatures_are_refused() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f");
    std::fs::write(&file, b"signed bytes").unwrap();
    gateway.aws(&["s3", "mb", "s3://signed"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://signed/one"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://signed/two"]);
    gateway.python_client("signatures.py", &["signed".as_ref(), "one".as_ref(), "two".as_ref()]);
}

/// Secrets can come from the environment or a file; SIGHUP reloads keys, so a revoked key is
/// refused at once and a new one works, and a broken config is refused without harm.
#[test]
fn keys_come_from_env_or_files_and_reload_on_sighup() {
    let work = tempfile::tempdir().unwrap();
    let secret_file = work.path().join("secret");
    std::fs::write(&secret_file, "file-secret\n").unwrap();
    let config = work.path().join("tensorgate.toml");
    let tenant = |keys: &str| format!("data_dir = {:?}\n[[tenants]]\nname = \"team\"\n{keys}", work.path().join("data"));
    let env_key = "[[tenants.access_keys]]\naccess_key = \"from-env\"\nsecret_key_env = \"TG_TEST_SECRET\"\n";
    let file_key = format!("[[tenants.access_keys]]\naccess_key = \"from-file\"\nsecret_key_file = {secret_file:?}\n");
    std::fs::write(&config, tenant(&format!("{env_key}{file_key}"))).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("TG_TEST_SECRET", "env-secret")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let list = |key: &str, secret: &str| aws_command(&endpoint, key, secret).args(["s3", "ls"]).output().unwrap();
    assert!(list("from-env", "env-secret").status.success());
    assert!(list("from-file", "file-secret").status.success());
    let hangup = || {
        std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    std::fs::write(&config, tenant(&format!("{file_key}[[tenants.access_keys]]\naccess_key = \"new-key\"\nsecret_key = \"new-secret\"\n"))).unwrap();
    hangup();
    let revoked = list("from-env", "env-secret");
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("InvalidAccessKeyId"), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert!(list("new-key", "new-secret").status.success());
    assert!(list("from-file", "file-secret").status.success());
    std::fs::write(&config, "[[tenants]]\nname = \"x\"\naccess_keys = []\n").unwrap();
    hangup();
    assert!(list("new-key", "new-secret").status.success(), "a broken config replaced the keys in use");
    let _ = child.kill();
    let _ = child.wait();
}

/// With a certificate configured the gateway serves HTTPS; over HTTPS aws cli sends aws-chunked
/// bodies with a trailing CRC32, which are verified, and both single and multipart uploads of a
/// model round-trip.
#[test]
fn https_with_aws_chunked_uploads() {
    let work = tempfile::tempdir().unwrap();
    let certificate = work.path().join("cert.pem");
    let private_key = work.path().join("key.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
        .arg(&private_key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls = tensorgate::config::TlsConfig { certificate: certificate.clone(), private_key };
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.tls = Some(tls));
    assert!(gateway.endpoint.starts_with("https://"));
    let ca = certificate.to_str().unwrap();
    let big = work.path().join("big.safetensors");
    std::fs::write(&big, replicated_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 4)).unwrap();
    let small = corpus("base/minilm-l6.bf16.safetensors");
    gateway.aws(&["--ca-bundle", ca, "s3", "mb", "s3://secure"]);
    for (key, path) in [("small", &small), ("big", &big)] {
        gateway.aws(&["--ca-bundle", ca, "s3", "cp", path.to_str().unwrap(), &format!("s3://secure/{key}")]);
        let out = work.path().join(format!("{key}.back"));
        gateway.aws(&["--ca-bundle", ca, "s3", "cp", &format!("s3://secure/{key}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(path).unwrap(), "{key} differs over HTTPS");
    }
    let plain = aws_command(&gateway.endpoint.replace("https", "http"), ACCESS_KEY, SECRET_KEY).args(["s3", "ls"]).output().unwrap();
    assert!(!plain.status.success(), "plain HTTP must not be served on the TLS port");
}

/// A plain HTTP GET on the metrics port: (status, body).
fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of one metric line (`name{labels} value`) in a Prometheus scrape.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{scrape}"))
}

/// The metrics port answers health and readiness, and its counters move with the traffic.
#[test]
fn metrics_and_health_follow_the_traffic() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.metrics_listen = Some("127.0.0.1:0".parse().unwrap()));
    let address = gateway.gateway.as_ref().unwrap().metrics_address.unwrap();
    assert_eq!(http_get(address, "/health"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(address, "/ready").0, 200);
    assert_eq!(http_get(address, "/nothing").0, 404);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = corpus("ft/ft-a-contrastive.bf16.safetensors");
    gateway.aws(&["s3", "mb", "s3://metered"]);
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://metered/base"]);
    gateway.aws(&["s3", "cp", tuned.to_str().unwrap(), "s3://metered/tuned"]);
    let (status, before) = http_get(address, "/metrics");
    assert_eq!(status, 200);
    let sizes = std::fs::metadata(&base).unwrap().len() + std::fs::metadata(&tuned).unwrap().len();
    assert_eq!(metric(&before, "tensorgate_bytes_in_total") as u64, sizes);
    assert!(metric(&before, r#"tensorgate_requests_total{method="PUT",status="200"}"#) >= 3.0);
    assert!(metric(&before, r#"tensorgate_chunks_total{outcome="delta"}"#) > 0.0);
    assert!(metric(&before, r#"tensorgate_chunks_total{outcome="deduplicated"}"#) > 0.0, "frozen tensors dedup");
    assert_eq!(metric(&before, r#"tensorgate_logical_bytes{tenant="default"}"#) as u64, sizes);
    assert!(metric(&before, r#"tensorgate_physical_bytes{tenant="default"}"#) < sizes as f64 / 2.0);
    assert_eq!(metric(&before, "tensorgate_packer_queue"), 0.0);
    let out = gateway.dir.path().join("out");
    gateway.aws(&["s3", "cp", "s3://metered/tuned", out.to_str().unwrap()]);
    let after = http_get(address, "/metrics").1;
    let served = metric(&after, "tensorgate_bytes_out_total") - metric(&before, "tensorgate_bytes_out_total");
    assert_eq!(served as u64, std::fs::metadata(&tuned).unwrap().len());
    assert!(metric(&after, "tensorgate_upstream_reads_total") > metric(&before, "tensorgate_upstream_reads_total"));
    assert!(metric(&after, r#"tensorgate_base_cache_total{result="miss"}"#) > 0.0);
}

/// A tenant with its own upstream has its bytes written there (under `tenants/<name>/`), the
/// others in the gateway's; both read back whole.
#[test]
fn a_tenant_can_have_its_own_upstream() {
    let moto = Moto::start();
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        two_tenants(config);
        config.tenants[1].upstream = Some(moto.upstream_config());
    });
    let work = tempfile::tempdir().unwrap();
    let model = corpus("ft/ft-c-cls.bf16.safetensors");
    for (key, secret) in [("tenant-a", "secret-a"), ("tenant-b", "secret-b")] {
        let aws = |args: &[&str]| {
            let output = aws_command(&gateway.endpoint, key, secret).args(args).output().unwrap();
            assert!(output.status.success(), "{key} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        aws(&["s3", "mb", "s3://models"]);
        aws(&["s3", "cp", model.to_str().unwrap(), "s3://models/m.safetensors"]);
        let out = work.path().join(key);
        aws(&["s3", "cp", "s3://models/m.safetensors", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&model).unwrap(), "{key} read back differently");
    }
    let listed = aws_command(&moto.endpoint, "moto", "moto").args(["s3", "ls", "--recursive", "s3://upstream/tg/"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("tg/tenants/b/packs/"), "tenant b's packs are in its own upstream: {listed}");
    assert!(!listed.lines().any(|line| !line.contains("tg/tenants/b/")), "only tenant b's keys there: {listed}");
    let local = gateway.dir.path().join("data/upstream");
    assert!(!local.join("tenants").exists(), "tenant b wrote into the gateway's upstream");
    assert!(std::fs::read_dir(local.join("packs")).unwrap().count() > 0, "tenant a's packs are in the gateway's upstream");
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

/// Beyond `max_concurrent_requests` requests in progress the gateway answers SlowDown, and
/// clients that retry get through.
#[test]
fn overload_gets_slow_down_and_retries_succeed() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.max_concurrent_requests = 1);
    gateway.aws(&["s3", "mb", "s3://busy"]);
    let model = corpus("ft/ft-b-mlm.bf16.safetensors");
    let script = r#"
import sys, threading, boto3, botocore
from botocore.config import Config
endpoint, path, attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(retries={"max_attempts": attempts, "mode": "standard"}, max_pool_connections=16))
body = open(path, "rb").read()
codes = []
def put(i):
    try:
        s3.put_object(Bucket="busy", Key=f"k{i}", Body=body)
        codes.append("ok")
    except botocore.exceptions.ClientError as error:
        codes.append(error.response["Error"]["Code"])
threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(" ".join(sorted(codes)))
"#;
    let run = |attempts: &str| {
        let output = std::process::Command::new("python3")
            .args(["-c", script, &gateway.endpoint])
            .arg(&model)
            .arg(attempts)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let once = run("1");
    assert!(once.contains("SlowDown") && once.contains("ok"), "without retries some must be turned away: {once}");
    let retried = run("20");
    assert!(retried.split_whitespace().all(|code| code == "ok"), "with retries all must get through: {retried}");
}

/// `stats` attributes every logical byte to one technique: a copy to file dedup, a fine-tune to
/// deltas, a base to compression, noise to bytes stored as they came; the parts add up.
#[test]
fn stats_split_savings_by_technique() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://counted"]);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = corpus("ft/ft-a-contrastive.bf16.safetensors");
    let work = tempfile::tempdir().unwrap();
    let noise_file = work.path().join("noise");
    std::fs::write(&noise_file, noise(200_000, 5)).unwrap();
    let savings = || gateway.store().index.savings(|key| key.bucket == "counted").unwrap();

    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://counted/base"]);
    let after_base = savings();
    assert!(after_base.compression > 0 && after_base.delta == 0 && after_base.file_dedup == 0, "{after_base:?}");
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://counted/copy"]);
    gateway.aws(&["s3", "cp", tuned.to_str().unwrap(), "s3://counted/tuned"]);
    gateway.aws(&["s3", "cp", noise_file.to_str().unwrap(), "s3://counted/noise"]);
    let all = savings();
    assert_eq!(all.objects, 4);
    assert_eq!(all.file_dedup, std::fs::metadata(&base).unwrap().len());
    assert!(all.delta > 0, "{all:?}");
    assert_eq!(all.stored_as_is, 200_000);
    assert!(all.physical_bytes < after_base.physical_bytes + all.stored_as_is + after_base.physical_bytes / 2, "the fine-tune cost more than half its base: {all:?}");
    let accounted = all.physical_bytes as i64 + (all.file_dedup + all.tensor_dedup + all.headers) as i64 + all.delta + all.compression;
    assert_eq!(accounted, all.logical_bytes as i64, "{all:?}");
}

/// Short and long bodies, dotted and refused keys, part numbers out of range, huge part lists,
/// tiny parts and lying safetensors headers (tests/clients/hostile.py): each gets the AWS
/// answer or is stored as it came; afterwards the gateway serves on and fsck is clean.
#[test]
fn hostile_requests_get_aws_answers_or_are_stored_as_they_came() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("hostile.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
    gateway.aws(&["s3", "ls", "s3://hostile/"]);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// With `max_in_flight_bytes` at 1 MiB, an upload waits while another holds the budget
/// (tests/clients/budget.py holds it for two seconds), then completes; both read back whole.
#[test]
fn uploads_wait_for_the_in_flight_byte_budget() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.max_in_flight_bytes = 1 << 20);
    let said = gateway.python_client("budget.py", &[]);
    assert!(said.contains("waited"), "{said}");
    assert!(gateway.store().metrics.body_waits.get() >= 1);
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

/// A pack left mostly dead by a delete is compacted: its live frames move to a new pack, the
/// surviving object reads back byte-identical with its manifest updated, and the old pack is
/// deleted a grace period later.
#[test]
fn sparse_packs_are_compacted() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.base_selection = tensorgate::config::BaseSelection::None;
    });
    let work = tempfile::tempdir().unwrap();
    let (base, tuned_a, tuned_b) =
        (corpus("base/minilm-l6.bf16.safetensors"), corpus("ft/ft-a-contrastive.bf16.safetensors"), corpus("ft/ft-b-mlm.bf16.safetensors"));
    let big = work.path().join("big");
    std::fs::write(&big, combined_model(&[&base, &tuned_a, &tuned_b])).unwrap();
    let small = work.path().join("small");
    std::fs::write(&small, combined_model(&[&base])).unwrap();
    gateway.aws(&["s3", "mb", "s3://dense"]);
    gateway.aws(&["s3", "cp", big.to_str().unwrap(), "s3://dense/big"]);
    gateway.drain_packer();
    gateway.aws(&["s3", "cp", small.to_str().unwrap(), "s3://dense/small"]);
    let packs_dir = gateway.dir.path().join("data/upstream/packs");
    let packs = || std::fs::read_dir(&packs_dir).unwrap().count();
    // The background packer and drain_packer may both have packed big; the loser's pack is trash.
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

    let store = gateway.gateway.as_ref().unwrap().store.clone();
    let check = |repair| {
        let options = tensorgate::maintenance::fsck::FsckOptions { verify_frames: true, repair };
        gateway.runtime.block_on(tensorgate::maintenance::fsck::fsck(&store, options, &|_, _| {})).unwrap()
    };
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
