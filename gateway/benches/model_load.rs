//! Loading a delta-coded fine-tune the way model loaders do, against a raw gateway that stores
//! the same bytes as they came (`min_model_bytes` above any size), in the same run.
//!
//! Builds a bf16 model of `TG_BENCH_MB` MB (default 600) from the corpus, in tensors of
//! `TG_BENCH_TENSOR_MIB` MiB (default 16, with a small norm every fourth; 0 keeps the corpus
//! model's own tensors of at most 1.2 MB), and a fine-tune of it (one weight in four moved by a
//! unit or two in the last place), stores both in each gateway
//! with a single streaming PUT each, then, each load in a fresh gateway process:
//! 1. 120 concurrent tensor-aligned ranged GETs of up to 8 MiB, as runai-model-streamer sends
//!    them (`tests/clients/ranged_loader.py`): seconds, time to first byte p50/p99, peak RSS;
//! 2. the same with ranges of up to 1.5 MiB, so that ranges share the 4 MiB chunks at their
//!    boundaries; and with 8 threads (a boto3 loader with 8 MiB ranges);
//! 3. one aws cli stream (`s3api get-object`), and `s5cmd cp` when it is installed.
//!
//! With each load, the bytes of chunks tensorgate decoded for it (bases not counted) per byte
//! it returned, and the CPU seconds the gateway and the client spent (both on the same cores).
//! Each load runs `TG_BENCH_ROUNDS` times (default 3) on each gateway in turn; each gateway's
//! fastest run is reported.
//!
//! Run: `cargo bench -p tensorgate --bench model_load` (needs aws, python3 with boto3).
//! `TG_BENCH_CONFIG` adds configuration lines to the tensorgate gateway (not the raw one).

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{children_cpu_seconds, same_file, timed, write_fine_tune, write_model_shaped, Gateway, KEY, SECRET};

/// One way of loading the fine-tune from a gateway; `None` when its tool is not installed.
type LoadWith<'a> = dyn Fn(&Gateway) -> Option<Load> + 'a;

/// A gateway that stores everything as it came.
const RAW: &str = "min_model_bytes = 9223372036854775807";

struct Load {
    seconds: f64,
    ttfb_p50: Option<f64>,
    ttfb_p99: Option<f64>,
    peak_rss_mib: f64,
    /// Bytes of chunks decoded per byte returned (`read_decoded_bytes` over `bytes_out`), when
    /// the gateway counts them.
    decoded_per_byte: Option<f64>,
    /// CPU seconds of the gateway and of the client while the client ran (the client's own
    /// start included: for the loader, Python's imports and reading the model it checks against).
    gateway_cpu: f64,
    client_cpu: f64,
}

impl Load {
    fn measured(gateway: &Gateway, seconds: f64, ttfb: Option<(f64, f64)>, (gateway_cpu, client_cpu): (f64, f64)) -> Load {
        let decoded = gateway.metric("tensorgate_read_decoded_bytes_total");
        let returned = gateway.metric("tensorgate_bytes_out_total");
        let decoded_per_byte = decoded.zip(returned).map(|(decoded, returned)| decoded / returned.max(1.0));
        Load {
            seconds,
            ttfb_p50: ttfb.map(|(p50, _)| p50),
            ttfb_p99: ttfb.map(|(_, p99)| p99),
            peak_rss_mib: gateway.peak_rss_mib(),
            decoded_per_byte,
            gateway_cpu: gateway.cpu_seconds() - gateway_cpu,
            client_cpu: children_cpu_seconds() - client_cpu,
        }
    }
}

fn loader(gateway: &Gateway, model: &Path, threads: usize, range_mib: &str) -> Load {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/ranged_loader.py");
    let cpu = (gateway.cpu_seconds(), children_cpu_seconds());
    let output = Command::new("python3")
        .arg(script)
        .args([&gateway.endpoint, "bench", "fine-tune"])
        .arg(model)
        .args([threads.to_string(), range_mib.to_owned()])
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "ranged loader: {}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> f64 {
        let at = line.find(&format!("\"{name}\": ")).unwrap() + name.len() + 4;
        line[at..].split([',', '}']).next().unwrap().trim().parse().unwrap()
    };
    Load::measured(gateway, field("seconds"), Some((field("ttfb_p50"), field("ttfb_p99"))), cpu)
}

fn single_stream(gateway: &Gateway, model: &Path, download: &Path) -> Load {
    let cpu = (gateway.cpu_seconds(), children_cpu_seconds());
    let seconds = timed(|| gateway.aws(&["s3api", "get-object", "--bucket", "bench", "--key", "fine-tune", download.to_str().unwrap()]));
    let load = Load::measured(gateway, seconds, None, cpu);
    assert!(same_file(download, model), "the fine-tune read back differently");
    load
}

fn s5cmd(gateway: &Gateway, model: &Path, download: &Path) -> Option<Load> {
    Command::new("s5cmd").arg("version").output().ok()?;
    let mut command = Command::new("s5cmd");
    command.args(["--endpoint-url", &gateway.endpoint, "cp", "s3://bench/fine-tune"]).arg(download);
    command.env("AWS_ACCESS_KEY_ID", KEY).env("AWS_SECRET_ACCESS_KEY", SECRET).env("AWS_REGION", "us-east-1");
    let cpu = (gateway.cpu_seconds(), children_cpu_seconds());
    let seconds = timed(|| assert!(command.status().unwrap().success(), "s5cmd cp failed"));
    let load = Load::measured(gateway, seconds, None, cpu);
    assert!(same_file(download, model), "the fine-tune read back differently through s5cmd");
    Some(load)
}

fn main() {
    let mb: f64 = std::env::var("TG_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(600.0);
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base.safetensors");
    // Tensors of TG_BENCH_TENSOR_MIB MiB (16 by default, as in a large language model; 0 keeps
    // the corpus model's own small tensors).
    let tensor_mib: u64 = std::env::var("TG_BENCH_TENSOR_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let size = write_model_shaped(&base, (mb * 1e6) as u64, 1, (tensor_mib > 0).then_some(tensor_mib << 20));
    let tuned = work.path().join("fine-tune.safetensors");
    write_fine_tune(&base, &tuned);
    let download = work.path().join("download");
    let shape = if tensor_mib > 0 { format!("tensors of {tensor_mib} MiB") } else { "the corpus model's tensors".to_owned() };
    println!("fine-tune: {:.0} MB, {shape}, delta-coded against its base\n", size as f64 / 1e6);
    let dirs = [work.path().join("tensorgate"), work.path().join("raw")];
    let configured = std::env::var("TG_BENCH_CONFIG").unwrap_or_default();
    let rounds: usize = std::env::var("TG_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let extras = [configured.as_str(), RAW];
    for (dir, extra) in dirs.iter().zip(extras) {
        let gateway = Gateway::start(dir, extra);
        gateway.aws(&["s3", "mb", "s3://bench"]);
        gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "base", "--body", base.to_str().unwrap()]);
        gateway.aws(&["s3api", "put-object", "--bucket", "bench", "--key", "fine-tune", "--body", tuned.to_str().unwrap()]);
    }
    // The uploads' writes reach the disk before the loads start, rather than during the first.
    assert!(Command::new("sync").status().unwrap().success());
    let loads: [(&str, &LoadWith<'_>); 5] = [
        ("120 concurrent tensor-aligned ranges of up to 8 MiB (runai-like)", &|g| Some(loader(g, &tuned, 120, "8"))),
        ("120 concurrent tensor-aligned ranges of up to 1.5 MiB (chunks shared by ranges)", &|g| Some(loader(g, &tuned, 120, "1.5"))),
        ("8 threads of 8 MiB ranges (boto3 loader)", &|g| Some(loader(g, &tuned, 8, "8"))),
        ("aws cli, one stream", &|g| Some(single_stream(g, &tuned, &download))),
        ("s5cmd cp", &|g| s5cmd(g, &tuned, &download)),
    ];
    println!("| load | tensorgate s | raw s | time ratio | TTFB p50 / p99 s (tensorgate) | TTFB p50 / p99 s (raw) | peak RSS MiB tensorgate / raw | decoded per byte returned | CPU s gateway / client, tensorgate | CPU s gateway / client, raw |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ttfb = |load: &Load| match (load.ttfb_p50, load.ttfb_p99) {
        (Some(p50), Some(p99)) => format!("{p50:.3} / {p99:.3}"),
        _ => "n/a".to_owned(),
    };
    for (name, load) in loads {
        // Each gateway's fastest of the rounds, run in turn (this machine's timings vary by up
        // to 2x from run to run).
        let mut results: [Option<Load>; 2] = [None, None];
        for _ in 0..rounds {
            for (best, (dir, extra)) in results.iter_mut().zip(dirs.iter().zip(extras)) {
                if let Some(this) = load(&Gateway::start(dir, extra)) {
                    if best.as_ref().is_none_or(|best| this.seconds < best.seconds) {
                        *best = Some(this);
                    }
                }
            }
        }
        let (Some(packed), Some(raw)) = (&results[0], &results[1]) else {
            println!("| {name} | not installed | | | | | | | | |");
            continue;
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} / {:.0} | {} | {:.2} / {:.2} | {:.2} / {:.2} |",
            packed.seconds,
            raw.seconds,
            packed.seconds / raw.seconds,
            ttfb(packed),
            ttfb(raw),
            packed.peak_rss_mib,
            raw.peak_rss_mib,
            packed.decoded_per_byte.map_or("n/a".to_owned(), |ratio| format!("{ratio:.2}")),
            packed.gateway_cpu,
            packed.client_cpu,
            raw.gateway_cpu,
            raw.client_cpu
        );
    }
}
