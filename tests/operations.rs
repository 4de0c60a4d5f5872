//! Running the gateway: the README's first command, the shipped deployment config, and the
//! metrics and health port.

mod support;

use std::time::{Duration, Instant};

use support::scrape::{http_get, metric};
use support::*;

/// The shipped deployment config passes `tensorgate config check`; a broken one does not.
#[test]
fn deploy_config_passes_config_check() {
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate")).arg("--config").arg(path).args(["config", "check"]).output().unwrap()
    };
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tensorgate.toml");
    let output = check(&shipped);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let work = tempfile::tempdir().unwrap();
    // The config inside the Kubernetes Secret: the block under `tensorgate.toml: |`, dedented.
    let manifests = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/tensorgate.yaml")).unwrap();
    let block = manifests.split("tensorgate.toml: |\n").nth(1).and_then(|rest| rest.split("\n---").next()).unwrap();
    let kubernetes = work.path().join("kubernetes.toml");
    std::fs::write(&kubernetes, block.lines().map(|line| line.strip_prefix("    ").unwrap_or(line)).collect::<Vec<_>>().join("\n")).unwrap();
    let output = check(&kubernetes);
    assert!(output.status.success(), "the Kubernetes config: {}", String::from_utf8_lossy(&output.stderr));
    let broken = work.path().join("broken.toml");
    let text = std::fs::read_to_string(&shipped).unwrap() + "\n[[tenants]]\nname = \"models\"\n[[tenants.access_keys]]\naccess_key = \"x\"\nsecret_key = \"y\"\n";
    std::fs::write(&broken, text).unwrap();
    let output = check(&broken);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("defined twice"));
}

/// The README's first command: `tensorgate serve` with no config serves the embedded default
/// (data under ./tensorgate-data, the printed default key), and `aws s3 cp` round-trips a model.
#[test]
fn serve_without_config_round_trips_a_model() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    while !banner.contains("secret key") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "serve exited: {banner}");
        banner.push_str(&line);
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let key = tensorgate::config::DEFAULT_ACCESS_KEY;
    let secret = tensorgate::config::DEFAULT_SECRET_KEY;
    assert!(banner.contains(key) && banner.contains(secret), "{banner}");
    let model = corpus("ft/ft-b-mlm.bf16.safetensors");
    let out = work.path().join("back.safetensors");
    for args in [
        vec!["s3", "mb", "s3://models"],
        vec!["s3", "cp", model.to_str().unwrap(), "s3://models/ft-b.safetensors"],
        vec!["s3", "cp", "s3://models/ft-b.safetensors", out.to_str().unwrap()],
    ] {
        let output = aws_command(&endpoint, key, secret).args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&model).unwrap());
    assert!(work.path().join("tensorgate-data/upstream/packs").is_dir(), "the embedded upstream is ./tensorgate-data");
}

/// The metrics port answers health and readiness, and its counters move with the traffic.
#[test]
fn metrics_and_health_follow_the_traffic() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config.usage_refresh_secs = 1;
    });
    let address = gateway.gateway.as_ref().unwrap().metrics_address.unwrap();
    assert_eq!(http_get(address, "/health"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(address, "/ready").0, 200);
    assert_eq!(http_get(address, "/nothing").0, 404);
    let base = corpus("base/minilm-l6.bf16.safetensors");
    let tuned = corpus("ft/ft-a-contrastive.bf16.safetensors");
    gateway.aws(&["s3", "mb", "s3://metered"]);
    gateway.aws(&["s3", "cp", base.to_str().unwrap(), "s3://metered/base"]);
    gateway.aws(&["s3", "cp", tuned.to_str().unwrap(), "s3://metered/tuned"]);
    let sizes = std::fs::metadata(&base).unwrap().len() + std::fs::metadata(&tuned).unwrap().len();
    // The usage gauges are read from the index in the background, every second here.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let (status, scrape) = http_get(address, "/metrics");
        assert_eq!(status, 200);
        let stored = scrape.lines().any(|line| line == format!(r#"tensorgate_logical_bytes{{tenant="default"}} {sizes}"#));
        if stored || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric(&before, "tensorgate_bytes_in_total") as u64, sizes);
    assert!(metric(&before, r#"tensorgate_requests_total{method="PUT",status="200"}"#) >= 3.0);
    assert!(metric(&before, r#"tensorgate_chunks_total{outcome="delta"}"#) > 0.0);
    assert!(metric(&before, r#"tensorgate_chunks_total{outcome="deduplicated"}"#) > 0.0, "frozen tensors dedup");
    assert_eq!(metric(&before, r#"tensorgate_logical_bytes{tenant="default"}"#) as u64, sizes);
    assert!(metric(&before, r#"tensorgate_physical_bytes{tenant="default"}"#) < sizes as f64 / 2.0);
    assert_eq!(metric(&before, "tensorgate_packer_queue"), 0.0);
    let out = gateway.dir.path().join("out");
    gateway.aws(&["s3", "cp", "s3://metered/tuned", out.to_str().unwrap()]);
    let after = http_get(address, "/metrics").1;
    let served = metric(&after, "tensorgate_bytes_out_total") - metric(&before, "tensorgate_bytes_out_total");
    assert_eq!(served as u64, std::fs::metadata(&tuned).unwrap().len());
    assert!(metric(&after, "tensorgate_upstream_reads_total") > metric(&before, "tensorgate_upstream_reads_total"));
    assert!(metric(&after, r#"tensorgate_chunk_cache_total{result="miss"}"#) > 0.0);
}
