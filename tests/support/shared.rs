//! Several gateways over one moto upstream: starting one (optionally over a wrapped upstream),
//! killing one abruptly, and what a client sees of an object through each.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tensorgate::config::Config;
use tensorgate::upstream::Upstream;

use super::{Moto, TestGateway, UpstreamKind};

/// What a client sees of an object: bytes, ETag, content type and user metadata.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub bytes: Vec<u8>,
    pub etag: String,
    pub content_type: String,
    pub metadata: serde_json::Value,
}

/// The object at `bucket/key` as aws cli reads it through `gateway`.
pub fn seen(gateway: &TestGateway, bucket: &str, key: &str, scratch: &Path) -> Seen {
    let head = gateway.aws(&["s3api", "head-object", "--bucket", bucket, "--key", key]);
    let head: serde_json::Value = serde_json::from_slice(&head.stdout).unwrap();
    let file = scratch.join("download");
    gateway.aws(&["s3", "cp", &format!("s3://{bucket}/{key}"), file.to_str().unwrap()]);
    Seen {
        bytes: std::fs::read(&file).unwrap(),
        etag: head["ETag"].as_str().unwrap_or_default().to_owned(),
        content_type: head["ContentType"].as_str().unwrap_or_default().to_owned(),
        metadata: head["Metadata"].clone(),
    }
}

/// The MD5 of the bytes of `bucket/key` read through `gateway`, or `None` if HEAD finds no
/// object (compare with `Some(md5_hex(expected))`).
pub fn md5_through(gateway: &TestGateway, bucket: &str, key: &str, scratch: &Path) -> Option<String> {
    if !gateway.aws_unchecked(&["s3api", "head-object", "--bucket", bucket, "--key", key]).status.success() {
        return None;
    }
    Some(super::md5_hex(&seen(gateway, bucket, key, scratch).bytes))
}

/// `aws s3 cp` of `bytes` to `target` through `gateway`, asserting success.
pub fn put(gateway: &TestGateway, bytes: &[u8], target: &str, extra: &[&str], scratch: &Path) {
    let file = scratch.join("upload");
    std::fs::write(&file, bytes).unwrap();
    let mut args = vec!["s3", "cp", file.to_str().unwrap(), target];
    args.extend_from_slice(extra);
    gateway.aws(&args);
}

/// A gateway over `moto` with its index in `data_dir`, sharing the upstream when `shared`.
/// The tests run each sync themselves and count what it did: the periodic one, which could run
/// in between on a slow machine, is held off.
pub fn shared_upstream_gateway(moto: &Moto, data_dir: &Path, shared: bool) -> TestGateway {
    shared_gateway_over(moto, data_dir, shared, |_| {}, |upstream| upstream)
}

/// [`shared_upstream_gateway`] with its configuration changed by `adjust`, over the upstream
/// as `wrap` returns it.
pub fn shared_gateway_over(
    moto: &Moto,
    data_dir: &Path,
    shared: bool,
    adjust: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Arc<dyn Upstream>) -> Arc<dyn Upstream>,
) -> TestGateway {
    let upstream = moto.upstream_config();
    let data_dir = data_dir.to_owned();
    let configure = move |config: &mut Config| {
        config.upstream = Some(upstream);
        config.data_dir = data_dir;
        config.shared_upstream = shared;
        config.shared_sync_secs = 3600;
        adjust(config);
    };
    TestGateway::start_wrapped(UpstreamKind::LocalDirectory, configure, wrap)
}

/// One sync with the shared upstream as a gateway's first one does it (every manifest listed).
pub fn sync(gateway: &TestGateway) -> tensorgate::maintenance::sync::SyncReport {
    sync_from(gateway, &mut Default::default())
}

/// One sync with the shared upstream from where `state` says the last one stood.
pub fn sync_from(gateway: &TestGateway, state: &mut tensorgate::maintenance::sync::SyncState) -> tensorgate::maintenance::sync::SyncReport {
    gateway.runtime.block_on(tensorgate::maintenance::sync::sync(gateway.store(), state)).expect("sync succeeds")
}

/// Ends a gateway as a crash would: its requests in progress (and what they wait on upstream)
/// are dropped where they stand, nothing is drained or flushed beyond what it had made durable.
pub fn kill(mut gateway: TestGateway) {
    let running = gateway.gateway.take().unwrap();
    let runtime = std::mem::replace(&mut gateway.runtime, tokio::runtime::Runtime::new().unwrap());
    running.stop();
    runtime.shutdown_timeout(Duration::from_secs(5));
}
