//! Availability (issue 12): stalled and slow clients do not stall others; upstream trouble is
//! answered with retryable 5xx quickly and never blamed on the client; a stopping gateway
//! drains; a config that `config check` refuses does not serve. Real clients against the
//! local directory and moto.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tensorgate::config::{AccessKey, TenantConfig};

/// A stalled 2 GiB PUT (and 20 more stalled PUTs) of one tenant delay another tenant's 10 MB
/// PUT by less than a second; stalled bodies fail with RequestTimeout after the idle timeout
/// and give their budget back; sockets that never finish their headers are closed after the
/// header timeout (tests/clients/stalls.py).
#[test]
fn stalled_clients_do_not_stall_others() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.tenants = vec![
            TenantConfig { name: "a".into(), access_keys: vec![AccessKey::new("key-a", "secret-a")], max_buckets: None, upstream: None, dedup_group: None },
            TenantConfig { name: "b".into(), access_keys: vec![AccessKey::new("key-b", "secret-b")], max_buckets: None, upstream: None, dedup_group: None },
        ];
        config.header_read_timeout_secs = 2;
        config.body_idle_timeout_secs = 3;
        // Tenant A's share holds its stalled bodies (the 2 GiB one is charged what a write can
        // buffer, the others 1 MiB each) and no more; the gateway's holds both tenants' shares.
        let share = tensorgate::engine::ingest::body_buffer_bytes() + (24 << 20);
        config.max_in_flight_bytes_per_tenant = Some(share);
        config.max_in_flight_bytes = 2 * share;
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/stalls.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&gateway.endpoint)
        .env("AWS_ACCESS_KEY_ID", "key-a")
        .env("AWS_SECRET_ACCESS_KEY", "secret-a")
        .env("OTHER_ACCESS_KEY_ID", "key-b")
        .env("OTHER_SECRET_ACCESS_KEY", "secret-b")
        .env("HEADER_TIMEOUT", "2")
        .env("IDLE_TIMEOUT", "3")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{said}");
    assert!(output.status.success() && said.contains("all checks passed"), "{said}");
    let metrics = &gateway.store().metrics;
    assert!(metrics.body_idle_timeouts.get() >= 21, "idle timeouts counted: {}", metrics.body_idle_timeouts.get());
    assert!(metrics.header_timeouts.get() >= 50, "header timeouts counted: {}", metrics.header_timeouts.get());
}

/// With two tenants and 8 request slots, one tenant's 8 slow uploads hold only its share of
/// them (4): its next request gets SlowDown, while the other tenant's requests are served.
#[test]
fn one_tenant_cannot_take_every_request_slot() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.tenants = vec![TenantConfig { name: "b".into(), access_keys: vec![AccessKey::new("key-b", "secret-b")], max_buckets: None, upstream: None, dedup_group: None }];
        config.max_concurrent_requests = 8;
    });
    gateway.aws(&["s3", "mb", "s3://slots"]);
    let made = aws_command(&gateway.endpoint, "key-b", "secret-b").args(["s3", "mb", "s3://other"]).output().unwrap();
    assert!(made.status.success());
    let model = corpus("base/minilm-l6.bf16.safetensors");
    let half = std::fs::metadata(&model).unwrap().len() as usize / 2;
    // Paused long enough for the eight to start one after the other and the two checks to run.
    let slow: Vec<_> = (0..8).map(|n| slow_put(&gateway.endpoint, "slots", &format!("slow{n}"), &model, half, 12.0)).collect();
    let own = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY).args(["s3api", "list-objects-v2", "--bucket", "slots"]).env("AWS_MAX_ATTEMPTS", "1").output().unwrap();
    let other = aws_command(&gateway.endpoint, "key-b", "secret-b").args(["s3api", "list-objects-v2", "--bucket", "other"]).env("AWS_MAX_ATTEMPTS", "1").output().unwrap();
    let uploaded = slow.into_iter().map(|child| child.wait_with_output().unwrap().status.success()).filter(|ok| *ok).count();
    assert!(String::from_utf8_lossy(&own.stderr).contains("SlowDown"), "the tenant past its share: {}", String::from_utf8_lossy(&own.stderr));
    assert!(other.status.success(), "the other tenant was refused: {}", String::from_utf8_lossy(&other.stderr));
    assert_eq!(uploaded, 4, "the slow uploads within the tenant's share complete, the others get SlowDown");
}

/// What an aws cli call answered, and how long it took.
struct Answer {
    succeeded: bool,
    stderr: String,
    seconds: f64,
}

fn timed(gateway: &TestGateway, args: &[&str]) -> Answer {
    let started = Instant::now();
    let output = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY).args(args).env("AWS_MAX_ATTEMPTS", "1").output().unwrap();
    Answer { succeeded: output.status.success(), stderr: String::from_utf8_lossy(&output.stderr).into_owned(), seconds: started.elapsed().as_secs_f64() }
}

/// With the upstream down, a PUT of a new model answers 503 within 5 s and a GET 503 (not a
/// 200 cut short); no answer names the upstream; once it is back, writes succeed again.
fn outage(kind: UpstreamKind) {
    let down = Arc::new(AtomicBool::new(false));
    let down_handle = down.clone();
    let mut gateway = TestGateway::start_wrapped(kind, |_| {}, move |upstream| {
        let mut faulty = support::faults::FaultyUpstream::new(upstream, 0);
        faulty.down = down_handle;
        Arc::new(faulty)
    });
    let work = tempfile::tempdir().unwrap();
    let (stored, fresh) = (work.path().join("stored"), work.path().join("fresh"));
    std::fs::write(&stored, perturbed_model(&corpus("base/minilm-l6.bf16.safetensors"), 11)).unwrap();
    std::fs::write(&fresh, perturbed_model(&corpus("base/minilm-l6.bf16.safetensors"), 12)).unwrap();
    gateway.aws(&["s3", "mb", "s3://outage"]);
    gateway.aws(&["s3", "cp", stored.to_str().unwrap(), "s3://outage/stored"]);

    match kind {
        UpstreamKind::Moto => gateway.moto.as_mut().unwrap().stop(),
        UpstreamKind::LocalDirectory => down.store(true, Ordering::SeqCst),
    }
    let out = work.path().join("out");
    let mut answers = Vec::new();
    for round in 0..3 {
        let put = timed(&gateway, &["s3api", "put-object", "--bucket", "outage", "--key", &format!("fresh{round}"), "--body", fresh.to_str().unwrap()]);
        let get = timed(&gateway, &["s3api", "get-object", "--bucket", "outage", "--key", "stored", out.to_str().unwrap()]);
        for (what, answer) in [("PUT", &put), ("GET", &get)] {
            assert!(!answer.succeeded, "{kind:?} round {round}: a {what} with the upstream down succeeded");
            assert!(answer.stderr.contains("(ServiceUnavailable)"), "{kind:?} round {round}: {what} answered {}", answer.stderr);
            assert!(answer.seconds < 5.0, "{kind:?} round {round}: {what} took {:.1} s", answer.seconds);
            let moto_port = gateway.moto.as_ref().map(|moto| moto.endpoint.rsplit(':').next().unwrap().to_owned());
            for secret in ["packs/", "manifests/", "injected", "tg/", "127.0.0.1"].into_iter().chain(moto_port.as_deref()) {
                assert!(!answer.stderr.contains(secret), "{kind:?}: the {what} answer names {secret:?}: {}", answer.stderr);
            }
        }
        answers.push((put.seconds, get.seconds));
    }
    println!("{kind:?}: with the upstream down, PUT and GET answered 503 in {answers:?} seconds");

    match kind {
        UpstreamKind::Moto => gateway.moto.as_mut().unwrap().restart(),
        UpstreamKind::LocalDirectory => down.store(false, Ordering::SeqCst),
    }
    let started = Instant::now();
    // With the client's default retries (5 attempts): the circuit refuses calls for up to a
    // second after the last failure, until a probe finds the upstream back.
    let back = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY)
        .args(["s3", "cp", fresh.to_str().unwrap(), "s3://outage/after"])
        .env("AWS_MAX_ATTEMPTS", "5")
        .output()
        .unwrap();
    assert!(back.status.success(), "{kind:?}: a PUT once the upstream is back: {}", String::from_utf8_lossy(&back.stderr));
    println!("{kind:?}: the first PUT after the upstream came back took {:.1} s", started.elapsed().as_secs_f64());
    gateway.aws(&["s3", "cp", "s3://outage/after", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&fresh).unwrap(), "{kind:?}: the write after the outage reads back");
}

#[test]
fn upstream_outage_answers_503_quickly_over_local_directory() {
    outage(UpstreamKind::LocalDirectory);
}

#[test]
fn upstream_outage_answers_503_quickly_over_moto() {
    outage(UpstreamKind::Moto);
}

/// Under 35% injected upstream faults (errors, short reads, stalls), boto3 with its default
/// retries completes every write: upstream failures are retryable 5xx answers. Once the faults
/// stop, every write reads back and, after a collection, fsck is clean.
#[test]
fn boto3_default_retries_complete_every_write_under_upstream_faults() {
    let enabled = Arc::new(AtomicBool::new(true));
    let injected = Arc::new(AtomicU64::new(0));
    let (enabled_handle, injected_handle) = (enabled.clone(), injected.clone());
    let gateway = TestGateway::start_wrapped(UpstreamKind::LocalDirectory, |_| {}, move |upstream| {
        let mut faulty = support::faults::FaultyUpstream::new(upstream, 350);
        faulty.enabled = enabled_handle;
        faulty.injected = injected_handle;
        Arc::new(faulty)
    });
    let work = tempfile::tempdir().unwrap();
    let noise_file = work.path().join("noise");
    std::fs::write(&noise_file, noise(300_000, 4)).unwrap();
    let files = [corpus("base/minilm-l6.bf16.safetensors"), corpus("ft/ft-b-mlm.bf16.safetensors"), noise_file];
    const WRITES: usize = 12;
    let mut args: Vec<&std::ffi::OsStr> = vec!["faults".as_ref(), "12".as_ref()];
    args.extend(files.iter().map(|file| file.as_os_str()));
    let said = gateway.python_client("retried_writes.py", &args);
    println!("under 35% upstream faults ({} injected): {said}", injected.load(Ordering::Relaxed));
    assert!(injected.load(Ordering::Relaxed) > 10, "too few faults met");
    enabled.store(false, Ordering::SeqCst);
    let out = work.path().join("out");
    for number in 0..WRITES {
        gateway.aws(&["s3", "cp", &format!("s3://faults/w{number}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&files[number % files.len()]).unwrap(), "w{number} reads back");
    }
    gateway.collect_garbage();
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// SIGTERM while three uploads are halfway through their bodies: `/ready` says no, the gateway
/// stops taking connections, lets the uploads finish, exits 0; after a restart every upload
/// reads back.
#[test]
fn sigterm_drains_uploads_and_exits_zero() {
    let work = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let config = write_config(work.path(), &format!("drain_secs = 20\nmetrics_listen = \"127.0.0.1:{metrics_port}\""), "");
    let model = work.path().join("model.safetensors");
    std::fs::write(&model, replicated_model(&corpus("ft/ft-c-cls.bf16.safetensors"), 4)).unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let log_path = work.path().join("gateway.log");
    let mut server = serve_process(&config, port, Stdio::from(std::fs::File::create(&log_path).unwrap()));
    let made = aws_command(&endpoint, ACCESS_KEY, SECRET_KEY).args(["s3", "mb", "s3://drain"]).output().unwrap();
    assert!(made.status.success());
    let size = std::fs::metadata(&model).unwrap().len() as usize;
    let uploads: Vec<_> = (0..3).map(|n| slow_put(&endpoint, "drain", &format!("m{n}"), &model, size / 2, 5.0)).collect();
    assert!(ready(metrics_port).starts_with("HTTP/1.1 200"), "ready before SIGTERM");
    let signalled = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(signalled.success());
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let draining = ready(metrics_port);
    assert!(draining.starts_with("HTTP/1.1 503"), "/ready while draining: {draining}");
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "the gateway did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}: {log}");
    let acknowledged: Vec<bool> = uploads.into_iter().map(|upload| upload.wait_with_output().unwrap().status.success()).collect();
    println!("SIGTERM during 3 uploads: stopped in {:.1} s, exit {status}, acknowledged {acknowledged:?}", started.elapsed().as_secs_f64());

    let mut restarted = serve_process(&config, port, Stdio::null());
    let out = work.path().join("out");
    for (n, acknowledged) in acknowledged.iter().enumerate() {
        if *acknowledged {
            let got = aws_command(&endpoint, ACCESS_KEY, SECRET_KEY).args(["s3", "cp", &format!("s3://drain/m{n}"), out.to_str().unwrap()]).output().unwrap();
            assert!(got.status.success(), "m{n} was acknowledged but cannot be read after the restart");
            assert!(std::fs::read(&out).unwrap() == std::fs::read(&model).unwrap(), "m{n} reads back byte-identical");
        }
    }
    assert!(acknowledged.iter().all(|a| *a), "uploads in progress at SIGTERM were not drained to completion: {acknowledged:?}");
    let _ = restarted.kill();
    let _ = restarted.wait();
}

/// The status line and body of `GET /ready` on the metrics port.
fn ready(port: u16) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    connection.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    connection.read_to_string(&mut answer).unwrap();
    answer
}

/// `serve` refuses to start on a config that `config check` refuses: an access key given to
/// two tenants, or a tenant named `default` (the top-level keys' tenant).
#[test]
fn serve_refuses_what_config_check_refuses() {
    let work = tempfile::tempdir().unwrap();
    let cases = [
        ("a key of two tenants", "[[tenants]]\nname = \"a\"\naccess_keys = [{ access_key = \"k\", secret_key = \"s\" }]\n[[tenants]]\nname = \"b\"\naccess_keys = [{ access_key = \"k\", secret_key = \"t\" }]\n", "given twice"),
        ("a tenant named default", "[[tenants]]\nname = \"default\"\naccess_keys = [{ access_key = \"k\", secret_key = \"s\" }]\n", "reserved"),
    ];
    for (what, extra, reason) in cases {
        let config = write_config(work.path(), "", extra);
        let check = Command::new(env!("CARGO_BIN_EXE_tensorgate")).arg("--config").arg(&config).args(["config", "check"]).output().unwrap();
        assert!(!check.status.success() && String::from_utf8_lossy(&check.stderr).contains(reason), "config check with {what}");
        let served = Command::new(env!("CARGO_BIN_EXE_tensorgate"))
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&served.stderr);
        assert!(!served.status.success() && stderr.contains(reason), "serve with {what}: {stderr}");
    }
}

/// Beyond `max_concurrent_requests` requests in progress the gateway answers SlowDown, and
/// clients that retry get through.
#[test]
fn overload_gets_slow_down_and_retries_succeed() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.max_concurrent_requests = 1);
    gateway.aws(&["s3", "mb", "s3://busy"]);
    let model = corpus("ft/ft-b-mlm.bf16.safetensors");
    let script = r#"
import sys, threading, boto3, botocore
from botocore.config import Config
endpoint, path, attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(retries={"max_attempts": attempts, "mode": "standard"}, max_pool_connections=16))
body = open(path, "rb").read()
codes = []
def put(i):
    try:
        s3.put_object(Bucket="busy", Key=f"k{i}", Body=body)
        codes.append("ok")
    except botocore.exceptions.ClientError as error:
        codes.append(error.response["Error"]["Code"])
threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(" ".join(sorted(codes)))
"#;
    let run = |attempts: &str| {
        let output = std::process::Command::new("python3")
            .args(["-c", script, &gateway.endpoint])
            .arg(&model)
            .arg(attempts)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let once = run("1");
    assert!(once.contains("SlowDown") && once.contains("ok"), "without retries some must be turned away: {once}");
    let retried = run("20");
    assert!(retried.split_whitespace().all(|code| code == "ok"), "with retries all must get through: {retried}");
}

/// Short and long bodies, dotted and refused keys, part numbers out of range, huge part lists,
/// tiny parts and lying safetensors headers (tests/clients/hostile.py): each gets the AWS
/// answer or is stored (lying headers as opaque bytes); afterwards the gateway serves on and
/// fsck is clean.
#[test]
fn hostile_requests_get_aws_answers_or_are_stored_byte_identical() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("hostile.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
    gateway.aws(&["s3", "ls", "s3://hostile/"]);
    let report = gateway.fsck();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// With `max_in_flight_bytes` at 1 MiB, an upload waits while another holds the budget
/// (tests/clients/budget.py holds it for two seconds), then completes; both read back whole.
#[test]
fn uploads_wait_for_the_in_flight_byte_budget() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.max_in_flight_bytes = 1 << 20);
    let said = gateway.python_client("budget.py", &[]);
    assert!(said.contains("waited"), "{said}");
    assert!(gateway.store().metrics.body_waits.get() >= 1);
}

/// Timeouts too long for the clock (`u64::MAX` seconds, meant as "never") wait rather than
/// panic: a body that pauses midway once overflowed the idle timer's deadline, and every such
/// upload was cut off.
#[test]
fn timeouts_longer_than_the_clock_never_fire() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        config.body_idle_timeout_secs = u64::MAX;
        config.header_read_timeout_secs = u64::MAX;
        config.response_idle_timeout_secs = u64::MAX;
    });
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://patient"]);
    let file = work.path().join("paused");
    std::fs::write(&file, support::noise(1 << 20, 9)).unwrap();
    let writer = slow_put(&gateway.endpoint, "patient", "paused", &file, 300_000, 1.0);
    let output = writer.wait_with_output().unwrap();
    assert!(output.status.success(), "the paused PUT failed: {}", String::from_utf8_lossy(&output.stdout));
    let back = work.path().join("back");
    gateway.aws(&["s3", "cp", "s3://patient/paused", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
}
