//! Reading back what a test stored: the upstream's bytes once settled, whole objects and
//! ranges compared with the bytes they must hold.

use std::path::Path;

use super::TestGateway;

/// Bytes of every file under `dir`: what the upstream holds (packs, blobs, manifests).
pub fn upstream_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() { upstream_bytes(&entry.path()) } else { entry.metadata().unwrap().len() }
        })
        .sum()
}

/// What the upstream holds once the packer has run and garbage collection has nothing more to
/// do: re-basing and compaction leave the packs they replaced in the trash, which the next run
/// deletes (the grace period is zero in tests).
pub fn settled_upstream(gateway: &TestGateway) -> u64 {
    gateway.drain_packer();
    let upstream = gateway.dir.path().join("data/upstream");
    let mut last = u64::MAX;
    for _ in 0..8 {
        gateway.collect_garbage();
        let now = upstream_bytes(&upstream);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// An object read back whole with the aws cli.
pub fn get(gateway: &TestGateway, bucket: &str, key: &str, into: &Path) -> Vec<u8> {
    gateway.aws(&["s3", "cp", &format!("s3://{bucket}/{key}"), into.to_str().unwrap()]);
    std::fs::read(into).unwrap()
}

/// Ranged GETs through boto3 at offsets around chunk boundaries and at random, each compared
/// with the bytes.
pub fn check_ranges(gateway: &TestGateway, bucket: &str, key: &str, bytes: &[u8], work: &Path) {
    let len = bytes.len() as u64;
    let mut ranges = vec![(0, 0), (0, 99), (len - 1, len - 1), (len / 2 - 70_000, len / 2 + 70_000)];
    let mut state = len;
    for _ in 0..6 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let start = (state >> 20) % len;
        let end = (start + (state >> 40) % (3 << 20)).min(len - 1);
        ranges.push((start, end));
    }
    for (start, end) in ranges {
        let out = work.join("range");
        gateway.aws(&["s3api", "get-object", "--bucket", bucket, "--key", key, "--range", &format!("bytes={start}-{end}"), out.to_str().unwrap()]);
        let got = std::fs::read(&out).unwrap();
        assert!(got == bytes[start as usize..=end as usize], "range {start}-{end} of {key} differs");
    }
}

/// Reads the corpus `files` from `bucket` through `endpoint` with aws cli, in turn, until `stop`
/// is set and each was read once, asserting each byte-identical to its corpus file (while
/// maintenance runs); the thread returns how many reads it made.
pub fn read_corpus_until(endpoint: String, bucket: &'static str, files: &'static [&'static str], stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let work = tempfile::tempdir().unwrap();
        let mut reads = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < files.len() {
            let file = files[reads % files.len()];
            let out = work.path().join("read");
            let status = super::aws_command(&endpoint, super::ACCESS_KEY, super::SECRET_KEY)
                .args(["s3", "cp", &format!("s3://{bucket}/{file}"), out.to_str().unwrap(), "--quiet"])
                .status()
                .unwrap();
            assert!(status.success(), "reading {file} failed");
            assert!(std::fs::read(&out).unwrap() == std::fs::read(super::corpus(file)).unwrap(), "{file} read back wrong");
            reads += 1;
        }
        reads
    })
}
