//! Objects read back as written through every client: aws cli, boto3, rclone and the JavaScript
//! SDK round-trip models and other objects byte for byte with their ETags, over a local
//! directory and an independent S3 server (moto); ranged GETs read only the frames they need.

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

/// Ranged GETs return the right bytes and read only the frames they need (the chunk cache is
/// off, so that each range's reads are its own: with it, a range over chunks a previous one
/// decoded reads none).
#[test]
fn ranged_gets_read_only_the_frames_they_need() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.chunk_cache_bytes = 0);
    let work = tempfile::tempdir().unwrap();
    let model_path = corpus("base/minilm-l6.bf16.safetensors");
    let model = std::fs::read(&model_path).unwrap();
    let layout = tensorgate_codec::parse_file(&model).unwrap();
    gateway.aws(&["s3", "mb", "s3://ranges"]);
    gateway.aws(&["s3", "cp", model_path.to_str().unwrap(), "s3://ranges/model.safetensors"]);
    let data_start = layout.data_start;
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
