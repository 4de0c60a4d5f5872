//! A model uploaded in parts, as every real client uploads one: encoded as the parts arrive,
//! against the same upload stored as it came and packed after completion, and against a raw
//! gateway that stores it as it came for good, in the same run.
//!
//! Builds a bf16 model of `TG_BENCH_MB` MB (default 600) in tensors of 16 MiB (as
//! `model_load`) and a fine-tune of it, then in each of three fresh release gateways uploads the
//! base, then the fine-tune, with `aws s3 cp` (8 MiB parts, ten at a time):
//! - `encoded`: the default, parts encoded as they arrive;
//! - `packed after`: `encode_parts = false`, parts stored as they came, the packer encodes the
//!   object after completion (what every earlier stop did);
//! - `raw`: also `min_model_bytes` above any size: stored as it came, never packed.
//!
//! For each upload: the seconds `aws s3 cp` took, and for `packed after` the seconds until the
//! packer is done; the bytes written upstream (files under the upstream directory after the
//! upload, and after packing, before garbage collection), the bytes read back from the upstream
//! (`upstream_read_bytes`), the gateway's peak RSS, the CPU seconds of the gateway and of the
//! client (on the same cores). Every object is read back and compared.
//!
//! Run: `cargo bench -p tensorgate --bench multipart_upload` (needs aws).

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{children_cpu_seconds, same_file, timed, write_fine_tune, write_model_shaped, Gateway};

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() { bytes_under(&entry.path()) } else { entry.metadata().unwrap().len() }
        })
        .sum()
}

/// Waits until the packer has stored `objects` objects since the gateway started (with
/// `encode_parts` none is left for it: it returns at once).
fn wait_for_packer(gateway: &Gateway, objects: f64) -> f64 {
    let started = Instant::now();
    while gateway.metric("tensorgate_packed_objects_total").unwrap_or(0.0) < objects {
        std::thread::sleep(Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(1800), "the packer never finished");
    }
    started.elapsed().as_secs_f64()
}

struct Upload {
    seconds: f64,
    packing_seconds: f64,
    written: u64,
    read_back: f64,
    peak_rss_mib: f64,
    /// CPU seconds of the gateway (upload and packing) and of `aws s3 cp`.
    gateway_cpu: f64,
    client_cpu: f64,
}

fn main() {
    let mb: u64 = std::env::var("TG_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base.safetensors");
    let size = write_model_shaped(&base, mb * 1_000_000, 1, Some(16 << 20));
    let tuned = work.path().join("fine-tune.safetensors");
    write_fine_tune(&base, &tuned);
    println!("model: {size} bytes; fine-tune of it");
    // Each with the objects its packer stores after each upload.
    let variants = [
        ("encoded", "", 0.0),
        ("packed after", "encode_parts = false", 1.0),
        ("raw", "encode_parts = false\nmin_model_bytes = 9223372036854775807", 0.0),
    ];
    println!("| gateway | object | upload s | packing s | written upstream MB | x raw | read back MB | peak RSS MiB | CPU s gateway / client |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, config, packed_per_upload) in variants {
        let data_dir = work.path().join(name.replace(' ', "-"));
        let upstream = data_dir.join("upstream");
        let gateway = Gateway::start(&data_dir, config);
        gateway.aws(&["s3", "mb", "s3://bench"]);
        let mut written_before = 0;
        for (uploads, (object, file)) in [("base", &base), ("fine-tune", &tuned)].into_iter().enumerate() {
            gateway.reset_peak_rss();
            let read_before = gateway.metric("tensorgate_upstream_read_bytes_total").unwrap_or(0.0);
            let (gateway_cpu, client_cpu) = (gateway.cpu_seconds(), children_cpu_seconds());
            let seconds = timed(|| gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://bench/{object}")]));
            let after_upload = bytes_under(&upstream);
            let client_cpu = children_cpu_seconds() - client_cpu;
            let packing_seconds = wait_for_packer(&gateway, packed_per_upload * (uploads + 1) as f64);
            let gateway_cpu = gateway.cpu_seconds() - gateway_cpu;
            let after_packing = bytes_under(&upstream);
            // Before garbage collection (an hour away), the parts the packer replaced are still
            // there: what was written is what the upstream holds beyond what it held before.
            let written = after_upload.max(after_packing) - written_before;
            written_before = after_packing;
            let upload = Upload {
                seconds,
                packing_seconds,
                written,
                read_back: gateway.metric("tensorgate_upstream_read_bytes_total").unwrap_or(0.0) - read_before,
                peak_rss_mib: gateway.peak_rss_mib(),
                gateway_cpu,
                client_cpu,
            };
            println!(
                "| {name} | {object} | {:.2} | {:.2} | {:.1} | {:.3} | {:.1} | {:.0} | {:.2} / {:.2} |",
                upload.seconds,
                upload.packing_seconds,
                upload.written as f64 / 1e6,
                upload.written as f64 / size as f64,
                upload.read_back / 1e6,
                upload.peak_rss_mib,
                upload.gateway_cpu,
                upload.client_cpu
            );
            let back = work.path().join("back");
            gateway.aws(&["s3", "cp", &format!("s3://bench/{object}"), back.to_str().unwrap()]);
            assert!(same_file(&back, file), "{name}: {object} reads back other bytes");
        }
    }
}
