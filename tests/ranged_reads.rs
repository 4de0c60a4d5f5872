//! Model loaders' reads (issue 15): many concurrent tensor-aligned ranged GETs of a
//! delta-coded fine-tune, as runai-model-streamer sends them, against the real gateway process:
//! every byte as stored, the process's memory bounded, and each chunk decoded about once
//! however many ranges share it.

mod support;

use std::process::Stdio;

use support::scrape::{http_get, metric};
use support::*;

/// The peak resident memory of process `pid` so far, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// 120 ranged GETs in flight at once, over a fresh gateway process, read a 56 MB fine-tune
/// exactly; the gateway's peak memory stays under `MAX_RSS_MIB`, and the chunks it decodes for
/// them (bases aside) come to at most `MAX_DECODED_PER_BYTE` times the bytes it returns,
/// though a 4 MiB chunk holds the tensors of several 0.5 MiB ranges.
#[test]
fn concurrent_tensor_aligned_ranges_read_exactly_in_bounded_memory() {
    const MAX_RSS_MIB: u64 = 384;
    const MAX_DECODED_PER_BYTE: f64 = 1.1;
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base.safetensors");
    std::fs::write(&base, replicated_model(&corpus("base/minilm-l6.bf16.safetensors"), 16)).unwrap();
    let tuned = work.path().join("fine-tune.safetensors");
    std::fs::write(&tuned, perturbed_model(&base, 5)).unwrap();
    let metrics_port = free_port();
    let config = write_config(work.path(), &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""), "");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut gateway = serve_process(&config, port, Stdio::null());
    for args in [
        vec!["s3", "mb", "s3://loads"],
        vec!["s3api", "put-object", "--bucket", "loads", "--key", "base", "--body", base.to_str().unwrap()],
        vec!["s3api", "put-object", "--bucket", "loads", "--key", "fine-tune", "--body", tuned.to_str().unwrap()],
    ] {
        let output = aws_command(&endpoint, ACCESS_KEY, SECRET_KEY).args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();

    // A fresh process, so that its peak memory is that of the loads alone.
    let log = work.path().join("gateway.log");
    let mut gateway = serve_process(&config, port, Stdio::from(std::fs::File::create(&log).unwrap()));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/ranged_loader.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args([&endpoint, "loads", "fine-tune"])
        .arg(&tuned)
        .args(["120", "0.5"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let peak = peak_rss_mib(gateway.id());
    let (_, scrape) = http_get(([127, 0, 0, 1], metrics_port).into(), "/metrics");
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(output.status.success(), "{said}{}\ngateway log:\n{}", String::from_utf8_lossy(&output.stderr), &log[log.len().saturating_sub(3000)..]);
    let decoded = metric(&scrape, "tensorgate_read_decoded_bytes_total");
    let returned = metric(&scrape, "tensorgate_bytes_out_total");
    eprintln!("{said}peak RSS {peak} MiB; decoded {decoded} bytes of chunks for {returned} bytes returned");
    assert!(peak <= MAX_RSS_MIB, "the gateway peaked at {peak} MiB under 120 concurrent ranged reads");
    assert!(
        decoded <= MAX_DECODED_PER_BYTE * returned,
        "GETs decoded {decoded} bytes of chunks to return {returned} bytes"
    );
}

/// Readers that stop reading are cut off and give back the byte budget their answers held: with
/// a budget of 8 MiB, six GETs that read a few bytes and stop hold all of it, and another
/// client's read of the whole model completes within 30 s only because the gateway closes the
/// stalled connections after `response_idle_timeout_secs` (2 s here), short of the object.
#[test]
fn stalled_readers_are_cut_off_and_give_back_the_byte_budget() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.max_in_flight_bytes = 8 << 20;
        config.response_idle_timeout_secs = 2;
    });
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.safetensors");
    std::fs::write(&model, replicated_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 8)).unwrap();
    gateway.aws(&["s3", "mb", "s3://cut"]);
    gateway.aws(&["s3api", "put-object", "--bucket", "cut", "--key", "model", "--body", model.to_str().unwrap()]);
    let size = std::fs::metadata(&model).unwrap().len().to_string();
    let said = gateway.python_client("stalled_readers.py", &["cut".as_ref(), "model".as_ref(), size.as_ref(), "6".as_ref(), "cut".as_ref()]);
    assert!(said.contains("all checks passed"), "{said}");
    let metrics = &gateway.store().metrics;
    assert!(metrics.response_timeouts.get() >= 6, "{} connections cut off", metrics.response_timeouts.get());
    assert!(metrics.response_waits.get() >= 1, "the full read waited for the budget");
}

/// Readers that stop reading hold no decode slot: 12 GETs of a delta-coded model that read a
/// few bytes and stop (more than the slots of any machine CI runs on hold), then another client
/// reads the whole model in full within 30 seconds (tests/clients/stalled_readers.py).
#[test]
fn stalled_readers_do_not_hold_up_other_reads() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = work.path().join("tuned.safetensors");
    std::fs::write(&tuned, replicated_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 8)).unwrap();
    gateway.aws(&["s3", "mb", "s3://stalls"]);
    gateway.aws(&["s3api", "put-object", "--bucket", "stalls", "--key", "base", "--body", base.to_str().unwrap()]);
    gateway.aws(&["s3api", "put-object", "--bucket", "stalls", "--key", "tuned", "--body", tuned.to_str().unwrap()]);
    let size = std::fs::metadata(&tuned).unwrap().len().to_string();
    let said = gateway.python_client("stalled_readers.py", &["stalls".as_ref(), "tuned".as_ref(), size.as_ref(), "12".as_ref()]);
    assert!(said.contains("all checks passed"), "{said}");
}
