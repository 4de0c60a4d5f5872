//! Peak memory and throughput of a large model through the real gateway process.
//!
//! Builds a safetensors model of `TG_BENCH_GIB` GiB (default 2) from the corpus, every
//! tensor copy perturbed so that no chunk deduplicates, then with `aws` against a release
//! `tensorgate serve` over the local-directory upstream:
//! 1. a single streaming PUT (`s3api put-object`), then a GET, each in a fresh gateway process,
//!    reporting the process's peak RSS (VmHWM) and the GET's MB/s;
//! 2. the same bytes made not-a-model (first byte changed), stored as they came, and read back:
//!    the direct upstream read to compare the packed GET with;
//! 3. a multipart upload (`s3 cp`) and the background packer's re-encode, with its peak RSS.
//!
//! Run: `cargo bench -p tensorgate --bench large_object`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "tg-bench";
const SECRET: &str = "tg-bench-secret";

#[path = "../../tests/support/corpus.rs"]
mod corpus_location;

/// Writes a model of about `target` bytes: the corpus base's tensors again and again under new
/// names, the low mantissa bits of each copy scrambled so every chunk is new.
fn write_model(path: &Path, target: u64, seed: u64) -> u64 {
    let source = std::fs::read(corpus_location::corpus_dir().join("base/minilm-l6.bf16.safetensors")).unwrap();
    let layout = tensorgate_codec::parse_file(&source).unwrap();
    let data = &source[layout.data_start() as usize..];
    let copies = (target / data.len() as u64).max(1) as usize;
    let mut header = String::from("{");
    let mut offset = 0u64;
    for copy in 0..copies {
        for tensor in &layout.tensors {
            let end = offset + tensor.len();
            header.push_str(&format!(
                "\"c{copy}.{}\":{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{offset},{end}]}},",
                tensor.name,
                tensor.dtype.name(),
                tensor.shape
            ));
            offset = end;
        }
    }
    header.pop();
    header.push('}');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    use std::io::Write;
    file.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    file.write_all(header.as_bytes()).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut copy_bytes = data.to_vec();
    for _ in 0..copies {
        for (i, byte) in copy_bytes.iter_mut().enumerate() {
            if i % 2 == 0 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                *byte = data[i] ^ ((state >> 61) as u8);
            }
        }
        file.write_all(&copy_bytes).unwrap();
    }
    file.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

struct Gateway {
    child: Child,
    endpoint: String,
}

impl Gateway {
    fn start(data_dir: &Path) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = data_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!("gc_interval_secs = 3600\n[[access_keys]]\naccess_key = \"{KEY}\"\nsecret_key = \"{SECRET}\"\n"),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tensorgate"))
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    fn aws(&self, args: &[&str]) {
        let output = Command::new("aws")
            .arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(output.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Peak resident memory of the gateway process so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn timed(work: impl FnOnce()) -> f64 {
    let started = Instant::now();
    work();
    started.elapsed().as_secs_f64()
}

fn same_file(a: &Path, b: &Path) -> bool {
    Command::new("cmp").arg("-s").arg(a).arg(b).status().unwrap().success()
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
    let download = work.path().join("download");
    let data_dir = work.path().join("data");
    let mb = size as f64 / 1e6;
    println!("model: {mb:.0} MB\n");
    println!("| step | seconds | MB/s | gateway peak RSS MiB |");
    println!("|---|---|---|---|");

    let gateway = Gateway::start(&data_dir);
    gateway.aws(&["s3", "mb", "s3://bench"]);
    let secs = timed(|| gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "model", "--body", model.to_str().unwrap()]));
    println!("| PUT model (single request, encoded as it streams) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let secs = timed(|| gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "plain", "--body", plain.to_str().unwrap()]));
    println!("| PUT same bytes, not a model (stored as they came) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    drop(gateway);

    let gateway = Gateway::start(&data_dir);
    let secs = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "model", download.to_str().unwrap()]));
    assert!(same_file(&download, &model), "packed model read back differently");
    println!("| GET packed model | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let secs = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "plain", download.to_str().unwrap()]));
    assert!(same_file(&download, &plain), "plain object read back differently");
    println!("| GET same bytes stored as they came (direct upstream read) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    drop(gateway);

    let gateway = Gateway::start(&data_dir);
    let secs = timed(|| gateway.aws(&["s3", "cp", second_model.to_str().unwrap(), "s3://bench/multipart"]));
    println!("| multipart upload (aws s3 cp, parts stored as they came) | {secs:.1} | {:.0} | {:.0} |", mb / secs, gateway.peak_rss_mib());
    let packs = data_dir.join("upstream/packs");
    let pack_bytes = || std::fs::read_dir(&packs).map(|d| d.flatten().map(|e| e.metadata().unwrap().len()).sum::<u64>()).unwrap_or(0);
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
    println!("\nupstream pack bytes of the single-PUT model: {before} of {size} ({:.1}%)", 100.0 * before as f64 / size as f64);
}
