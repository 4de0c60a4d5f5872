//! What the gateway benchmarks share: a large model made from the corpus, and a release
//! `tensorgate serve` process with its peak memory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "tg-bench";
pub const SECRET: &str = "tg-bench-secret";

#[path = "../../../tests/support/corpus.rs"]
mod corpus_location;

/// Writes a model of about `target` bytes: the corpus base's tensors again and again under new
/// names, the low mantissa bits of each copy scrambled so every chunk is new.
pub fn write_model(path: &Path, target: u64, seed: u64) -> u64 {
    write_model_shaped(path, target, seed, None)
}

/// [`write_model`], with the same bytes described as bf16 tensors of `tensor_bytes` each (rows
/// of 384) and a 768-byte norm after every fourth, as the layers of a large language model are,
/// when `tensor_bytes` is given.
pub fn write_model_shaped(path: &Path, target: u64, seed: u64, tensor_bytes: Option<u64>) -> u64 {
    let source = std::fs::read(corpus_location::corpus_dir().join("base/minilm-l6.bf16.safetensors")).unwrap();
    let layout = tensorgate_codec::parse_file(&source).unwrap();
    let data = &source[layout.data_start as usize..];
    let copies = (target / data.len() as u64).max(1) as usize;
    let mut header = String::from("{");
    let mut entry = |name: String, dtype: &str, shape: &[u64], start: u64, end: u64| {
        header.push_str(&format!("\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{end}]}},"));
    };
    let total = copies as u64 * data.len() as u64;
    match tensor_bytes {
        None => {
            let mut offset = 0u64;
            for copy in 0..copies {
                for tensor in &layout.tensors {
                    entry(format!("c{copy}.{}", tensor.name), tensor.dtype.name(), &tensor.shape, offset, offset + tensor.len());
                    offset += tensor.len();
                }
            }
        }
        Some(size) => {
            let (mut offset, mut layer) = (0u64, 0);
            while offset < total {
                let end = (offset + size).min(total);
                entry(format!("layers.{layer}.weight"), "BF16", &[(end - offset) / 768, 384], offset, end - (end - offset) % 768);
                offset = end - (end - offset) % 768;
                if layer % 4 == 3 && offset + 768 <= total {
                    entry(format!("layers.{layer}.norm"), "BF16", &[384], offset, offset + 768);
                    offset += 768;
                }
                if offset + 768 > total {
                    entry("tail".to_owned(), "U8", &[total - offset], offset, total);
                    break;
                }
                layer += 1;
            }
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

pub struct Gateway {
    child: Child,
    pub endpoint: String,
    metrics_port: u16,
}

impl Gateway {
    /// A release gateway over a local-directory upstream in `data_dir`, with `extra` config
    /// lines.
    pub fn start(data_dir: &Path, extra: &str) -> Gateway {
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (port, metrics_port) = (free_port(), free_port());
        let config = data_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!("gc_interval_secs = 3600\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{extra}\n[[access_keys]]\naccess_key = \"{KEY}\"\nsecret_key = \"{SECRET}\"\n"),
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
        Gateway { child, endpoint: format!("http://127.0.0.1:{port}"), metrics_port }
    }

    pub fn aws(&self, args: &[&str]) {
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

    /// The value of one series (`name{labels}`) on the gateway's metrics port, if it has it.
    pub fn metric(&self, series: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut scrape = String::new();
        stream.read_to_string(&mut scrape).unwrap();
        let line = scrape.lines().find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '));
        line.and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    /// Starts counting the gateway's peak resident memory again from what it holds now.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// Peak resident memory of the gateway process so far (or since the last
    /// [`Gateway::reset_peak_rss`]), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// Resident memory of the gateway process now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn timed(work: impl FnOnce()) -> f64 {
    let started = Instant::now();
    work();
    started.elapsed().as_secs_f64()
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    Command::new("cmp").arg("-s").arg(a).arg(b).status().unwrap().success()
}

/// Writes a fine-tune of the model at `base`: the same tensors, one bf16 weight in four moved
/// by one or two units in the last place, so that every chunk is stored as a delta against
/// the base's.
pub fn write_fine_tune(base: &Path, path: &Path) {
    let mut bytes = std::fs::read(base).unwrap();
    let data_start = tensorgate_codec::parse_file(&bytes).unwrap().data_start as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for element in bytes[data_start..].chunks_exact_mut(2) {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        if state >> 62 == 0 {
            let value = u16::from_le_bytes([element[0], element[1]]);
            let moved = if state & (1 << 40) == 0 { value.wrapping_add(1 + (state >> 41 & 1) as u16) } else { value.wrapping_sub(1) };
            element.copy_from_slice(&moved.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// CPU seconds (user and system) of `stat`'s fields `user` and `user + 1`, from a
/// `/proc/*/stat` line, at the kernel's 100 ticks a second.
fn cpu_seconds(stat: &str, user: usize) -> f64 {
    // Fields after the command name, which may hold spaces, start at field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks = |field: usize| fields[field - 3].parse::<f64>().unwrap();
    (ticks(user) + ticks(user + 1)) / 100.0
}

/// CPU seconds the children this process has waited for have spent so far (the clients a
/// bench runs to their end), from `/proc/self/stat`.
pub fn children_cpu_seconds() -> f64 {
    cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap(), 16)
}

impl Gateway {
    /// CPU seconds the gateway process has spent since it started.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap(), 14)
    }
}
