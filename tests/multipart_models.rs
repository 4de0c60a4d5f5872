//! Models uploaded in parts are encoded as the parts arrive (issue 15): nothing is stored as it
//! came nor left for the packer when the parts are cut as clients cut them, a fine-tune sent in
//! parts of another size is still stored as deltas of its base, and parts that break the guess
//! (unequal sizes, a part sent again, an upload aborted) cost savings only, never a byte.

mod support;

use std::path::Path;

use support::objects::{check_ranges, get};
use support::*;

/// A model as big as several parts: the corpus's bf16 base (or a fine-tune of it) eight times.
fn model(file: &str) -> Vec<u8> {
    replicated_model(&corpus(file), 8)
}

/// Uploads `bytes` to `bucket/key` with s3api in parts of the given sizes (the rest in a last
/// part), each written to `scratch` first; returns the ETag completion gave.
fn upload_in_parts(gateway: &TestGateway, bucket: &str, key: &str, bytes: &[u8], sizes: &[usize], scratch: &Path) -> String {
    let json = |output: std::process::Output| -> serde_json::Value { serde_json::from_slice(&output.stdout).unwrap() };
    let created = json(gateway.aws(&["s3api", "create-multipart-upload", "--bucket", bucket, "--key", key]));
    let upload_id = created["UploadId"].as_str().unwrap().to_owned();
    let mut parts = Vec::new();
    let mut start = 0;
    for (index, size) in sizes.iter().map(Some).chain([None]).enumerate() {
        let end = size.map_or(bytes.len(), |size| start + size);
        let path = scratch.join(format!("part{index}"));
        std::fs::write(&path, &bytes[start..end]).unwrap();
        let number = (index + 1).to_string();
        let uploaded = json(gateway.aws(&[
            "s3api", "upload-part", "--bucket", bucket, "--key", key, "--part-number", &number, "--upload-id", &upload_id, "--body", path.to_str().unwrap(),
        ]));
        parts.push(format!(r#"{{"ETag":{:?},"PartNumber":{number}}}"#, uploaded["ETag"].as_str().unwrap()));
        start = end;
    }
    let completion = format!(r#"{{"Parts":[{}]}}"#, parts.join(","));
    let completed = json(gateway.aws(&["s3api", "complete-multipart-upload", "--bucket", bucket, "--key", key, "--upload-id", &upload_id, "--multipart-upload", &completion]));
    completed["ETag"].as_str().unwrap().trim_matches('"').to_owned()
}

/// Multipart uploads completed so far that were `stored` so (`encoded`, `for_packer`).
fn completions(gateway: &TestGateway, stored: &'static str) -> u64 {
    gateway.store().metrics.multipart_completions.get_or_create(&tensorgate::metrics::CompletionLabels { stored }).get()
}

/// Files under the upstream's `blobs/`: bytes stored as they came.
fn blobs(gateway: &TestGateway) -> usize {
    std::fs::read_dir(gateway.dir.path().join("data/upstream/blobs")).map_or(0, |dir| dir.count())
}

#[test]
fn models_sent_in_parts_are_encoded_as_the_parts_arrive() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    let scratch = tempfile::tempdir().unwrap();
    let base = model("base/minilm-l6.bf16.safetensors");
    let tuned = model("ft/ft-a-contrastive.bf16.safetensors");
    // The aws cli sends 8 MiB parts, ten at a time: later parts wait for part 1's header.
    let base_path = scratch.path().join("base.safetensors");
    std::fs::write(&base_path, &base).unwrap();
    gateway.aws(&["s3", "cp", base_path.to_str().unwrap(), "s3://models/base.safetensors"]);
    assert_eq!(gateway.etag("models", "base.safetensors"), multipart_etag(&base, 8 << 20));
    assert_eq!(completions(&gateway, "encoded"), 1, "the base was left for the packer");
    assert_eq!(blobs(&gateway), 0, "a part was stored as it came");
    let base_packed = gateway.store().index.pack_bytes().unwrap();
    // Parts of 5 MiB cut the fine-tune's chunks elsewhere than the base's 8 MiB parts did.
    let reads_before = gateway.upstream_reads();
    let sizes = vec![5 << 20; (tuned.len() - 1) / (5 << 20)];
    let etag = upload_in_parts(&gateway, "models", "tuned.safetensors", &tuned, &sizes, scratch.path());
    assert_eq!(etag, multipart_etag(&tuned, 5 << 20));
    assert_eq!(completions(&gateway, "encoded"), 2, "the fine-tune was left for the packer");
    assert_eq!(blobs(&gateway), 0);
    let tuned_packed = gateway.store().index.pack_bytes().unwrap() - base_packed;
    println!("base {} of {} bytes; fine-tune {} of {} bytes; {} upstream reads for the fine-tune", base_packed, base.len(), tuned_packed, tuned.len(), gateway.upstream_reads() - reads_before);
    assert!(base_packed * 100 < base.len() as u64 * 80, "the base was not compressed: {base_packed}");
    assert!(tuned_packed * 100 < tuned.len() as u64 * 20, "the fine-tune was not stored as deltas: {tuned_packed}");
    for (key, bytes) in [("base.safetensors", &base), ("tuned.safetensors", &tuned)] {
        assert!(get(&gateway, "models", key, &scratch.path().join("back")) == *bytes, "{key} reads back other bytes");
        check_ranges(&gateway, "models", key, bytes, scratch.path());
    }
    let check = gateway.fsck();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

#[test]
fn parts_that_break_the_guess_cost_savings_only() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    let scratch = tempfile::tempdir().unwrap();
    let tuned = model("ft/ft-b-mlm.bf16.safetensors");
    // Part 2 is longer than part 1: part 3 is encoded where it is not; the packer stores the
    // object again.
    let etag = upload_in_parts(&gateway, "models", "unequal", &tuned, &[5 << 20, 6 << 20, 5 << 20], scratch.path());
    let mut digests = Vec::new();
    let mut start = 0;
    for end in [5 << 20, 11 << 20, 16 << 20, tuned.len()] {
        digests.extend(hex::decode(md5_hex(&tuned[start..end])).unwrap());
        start = end;
    }
    assert_eq!(etag, format!("{}-4", md5_hex(&digests)));
    assert_eq!(completions(&gateway, "for_packer"), 1, "a wrong guess goes to the packer");
    assert!(get(&gateway, "models", "unequal", &scratch.path().join("back")) == tuned, "read before packing");
    gateway.drain_packer();
    assert!(get(&gateway, "models", "unequal", &scratch.path().join("back")) == tuned, "read after packing");
    // A part sent again replaces the one before; an aborted upload lets go of its parts.
    let json = |output: std::process::Output| -> serde_json::Value { serde_json::from_slice(&output.stdout).unwrap() };
    let created = json(gateway.aws(&["s3api", "create-multipart-upload", "--bucket", "models", "--key", "dropped"]));
    let upload_id = created["UploadId"].as_str().unwrap().to_owned();
    let part = scratch.path().join("part");
    for (number, range) in [("1", 0..5 << 20), ("2", 5 << 20..10 << 20), ("2", 10 << 20..15 << 20)] {
        std::fs::write(&part, &tuned[range]).unwrap();
        gateway.aws(&["s3api", "upload-part", "--bucket", "models", "--key", "dropped", "--part-number", number, "--upload-id", &upload_id, "--body", part.to_str().unwrap()]);
    }
    let check = gateway.fsck();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    gateway.aws(&["s3api", "abort-multipart-upload", "--bucket", "models", "--key", "dropped", "--upload-id", &upload_id]);
    gateway.aws(&["s3", "rm", "s3://models/unequal"]);
    gateway.collect_garbage();
    let check = gateway.fsck();
    assert!(check.problems.is_empty() && check.chunks == 0, "{:?}, {} chunks left", check.problems, check.chunks);
    assert_eq!(gateway.store().index.pack_bytes().unwrap(), 0);
}
