//! Peak memory and throughput of a large model through the real gateway process.
//!
//! Builds a safetensors model of `TG_BENCH_GIB` GiB (default 2) from the corpus, every
//! tensor copy perturbed so that no chunk deduplicates, then with `aws` against a release
//! `tensorgate serve` over the local-directory upstream:
//! 1. a single streaming PUT (`s3api put-object`), then a GET, each in a fresh gateway process,
//!    reporting the process's peak RSS (VmHWM) and the GET's MB/s;
//! 2. the same bytes made not-a-model (a header byte changed), and as many random bytes, both
//!    stored as content-defined chunks, and read back;
//! 3. a multipart upload (`s3 cp`) and the background packer's re-encode, with its peak RSS.
//!
//! Run: `cargo bench -p tensorgate --bench large_object`

use std::time::{Duration, Instant};

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod support;

use support::{same_file, timed, write_model, Gateway};

/// `len` pseudo-random bytes (xorshift), written in 1 MiB pieces.
fn write_noise(path: &std::path::Path, len: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut piece = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < len {
        for word in piece.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let take = (len - written).min(piece.len() as u64) as usize;
        file.write_all(&piece[..take]).unwrap();
        written += take as u64;
    }
}

fn main() {
    let gib: f64 = std::env::var("TG_BENCH_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.safetensors");
    let size = write_model(&model, (gib * (1u64 << 30) as f64) as u64, 1);
    let second_model = work.path().join("second.safetensors");
    write_model(&second_model, size, 2);
    let plain = work.path().join("plain.bin");
    std::fs::copy(&model, &plain).unwrap();
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&plain).unwrap();
        file.seek(std::io::SeekFrom::Start(8)).unwrap();
        file.write_all(b"X").unwrap();
    }
    let noise = work.path().join("noise.bin");
    write_noise(&noise, size);
    let download = work.path().join("download");
    let data_dir = work.path().join("data");
    let mb = size as f64 / 1e6;
    println!("model: {mb:.0} MB\n");
    println!("| step | seconds | MB/s | gateway peak RSS MiB |");
    println!("|---|---|---|---|");

    let gateway = Gateway::start(&data_dir, "");
    gateway.aws(&["s3", "mb", "s3://bench"]);
    let secs = timed(|| gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "model", "--body", model.to_str().unwrap()]));
    println!("| PUT model (single request, encoded as it streams) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let packs = data_dir.join("upstream/packs");
    let pack_bytes = || std::fs::read_dir(&packs).map(|d| d.flatten().map(|e| e.metadata().unwrap().len()).sum::<u64>()).unwrap_or(0);
    let model_packs = pack_bytes();
    let secs = timed(|| gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "plain", "--body", plain.to_str().unwrap()]));
    println!("| PUT same bytes, not a model (content-defined chunks, zstd) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let secs = timed(|| gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "noise", "--body", noise.to_str().unwrap()]));
    println!("| PUT as many random bytes (content-defined chunks, stored frames) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    drop(gateway);

    let gateway = Gateway::start(&data_dir, "");
    let secs = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "model", download.to_str().unwrap()]));
    assert!(same_file(&download, &model), "packed model read back differently");
    println!("| GET packed model | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let secs = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "plain", download.to_str().unwrap()]));
    assert!(same_file(&download, &plain), "plain object read back differently");
    println!("| GET same bytes, not a model (content-defined chunks) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let secs = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "noise", download.to_str().unwrap()]));
    assert!(same_file(&download, &noise), "random bytes read back differently");
    println!("| GET the random bytes | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    drop(gateway);

    let gateway = Gateway::start(&data_dir, "");
    let secs = timed(|| gateway.aws(&["s3", "cp", second_model.to_str().unwrap(), "s3://bench/multipart"]));
    println!("| multipart upload (aws s3 cp, parts stored as they came) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let before = pack_bytes();
    let started = Instant::now();
    let mut last = before;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = pack_bytes();
        if now > before && now == last {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "the packer made no progress");
        last = now;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("| background packer re-encodes the multipart upload | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let secs = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "multipart", download.to_str().unwrap()]));
    assert!(same_file(&download, &second_model), "packed multipart upload read back differently");
    println!("| GET after packing | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    println!("\nupstream pack bytes of the single-PUT model: {model_packs} of {size} ({:.1}%)", 100.0 * model_packs as f64 / size as f64);
}
