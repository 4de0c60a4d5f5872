//! Peak memory with eight clients at once, half uploading and half downloading models.
//!
//! Writes eight models of `TG_BENCH_MB` MB (default 600) from the corpus, every tensor copy
//! perturbed so that no chunk deduplicates, and stores four of them with single PUTs. Then,
//! from a fresh release `tensorgate serve` over the local-directory upstream:
//! 1. four `aws s3 cp` uploads (multipart, ten parts in flight each, encoded as they arrive
//!    since stop 25) and four `aws s3 cp` downloads (ranged GETs, ten in flight each), all at
//!    once; then the background packer re-encoding the multipart uploads left to it (none
//!    unless `encode_parts = false`, or a part fell back to being stored as it came);
//! 2. all eight models downloaded at once.
//!
//! Every download is compared byte for byte with its source. Each row gives the seconds, the
//! bytes moved per second, the gateway's peak RSS (VmHWM) during that step and its RSS at the
//! step's end (what it kept).
//!
//! Run: `cargo bench -p tensorgate --bench concurrent_clients` (needs aws).
//! `TG_BENCH_CONFIG` adds configuration lines to the gateway.

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{same_file, write_model, Gateway, KEY, SECRET};

const CLIENTS: usize = 8;

/// Starts `aws s3 cp from to` against `gateway` without waiting for it.
fn spawn_copy(gateway: &Gateway, from: &str, to: &str) -> Child {
    Command::new("aws")
        .args(["--endpoint-url", &gateway.endpoint, "s3", "cp", "--only-show-errors", from, to])
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for every copy, failing on any that failed.
fn wait_all(children: Vec<Child>) {
    for mut child in children {
        assert!(child.wait().unwrap().success(), "an aws s3 cp failed");
    }
}

/// Waits until the packer has no object left to re-encode (the gauge is refreshed every second
/// by the bench's configuration).
fn wait_for_packer(gateway: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(1800);
    std::thread::sleep(Duration::from_secs(3));
    while gateway.metric("tensorgate_packer_queue") != Some(0.0) {
        assert!(Instant::now() < deadline, "the packer did not finish in 30 minutes");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn url(index: usize) -> String {
    format!("s3://bench/model-{index}")
}

fn main() {
    let mb: f64 = std::env::var("TG_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(600.0);
    let extra = format!("usage_refresh_secs = 1\n{}", std::env::var("TG_BENCH_CONFIG").unwrap_or_default());
    let work = tempfile::tempdir().unwrap();
    let models: Vec<PathBuf> = (0..CLIENTS).map(|index| work.path().join(format!("model-{index}.safetensors"))).collect();
    let mut size = 0;
    for (index, model) in models.iter().enumerate() {
        size = write_model(model, (mb * 1e6) as u64, 100 + index as u64);
    }
    let downloads: Vec<PathBuf> = (0..CLIENTS).map(|index| work.path().join(format!("download-{index}"))).collect();
    let data_dir = work.path().join("data");
    let total_mb = |count: usize| count as f64 * size as f64 / 1e6;
    println!("{CLIENTS} models of {:.0} MB\n", size as f64 / 1e6);
    println!("| step | seconds | MB/s moved | gateway peak RSS MiB | RSS at the end MiB |");
    println!("|---|---|---|---|---|");

    let (uploads, stored) = (0..CLIENTS / 2, CLIENTS / 2..CLIENTS);
    {
        let gateway = Gateway::start(&data_dir, &extra);
        gateway.aws(&["s3", "mb", "s3://bench"]);
        for index in stored.clone() {
            gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", &format!("model-{index}"), "--body", models[index].to_str().unwrap()]);
        }
    }
    let sync = || assert!(Command::new("sync").status().unwrap().success());
    sync();

    let gateway = Gateway::start(&data_dir, &extra);
    let started = Instant::now();
    let mut children: Vec<Child> = uploads.clone().map(|index| spawn_copy(&gateway, models[index].to_str().unwrap(), &url(index))).collect();
    children.extend(stored.clone().map(|index| spawn_copy(&gateway, &url(index), downloads[index].to_str().unwrap())));
    wait_all(children);
    let secs = started.elapsed().as_secs_f64();
    println!("| 4 multipart uploads and 4 downloads at once | {secs:.1} | {:.0} | {:.0} | {:.0} |", total_mb(CLIENTS) / secs, gateway.peak_rss_mib(), gateway.rss_mib());
    gateway.reset_peak_rss();
    let started = Instant::now();
    wait_for_packer(&gateway);
    let secs = started.elapsed().as_secs_f64();
    println!("| the packer re-encoding the 4 uploads | {secs:.1} | {:.0} | {:.0} | {:.0} |", total_mb(CLIENTS / 2) / secs, gateway.peak_rss_mib(), gateway.rss_mib());
    for index in stored.clone() {
        assert!(same_file(&models[index], &downloads[index]), "download {index} differs");
    }
    sync();

    gateway.reset_peak_rss();
    let started = Instant::now();
    let children: Vec<Child> = (0..CLIENTS).map(|index| spawn_copy(&gateway, &url(index), downloads[index].to_str().unwrap())).collect();
    wait_all(children);
    let secs = started.elapsed().as_secs_f64();
    println!("| 8 downloads at once | {secs:.1} | {:.0} | {:.0} | {:.0} |", total_mb(CLIENTS) / secs, gateway.peak_rss_mib(), gateway.rss_mib());
    for (model, download) in models.iter().zip(&downloads) {
        assert!(same_file(model, download), "{} differs", download.display());
    }
}
