//! Test support: a gateway on a loopback port over a local or a moto upstream, real clients
//! (aws cli, boto3, rclone) run as processes, and model files built from the corpus.

#![allow(dead_code)]

pub mod faults;
pub mod objects;
pub mod scrape;
pub mod shared;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use s3s::crypto::{Checksum as _, Md5};
use tensorgate::config::Config;
use tensorgate::server::{self, RunningGateway};
use tensorgate::upstream::S3UpstreamConfig;

mod corpus;
mod restart;
pub use corpus::corpus_dir;

pub const ACCESS_KEY: &str = "test-access";
pub const SECRET_KEY: &str = "test-secret-key";

/// The bf16 family of the corpus: the base, three fine-tunes, a merged LoRA and two checkpoints.
pub const BF16_FAMILY: [&str; 7] = [
    "base/minilm-l6.bf16.safetensors",
    "ft/ft-a-contrastive.bf16.safetensors",
    "ft/ft-b-mlm.bf16.safetensors",
    "ft/ft-c-cls.bf16.safetensors",
    "lora/lora-r8-qv-merged.bf16.safetensors",
    "ckpt/ft-a-contrastive.step0030.bf16.safetensors",
    "ckpt/ft-a-contrastive.step0060.bf16.safetensors",
];

/// A file of the model corpus (see [`corpus_dir`]).
pub fn corpus(relative: &str) -> PathBuf {
    corpus_dir().join(relative)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Which upstream a test gateway stores into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    LocalDirectory,
    Moto,
}

/// A moto S3 server, killed when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_on(free_port())
    }

    /// Stops the server, as an upstream outage would (its objects are gone with it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new server on the same port, with the bucket `upstream` made again.
    pub fn restart(&mut self) {
        self.stop();
        *self = Moto::start_on(self.port);
    }

    fn start_on(port: u16) -> Moto {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, endpoint, port };
        wait_for_port(port);
        let made = aws_command(&moto.endpoint, "moto", "moto").args(["s3", "mb", "s3://upstream"]).output().unwrap();
        assert!(made.status.success(), "creating the moto bucket: {}", String::from_utf8_lossy(&made.stderr));
        moto
    }
}

impl Moto {
    /// The moto bucket `upstream` (under the prefix `tg/`) as a gateway upstream.
    pub fn upstream_config(&self) -> S3UpstreamConfig {
        S3UpstreamConfig {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".to_owned(),
            bucket: "upstream".to_owned(),
            prefix: "tg/".to_owned(),
            access_key: Some("moto".to_owned()),
            secret_key: Some("moto".to_owned()),
            path_style: true,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "port {port} never opened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An in-process gateway on a loopback port with its own data directory.
pub struct TestGateway {
    pub gateway: Option<RunningGateway>,
    pub runtime: tokio::runtime::Runtime,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub moto: Option<Moto>,
}

/// The scheme a gateway started with `config` answers on.
fn scheme_of(config: &Config) -> &'static str {
    if config.tls.is_some() { "https" } else { "http" }
}

impl TestGateway {
    pub fn start(kind: UpstreamKind) -> TestGateway {
        TestGateway::start_with(kind, |_| {})
    }

    /// Starts a gateway after `adjust` has changed the test configuration.
    pub fn start_with(kind: UpstreamKind, adjust: impl FnOnce(&mut Config)) -> TestGateway {
        TestGateway::start_wrapped(kind, adjust, |upstream| upstream)
    }

    /// Starts a gateway whose upstream is wrapped by `wrap` (to inject faults).
    pub fn start_wrapped(
        kind: UpstreamKind,
        adjust: impl FnOnce(&mut Config),
        wrap: impl FnOnce(std::sync::Arc<dyn tensorgate::upstream::Upstream>) -> std::sync::Arc<dyn tensorgate::upstream::Upstream>,
    ) -> TestGateway {
        // The in-process gateway logs into the test output when RUST_LOG is set.
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_ansi(false).with_test_writer().try_init();
        let dir = tempfile::tempdir().unwrap();
        let moto = (kind == UpstreamKind::Moto).then(Moto::start);
        let mut config = Config::load(None).unwrap();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.path().join("data");
        config.access_keys[0].access_key = ACCESS_KEY.to_owned();
        config.access_keys[0].secret_key = SECRET_KEY.to_owned();
        config.gc_grace_secs = 0;
        config.gc_interval_secs = 3600;
        config.upstream = moto.as_ref().map(Moto::upstream_config);
        adjust(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let upstream = wrap(server::open_upstream(&config).expect("upstream opens"));
        let scheme = scheme_of(&config);
        let gateway = runtime.block_on(server::start_with(config, upstream)).expect("gateway starts");
        let endpoint = format!("{scheme}://{}", gateway.address);
        TestGateway { gateway: Some(gateway), runtime, endpoint, dir, moto }
    }

    pub fn store(&self) -> &tensorgate::engine::Store {
        &self.gateway.as_ref().unwrap().store
    }

    /// `aws --endpoint-url … ARGS`, asserting success.
    pub fn aws(&self, args: &[&str]) -> Output {
        let output = self.aws_unchecked(args);
        assert!(output.status.success(), "aws {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    pub fn aws_unchecked(&self, args: &[&str]) -> Output {
        aws_command(&self.endpoint, ACCESS_KEY, SECRET_KEY).args(args).output().expect("aws cli must be installed")
    }

    /// boto3 through tests/clients/boto3_client.py, asserting success.
    pub fn boto3(&self, args: &[&str]) -> Output {
        let output = self.boto3_unchecked(args);
        assert!(output.status.success(), "boto3 {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    pub fn boto3_unchecked(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/boto3_client.py");
        Command::new("python3")
            .arg(script)
            .arg(&self.endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .expect("python3 with boto3 must be installed")
    }

    /// Runs `tests/clients/<script>` with python3, the endpoint and `args`, signed with the test
    /// key; asserts success and returns its standard output.
    pub fn python_client(&self, script: &str, args: &[&std::ffi::OsStr]) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients").join(script);
        let output = Command::new("python3")
            .arg(path)
            .arg(&self.endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .expect("python3 with boto3 must be installed");
        assert!(output.status.success(), "{script}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// rclone with a remote named `tg` pointing at the gateway, asserting success.
    pub fn rclone(&self, args: &[&str]) -> Output {
        let output = Command::new("rclone")
            .args(args)
            .env("RCLONE_CONFIG_TG_TYPE", "s3")
            .env("RCLONE_CONFIG_TG_PROVIDER", "Other")
            .env("RCLONE_CONFIG_TG_ACCESS_KEY_ID", ACCESS_KEY)
            .env("RCLONE_CONFIG_TG_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RCLONE_CONFIG_TG_ENDPOINT", &self.endpoint)
            .env("RCLONE_CONFIG_TG_REGION", "us-east-1")
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("rclone must be installed");
        assert!(output.status.success(), "rclone {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// The ETag HEAD reports, without quotes.
    pub fn etag(&self, bucket: &str, key: &str) -> String {
        let output = self.aws(&["s3api", "head-object", "--bucket", bucket, "--key", key, "--query", "ETag", "--output", "text"]);
        String::from_utf8_lossy(&output.stdout).trim().trim_matches('"').to_owned()
    }

    /// Runs the packer until its queue is empty.
    pub fn drain_packer(&self) {
        let store = self.gateway.as_ref().unwrap().store.clone();
        self.runtime.block_on(async {
            while tensorgate::maintenance::packer::pack_next(&store).await.expect("packing succeeds") {}
        });
    }

    /// One garbage collection (the grace period is zero in tests).
    pub fn collect_garbage(&self) -> tensorgate::maintenance::gc::GcReport {
        self.runtime.block_on(tensorgate::maintenance::gc::collect_garbage(self.store())).expect("gc succeeds")
    }

    /// fsck with every frame verified, repairing nothing.
    pub fn fsck(&self) -> tensorgate::maintenance::fsck::FsckReport {
        self.fsck_with(tensorgate::maintenance::fsck::FsckOptions { verify_frames: true, repair: false })
    }

    /// `fsck --repair`, frames not verified.
    pub fn fsck_repairing(&self) -> tensorgate::maintenance::fsck::FsckReport {
        self.fsck_with(tensorgate::maintenance::fsck::FsckOptions { verify_frames: false, repair: true })
    }

    /// fsck with `options`.
    pub fn fsck_with(&self, options: tensorgate::maintenance::fsck::FsckOptions) -> tensorgate::maintenance::fsck::FsckReport {
        let store = self.gateway.as_ref().unwrap().store.clone();
        self.runtime.block_on(tensorgate::maintenance::fsck::fsck(&store, options, &|_, _| {})).expect("fsck runs")
    }

    /// Stops the gateway, deletes its index, rebuilds it from the upstream alone (as `tensorgate
    /// index rebuild` does) and serves again over the same upstream; returns the rebuild's report.
    pub fn rebuild_index(&mut self) -> tensorgate::maintenance::rebuild::RebuildReport {
        let running = self.gateway.take().unwrap();
        let config = running.store.config.clone();
        let upstream = server::open_upstream(&config).unwrap();
        let store = running.store.clone();
        running.stop();
        close_store(store);
        std::fs::remove_dir_all(config.data_dir.join("index")).unwrap();
        let store = server::open_store_with(&config, upstream.clone()).unwrap();
        let report = self.runtime.block_on(tensorgate::maintenance::rebuild::rebuild(&store, &|_, _| {})).unwrap();
        close_store(store);
        self.serve_again(config);
        report
    }

    pub fn upstream_reads(&self) -> u64 {
        self.store().metrics.upstream_reads.get()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop();
        }
    }
}

/// A PUT of `file` by tests/clients/slow_put.py that stops after `pause_at` bytes for
/// `pause_seconds`; returns once the pause has begun. Wait on the child for its outcome (it
/// prints the answer's status line, and exits 0 on a 200).
pub fn slow_put(endpoint: &str, bucket: &str, key: &str, file: &Path, pause_at: usize, pause_seconds: f64) -> Child {
    use std::io::BufRead;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/slow_put.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([endpoint, bucket, key])
        .arg(file)
        .args([pause_at.to_string(), pause_seconds.to_string()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with boto3 must be installed");
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.as_mut().unwrap());
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "paused", "slow_put.py did not start its body");
    child
}

/// A config file in `dir` for the real `tensorgate` process: its data directory in `dir`, the
/// test key, the `top_level` settings and then the `tables` (TOML text each).
pub fn write_config(dir: &Path, top_level: &str, tables: &str) -> PathBuf {
    let path = dir.join("tensorgate.toml");
    let text = format!(
        "data_dir = {:?}\n{top_level}\n[[access_keys]]\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n{tables}",
        dir.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The real `tensorgate serve` process with `config`, listening on `port`, its log going to
/// `log`; returns once the port is open.
pub fn serve_process(config: &Path, port: u16, log: Stdio) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tensorgate"))
        .arg("--config")
        .arg(config)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the gateway never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

pub fn aws_command(endpoint: &str, access_key: &str, secret_key: &str) -> Command {
    let mut command = Command::new("aws");
    command
        .arg("--endpoint-url")
        .arg(endpoint)
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "2");
    command
}

pub fn md5_hex(bytes: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update(bytes);
    hex::encode(md5.finalize())
}

/// The ETag S3 gives a multipart upload of `bytes` in parts of `part_size`.
pub fn multipart_etag(bytes: &[u8], part_size: usize) -> String {
    let mut digests = Vec::new();
    let parts: Vec<&[u8]> = bytes.chunks(part_size).collect();
    for part in &parts {
        let mut md5 = Md5::new();
        md5.update(part);
        digests.extend_from_slice(&md5.finalize());
    }
    format!("{}-{}", md5_hex(&digests), parts.len())
}

/// A bigger safetensors file: every tensor of `source` repeated `copies` times under new names
/// (`copyN.<name>`), with `__metadata__`. Real weights, so it compresses like a real model.
pub fn replicated_model(source: &Path, copies: usize) -> Vec<u8> {
    combined_model(&vec![source; copies])
}

/// One model holding the tensors of every source in turn, those of source `i` named
/// `copy<i>.<name>`.
pub fn combined_model(sources: &[&Path]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut body = Vec::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt", "source": "tensorgate tests"}));
    for (copy, source) in sources.iter().enumerate() {
        let file = std::fs::read(source).unwrap();
        let layout = tensorgate_codec::parse_file(&file).unwrap();
        let data = &file[layout.data_start as usize..];
        for tensor in &layout.tensors {
            let start = body.len();
            body.extend_from_slice(&data[tensor.start as usize..tensor.end as usize]);
            header.insert(
                format!("copy{copy}.{}", tensor.name),
                serde_json::json!({"dtype": tensor.dtype.name(), "shape": tensor.shape, "data_offsets": [start, body.len()]}),
            );
        }
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    // Padded with spaces to 8 bytes, as the safetensors library writes headers.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    out
}

/// The model at `source` without the tensors whose names contain one of `dropped`.
pub fn model_without(source: &Path, dropped: &[&str]) -> Vec<u8> {
    let file = std::fs::read(source).unwrap();
    let layout = tensorgate_codec::parse_file(&file).unwrap();
    let data = &file[layout.data_start as usize..];
    let mut header = serde_json::Map::new();
    let mut body = Vec::new();
    for tensor in layout.tensors.iter().filter(|tensor| !dropped.iter().any(|name| tensor.name.contains(name))) {
        let start = body.len();
        body.extend_from_slice(&data[tensor.start as usize..tensor.end as usize]);
        header.insert(tensor.name.clone(), serde_json::json!({"dtype": tensor.dtype.name(), "shape": tensor.shape, "data_offsets": [start, body.len()]}));
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    out
}

pub fn renamed_model(source: &Path, prefix: &str) -> Vec<u8> {
    let file = std::fs::read(source).unwrap();
    let layout = tensorgate_codec::parse_file(&file).unwrap();
    let mut header = serde_json::Map::new();
    for tensor in &layout.tensors {
        header.insert(
            format!("{prefix}{}", tensor.name),
            serde_json::json!({"dtype": tensor.dtype.name(), "shape": tensor.shape, "data_offsets": [tensor.start, tensor.end]}),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&file[layout.data_start as usize..]);
    out
}

/// A model split into `shards` safetensors files named as Hugging Face names them, with the
/// `model.safetensors.index.json` that maps each tensor to its shard.
pub fn sharded_model(source: &Path, shards: usize) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::read(source).unwrap();
    let layout = tensorgate_codec::parse_file(&file).unwrap();
    let data = &file[layout.data_start as usize..];
    let per_shard = layout.tensors.len().div_ceil(shards);
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    for (index, tensors) in layout.tensors.chunks(per_shard).enumerate() {
        let name = format!("model-{:05}-of-{shards:05}.safetensors", index + 1);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut body = Vec::new();
        for tensor in tensors {
            let start = body.len();
            body.extend_from_slice(&data[tensor.start as usize..tensor.end as usize]);
            header.insert(
                tensor.name.clone(),
                serde_json::json!({"dtype": tensor.dtype.name(), "shape": tensor.shape, "data_offsets": [start, body.len()]}),
            );
            weight_map.insert(tensor.name.clone(), serde_json::Value::String(name.clone()));
        }
        let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&body);
        files.push((name, bytes));
    }
    let index = serde_json::json!({"metadata": {"total_size": data.len()}, "weight_map": weight_map});
    files.push(("model.safetensors.index.json".to_owned(), serde_json::to_vec_pretty(&index).unwrap()));
    files
}

/// `source` with the lowest bit of every 97th byte of its data section flipped by `seed`: a
/// model of the same layout whose every tensor is new to the store.
pub fn perturbed_model(source: &Path, seed: u8) -> Vec<u8> {
    let mut file = std::fs::read(source).unwrap();
    let data_start = tensorgate_codec::parse_file(&file).unwrap().data_start as usize;
    for (at, byte) in file[data_start..].iter_mut().enumerate() {
        if at % 97 == usize::from(seed) % 97 {
            *byte ^= 1;
        }
    }
    file
}

/// Drops a store once nothing else holds it, so that its index is closed (sled releases its
/// lock) before the next open: tasks it spawned let go of it a moment after they end.
fn close_store(store: std::sync::Arc<tensorgate::engine::Store>) {
    let started = Instant::now();
    while std::sync::Arc::strong_count(&store) > 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "something still holds the index");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(store);
}

/// Pseudo-random bytes (not a model) of a given length.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}
