//! Savings on real models: fine-tunes stored as deltas against bases found by fingerprint in
//! any order and under any name (or named by the client), the pack command line, and `stats`
//! attributing every byte to one technique.

mod support;

use support::*;

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

/// A fine-tune uploaded before its base makes the base a delta of it; the fine-tunes that
/// come later still take their deltas against the base, their nearest tensor (a delta of a
/// delta), and cost about what they cost when the base came first.
#[test]
fn fine_tunes_after_a_late_base_cost_what_they_cost_after_an_early_one() {
    // The first fine-tune is the one that drifted furthest (masked-LM training moves every
    // embedding row): a delta against it costs the others far more than one against the base.
    let later = ["ft/ft-a-contrastive.bf16.safetensors", "ft/ft-c-cls.bf16.safetensors", "lora/lora-r8-qv-merged.bf16.safetensors", "ckpt/ft-a-contrastive.step0030.bf16.safetensors"];
    let mut costs = Vec::new();
    for first in [["base/minilm-l6.bf16.safetensors", "ft/ft-b-mlm.bf16.safetensors"], ["ft/ft-b-mlm.bf16.safetensors", "base/minilm-l6.bf16.safetensors"]] {
        let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
        gateway.aws(&["s3", "mb", "s3://family"]);
        let mut later_cost = 0;
        for (index, file) in first.iter().chain(later.iter()).enumerate() {
            let before = gateway.store().index.pack_bytes().unwrap();
            gateway.aws(&["s3api", "put-object", "--bucket", "family", "--key", &format!("m{index}"), "--body", corpus(file).to_str().unwrap()]);
            if index >= first.len() {
                later_cost += gateway.store().index.pack_bytes().unwrap() - before;
            }
        }
        let out = gateway.dir.path().join("back");
        gateway.aws(&["s3", "cp", "s3://family/m3", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(corpus(later[1])).unwrap());
        let check = gateway.fsck();
        assert!(check.problems.is_empty(), "{:?}", check.problems);
        costs.push(later_cost);
    }
    let raw: u64 = later.iter().map(|file| std::fs::metadata(corpus(file)).unwrap().len()).sum();
    println!("the later fine-tunes ({raw} bytes raw): {} after the base first, {} after a fine-tune first", costs[0], costs[1]);
    assert!(costs[1] as f64 <= 1.1 * costs[0] as f64, "{costs:?}");
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
    // A multipart upload names its base at its creation (as `aws s3 cp --metadata` does for any
    // file past its 8 MiB threshold); the packer takes it from the object's metadata.
    let json = |output: std::process::Output| -> serde_json::Value { serde_json::from_slice(&output.stdout).unwrap() };
    let tuned = corpus("ckpt/ft-a-contrastive.step0060.bf16.safetensors");
    let before = gateway.store().index.pack_bytes().unwrap();
    let created = json(gateway.aws(&[
        "s3api", "create-multipart-upload", "--bucket", "tunes", "--key", "by-parts", "--metadata", "tensorgate-base=bases/base.safetensors",
    ]));
    let upload_id = created["UploadId"].as_str().unwrap().to_owned();
    let uploaded = json(gateway.aws(&[
        "s3api", "upload-part", "--bucket", "tunes", "--key", "by-parts", "--part-number", "1", "--upload-id", &upload_id, "--body", tuned.to_str().unwrap(),
    ]));
    let parts = format!(r#"{{"Parts":[{{"ETag":{:?},"PartNumber":1}}]}}"#, uploaded["ETag"].as_str().unwrap());
    gateway.aws(&["s3api", "complete-multipart-upload", "--bucket", "tunes", "--key", "by-parts", "--upload-id", &upload_id, "--multipart-upload", &parts]);
    gateway.drain_packer();
    added.push(gateway.store().index.pack_bytes().unwrap() - before);
    let out = gateway.dir.path().join("back");
    gateway.aws(&["s3", "cp", "s3://tunes/by-parts", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&tuned).unwrap());
    let raw = std::fs::metadata(corpus("ft/ft-a-contrastive.bf16.safetensors")).unwrap().len();
    assert!(added[0] * 100 > raw * 50 && added[1] * 100 > raw * 50, "without a usable hint nothing is a delta: {added:?}");
    assert!(added[2] * 100 < raw * 15, "the hinted base was not used: {added:?}");
    assert!(added[3] * 100 < raw * 15, "the base named at the upload's creation was not used: {added:?}");
}

/// `stats` attributes every logical byte to one technique: a copy to file dedup, a fine-tune to
/// deltas, a base to compression, a small object to bytes stored as they came; the parts add up.
#[test]
fn stats_split_savings_by_technique() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://counted"]);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = corpus("ft/ft-a-contrastive.bf16.safetensors");
    let work = tempfile::tempdir().unwrap();
    let noise_file = work.path().join("noise");
    std::fs::write(&noise_file, noise(200_000, 5)).unwrap();
    let small_file = work.path().join("small");
    std::fs::write(&small_file, noise(50_000, 6)).unwrap();
    let savings = || gateway.store().index.savings(|key| key.bucket == "counted").unwrap();

    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://counted/base"]);
    let after_base = savings();
    assert!(after_base.compression > 0 && after_base.delta == 0 && after_base.file_dedup == 0, "{after_base:?}");
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://counted/copy"]);
    gateway.aws(&["s3", "cp", tuned.to_str().unwrap(), "s3://counted/tuned"]);
    gateway.aws(&["s3", "cp", noise_file.to_str().unwrap(), "s3://counted/noise"]);
    gateway.aws(&["s3", "cp", small_file.to_str().unwrap(), "s3://counted/small"]);
    let all = savings();
    assert_eq!(all.objects, 5);
    assert_eq!(all.file_dedup, std::fs::metadata(&base).unwrap().len());
    assert!(all.delta > 0, "{all:?}");
    // Objects under `min_model_bytes` are the only ones stored as they came; the noise is
    // stored as chunks, which do not compress (stored frames cost their header).
    assert_eq!(all.stored_as_is, 50_000);
    assert!(all.physical_bytes < after_base.physical_bytes + 250_000 + 1_000 + after_base.physical_bytes / 2, "the fine-tune cost more than half its base: {all:?}");
    let accounted = all.physical_bytes as i64 + (all.file_dedup + all.chunk_dedup + all.headers) as i64 + all.delta + all.compression;
    assert_eq!(accounted, all.logical_bytes as i64, "{all:?}");
}
