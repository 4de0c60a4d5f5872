//! Upstreams that misbehave on purpose: one where a share of calls error, return short reads,
//! or stall (or every call fails: down), so that the gateway's answers under upstream faults
//! can be checked, deterministic per seed; and one that holds writes back on demand.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tensorgate::upstream::{BlobWriter, Condition, Listed, Tagged, Upstream};

/// What a call does.
enum Fault {
    None,
    Error,
    Short,
    Stall,
}

pub struct FaultyUpstream {
    inner: Arc<dyn Upstream>,
    /// Faults per thousand calls.
    per_mille: u64,
    state: AtomicU64,
    pub enabled: Arc<AtomicBool>,
    /// Every call fails: the upstream is down.
    pub down: Arc<AtomicBool>,
    pub injected: Arc<AtomicU64>,
}

impl FaultyUpstream {
    pub fn new(inner: Arc<dyn Upstream>, per_mille: u64) -> FaultyUpstream {
        FaultyUpstream {
            inner,
            per_mille,
            state: AtomicU64::new(0x0dd5eed),
            enabled: Arc::new(AtomicBool::new(true)),
            down: Arc::new(AtomicBool::new(false)),
            injected: Arc::new(AtomicU64::new(0)),
        }
    }

    fn check_up(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.down.load(Ordering::Relaxed), "injected fault: upstream down");
        Ok(())
    }

    fn roll(&self) -> Fault {
        let step = self.state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        let draw = (step.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 40) % 1000;
        if !self.enabled.load(Ordering::Relaxed) || draw >= self.per_mille {
            return Fault::None;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        match draw % 3 {
            0 => Fault::Error,
            1 => Fault::Short,
            _ => Fault::Stall,
        }
    }
}

#[async_trait]
impl Upstream for FaultyUpstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        self.check_up()?;
        if let Fault::Error = self.roll() {
            anyhow::bail!("injected fault: upstream refused to start {key}");
        }
        let inner = self.inner.writer(key).await?;
        Ok(Box::new(FaultyWriter { inner, fail: matches!(self.roll(), Fault::Error | Fault::Short), down: self.down.clone() }))
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.check_up()?;
        match self.roll() {
            Fault::Error => anyhow::bail!("injected fault: connection reset reading {key}"),
            Fault::Short => {
                let bytes = self.inner.read(key, range).await?;
                Ok(bytes.slice(..bytes.len() / 2))
            }
            Fault::Stall => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.inner.read(key, range).await
            }
            Fault::None => self.inner.read(key, range).await,
        }
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        self.check_up()?;
        match self.roll() {
            Fault::Error | Fault::Short => anyhow::bail!("injected fault: connection reset reading {key}"),
            Fault::Stall => tokio::time::sleep(Duration::from_millis(200)).await,
            Fault::None => {}
        }
        self.inner.read_tagged(key).await
    }

    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>> {
        self.check_up()?;
        if let Fault::Error = self.roll() {
            anyhow::bail!("injected fault: conditional write of {key} failed");
        }
        self.inner.put_if(key, bytes, condition).await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.check_up()?;
        if let Fault::Error = self.roll() {
            anyhow::bail!("injected fault: delete of {key} timed out");
        }
        self.inner.delete(key).await
    }

    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool> {
        self.check_up()?;
        if let Fault::Error = self.roll() {
            anyhow::bail!("injected fault: conditional delete of {key} timed out");
        }
        self.inner.delete_if(key, tag).await
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        self.check_up()?;
        if let Fault::Error = self.roll() {
            anyhow::bail!("injected fault: listing {prefix} failed");
        }
        self.inner.list(prefix).await
    }

    fn describe(&self) -> String {
        format!("{} with {} faults per thousand calls", self.inner.describe(), self.per_mille)
    }
}

/// A writer whose upload fails at the end when it drew a fault.
struct FaultyWriter {
    inner: Box<dyn BlobWriter>,
    fail: bool,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl BlobWriter for FaultyWriter {
    async fn write(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        self.inner.write(bytes).await
    }

    async fn finish(self: Box<Self>) -> anyhow::Result<u64> {
        if self.fail || self.down.load(Ordering::Relaxed) {
            self.inner.abort().await;
            anyhow::bail!("injected fault: upstream upload failed");
        }
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}

/// An upstream that holds back new writes to keys under a prefix while `held` is set (they
/// wait, not fail), so that a test can act while a write is half done, fails those writes
/// while `failing_writes` is set, and fails deletes of those keys while `failing_deletes` is
/// set. `waiting` counts the writes held back now.
pub struct GatedUpstream {
    inner: Arc<dyn Upstream>,
    prefix: String,
    pub held: Arc<AtomicBool>,
    pub failing_writes: Arc<AtomicBool>,
    pub failing_deletes: Arc<AtomicBool>,
    pub waiting: Arc<AtomicU64>,
}

impl GatedUpstream {
    pub fn new(inner: Arc<dyn Upstream>, prefix: &str) -> GatedUpstream {
        let prefix = prefix.to_owned();
        GatedUpstream { inner, prefix, held: Arc::default(), failing_writes: Arc::default(), failing_deletes: Arc::default(), waiting: Arc::default() }
    }

    fn check_delete(&self, key: &str) -> anyhow::Result<()> {
        let failing = key.contains(&self.prefix) && self.failing_deletes.load(Ordering::SeqCst);
        anyhow::ensure!(!failing, "injected fault: delete of {key} failed");
        Ok(())
    }

    async fn pass(&self, key: &str) -> anyhow::Result<()> {
        if !key.contains(&self.prefix) {
            return Ok(());
        }
        anyhow::ensure!(!self.failing_writes.load(Ordering::SeqCst), "injected fault: write of {key} failed");
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while self.held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl Upstream for GatedUpstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        self.pass(key).await?;
        self.inner.writer(key).await
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.inner.read(key, range).await
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        self.inner.read_tagged(key).await
    }

    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>> {
        self.pass(key).await?;
        self.inner.put_if(key, bytes, condition).await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.check_delete(key)?;
        self.inner.delete(key).await
    }

    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool> {
        self.check_delete(key)?;
        self.inner.delete_if(key, tag).await
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        self.inner.list(prefix).await
    }

    fn describe(&self) -> String {
        format!("{} with writes under {:?} held back on demand", self.inner.describe(), self.prefix)
    }
}
