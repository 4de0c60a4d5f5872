//! Three real `tensorgate serve` processes over one moto upstream (`shared_upstream = true`),
//! with garbage collection every second and a short grace period, take PUTs (single and
//! multipart, the same payloads through different gateways, under the same and different
//! keys), overwrites and deletes racing each other, from tests/clients/cluster_workload.py,
//! while one gateway at a time is killed with SIGKILL at a random moment and restarted. Every
//! key must then hold a state some order of the requests allows, the same through every
//! gateway and through a gateway whose index was rebuilt from the upstream alone, and fsck must
//! be clean on every data directory (after one collection there, see the end).
//!
//! `TG_CLUSTER_ROUNDS` sets the number of kills (default 10).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// One gateway process and how to start it again.
struct Gateway {
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Gateway {
    fn new(dir: &Path, moto: &Moto) -> Gateway {
        let upstream = moto.upstream_config();
        let settings = "shared_upstream = true\nshared_sync_secs = 1\ngc_interval_secs = 1\ngc_grace_secs = 5\ngc_lease_secs = 4\norphan_scan_secs = 2";
        let table = format!(
            "[upstream]\nendpoint = {:?}\nbucket = {:?}\nprefix = {:?}\naccess_key = \"moto\"\nsecret_key = \"moto\"\npath_style = true\n",
            upstream.endpoint, upstream.bucket, upstream.prefix
        );
        let mut gateway = Gateway { config: write_config(dir, settings, &table), port: free_port(), child: None };
        gateway.start();
        gateway
    }

    fn start(&mut self) {
        self.child = Some(serve_process(&self.config, self.port, Stdio::null()));
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signal(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Runs a `tensorgate` admin command on this gateway's data (the process stopped).
    fn admin(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_tensorgate")).arg("--config").arg(&self.config).args(args).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "tensorgate {args:?}: {said}");
        said
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.signal("-9");
    }
}

/// A small deterministic generator, so that a failing run can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

fn workload(args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/cluster_workload.py");
    let mut command = Command::new("python3");
    command.arg(script).args(args).env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    command
}

#[test]
fn three_gateways_killed_at_random_lose_no_acknowledged_write() {
    let rounds: u64 = std::env::var("TG_CLUSTER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    let mut gateways: Vec<Gateway> = (0..3)
        .map(|n| {
            let dir = work.path().join(format!("gateway-{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            Gateway::new(&dir, &moto)
        })
        .collect();
    let made = aws_command(&gateways[0].endpoint(), ACCESS_KEY, SECRET_KEY).args(["s3", "mb", "s3://cluster"]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::thread::sleep(Duration::from_secs(2));

    let big = work.path().join("big.safetensors");
    std::fs::write(&big, replicated_model(&corpus("ft/ft-c-cls.bf16.safetensors"), 3)).unwrap();
    let noise_file = work.path().join("noise.bin");
    std::fs::write(&noise_file, noise(150_000, 4)).unwrap();
    let payloads: Vec<String> = [
        corpus("base/minilm-l6.bf16.safetensors"),
        corpus("ft/ft-a-contrastive.bf16.safetensors"),
        corpus("ft/ft-b-mlm.bf16.safetensors"),
        big,
        noise_file,
    ]
    .iter()
    .map(|path| path.to_str().unwrap().to_owned())
    .collect();
    let payload_args: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let endpoints = gateways.iter().map(Gateway::endpoint).collect::<Vec<_>>().join(",");
    let log = work.path().join("requests.jsonl");
    let log_arg = log.to_str().unwrap();

    let mut random = Random(0xc1a5_5eed);
    for round in 0..rounds {
        let seed = round.to_string();
        let mut run = workload(&["run", &endpoints, "4", &seed, log_arg]).args(&payload_args).stdout(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300 + random.next(3000)));
        let victim = random.next(3) as usize;
        gateways[victim].signal("-9");
        std::thread::sleep(Duration::from_millis(random.next(1000)));
        gateways[victim].start();
        assert!(run.wait().unwrap().success(), "the workload of round {round} failed");
    }
    // Every gateway catches up (sync every second) before the check.
    std::thread::sleep(Duration::from_secs(3));
    let checked = workload(&["check", &endpoints, log_arg]).args(&payload_args).output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(checked.status.success(), "after {rounds} kills:\n{said}{}", String::from_utf8_lossy(&checked.stderr));
    println!("{rounds} kills:\n{said}");

    // A fourth gateway rebuilds its index from the upstream alone and reads the same.
    let rebuilt_dir = work.path().join("rebuilt");
    std::fs::create_dir_all(&rebuilt_dir).unwrap();
    let mut rebuilt = Gateway::new(&rebuilt_dir, &moto);
    rebuilt.signal("-TERM");
    std::fs::remove_dir_all(rebuilt_dir.join("data/index")).unwrap();
    rebuilt.admin(&["index", "rebuild"]);
    rebuilt.start();
    let checked = workload(&["check", &rebuilt.endpoint(), log_arg]).args(&payload_args).output().unwrap();
    assert!(checked.status.success(), "through the rebuilt index:\n{}", String::from_utf8_lossy(&checked.stdout));

    for gateway in gateways.iter_mut().chain([&mut rebuilt]) {
        gateway.signal("-TERM");
    }
    // A pack freed within the last `orphan_scan_secs` waits for the lease holder's next orphan
    // scan to reach its trash: one collection on each gateway first (the holder's scans), then
    // fsck, which judges orphans on the lease's last holder only. Both judge orphans by their
    // age: the collections wait out the grace period (and the lease) of the last orphans the
    // gateways left, so that no orphan comes of age between a collection and an fsck.
    std::thread::sleep(Duration::from_secs(6));
    for gateway in gateways.iter().chain([&rebuilt]) {
        gateway.admin(&["gc"]);
    }
    for gateway in gateways.iter().chain([&rebuilt]) {
        gateway.admin(&["fsck", "--verify-frames"]);
    }
}
