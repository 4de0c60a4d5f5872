//! Every upstream call goes through this guard. It retries the calls that are safe to repeat
//! (starting a write, reading a small object, deleting, listing) up to [`ATTEMPTS`] times; it
//! marks every error it passes on as the upstream's ([`UpstreamFailure`], which clients get as
//! a retryable 503); and it is a circuit breaker: after [`TRIP_AFTER`] failures in a row the
//! upstream is taken to be down, and calls fail at once for [`OPEN_FOR`]; then one call goes
//! through as a probe, and its outcome closes the circuit or opens it again. A down upstream
//! so costs a client seconds, not minutes. Each upstream prefix (a tenant's own upstream) has
//! its own circuit.
//!
//! Written here rather than taken from a crate: the tower and failsafe breakers want to own
//! the call as a service; this one is twenty lines over the `Upstream` trait.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobWriter, Condition, Listed, Missing, Tagged, Upstream};

/// Consecutive failures that open the circuit: a run that a degraded upstream failing a third
/// of its calls makes about once in 7,000 calls.
pub const TRIP_AFTER: u32 = 8;
/// How long an open circuit refuses calls before it lets a probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(1);
/// Attempts of a call that is safe to repeat.
pub const ATTEMPTS: u32 = 3;

/// Marks an error as the upstream's: the store behind the gateway failed or is unreachable.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("the upstream failed")]
    Failed,
    #[error("the upstream is taken to be down (circuit open)")]
    CircuitOpen,
}

/// What a call's success says of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// The upstream answered it.
    Answer,
    /// It may have been served locally (starting a write, or a write buffered before it is
    /// sent): it does not show that the upstream is up, nor can it be the probe, but it is
    /// refused while the circuit is open, and its failure counts.
    Local,
}

/// The breaker's state, shared by every call.
#[derive(Debug, Default)]
pub struct Circuit {
    state: Mutex<CircuitState>,
}

#[derive(Debug, Default)]
struct CircuitState {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    /// When the probe in progress started. A probe whose call was dropped never reports, so
    /// after [`OPEN_FOR`] another call may probe.
    probe_started: Option<Instant>,
}

impl Circuit {
    /// Whether a call may go to the upstream now; true when it goes as the probe.
    fn admit(&self) -> Result<bool, UpstreamFailure> {
        let mut state = self.lock();
        let now = Instant::now();
        let probing = state.probe_started.is_some_and(|started| now < started + OPEN_FOR);
        match state.open_until {
            Some(until) if now < until || probing => Err(UpstreamFailure::CircuitOpen),
            Some(_) => {
                state.probe_started = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records a call's outcome: `answered` when the upstream did its part (a read of a
    /// missing object included).
    fn record(&self, answered: bool, probe: bool) {
        let mut state = self.lock();
        if probe {
            state.probe_started = None;
        }
        if answered {
            state.failures_in_a_row = 0;
            state.open_until = None;
            return;
        }
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        if state.failures_in_a_row >= TRIP_AFTER {
            if state.open_until.is_none() {
                tracing::error!(failures = state.failures_in_a_row, "upstream taken to be down; calls fail at once until a probe succeeds");
            }
            state.open_until = Some(Instant::now() + OPEN_FOR);
        }
    }

    /// True while calls are refused.
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some_and(|until| Instant::now() < until)
    }

    /// Runs one upstream call under the breaker, marking its error as the upstream's.
    async fn call<T>(&self, call: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        self.call_as(Evidence::Answer, call).await
    }

    /// [`Circuit::call`] for a call whose success may not have reached the upstream.
    async fn call_as<T>(&self, evidence: Evidence, call: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        let probe = match evidence {
            Evidence::Answer => self.admit()?,
            Evidence::Local if self.is_open() => return Err(anyhow::Error::new(UpstreamFailure::CircuitOpen)),
            Evidence::Local => false,
        };
        let outcome = call.await;
        match &outcome {
            Ok(_) if evidence == Evidence::Local => {}
            Ok(_) => self.record(true, probe),
            Err(error) => self.record(error.is::<Missing>(), probe),
        }
        outcome.map_err(|error| error.context(UpstreamFailure::Failed))
    }

    /// [`Circuit::call`] for a call that is safe to repeat: up to [`ATTEMPTS`] times, after
    /// 50 then 100 ms, unless the circuit opens meanwhile.
    async fn call_repeatable<T, F, C>(&self, evidence: Evidence, mut call: C) -> anyhow::Result<T>
    where
        C: FnMut() -> F,
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match self.call_as(evidence, call()).await {
                Ok(value) => return Ok(value),
                Err(error) if attempt == ATTEMPTS || self.is_open() => return Err(error),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An upstream behind the breaker: one circuit per upstream prefix (a tenant with its own
/// upstream has its own), so that one tenant's upstream going down fails only its calls.
pub struct GuardedUpstream {
    inner: Arc<dyn Upstream>,
    /// Longest prefix first; the empty prefix, which every key matches, is among them.
    circuits: Vec<(String, Arc<Circuit>)>,
}

impl GuardedUpstream {
    pub fn new(inner: Arc<dyn Upstream>, prefixes: &[String]) -> GuardedUpstream {
        let mut circuits: Vec<(String, Arc<Circuit>)> = prefixes.iter().map(|prefix| (prefix.clone(), Arc::default())).collect();
        if !prefixes.iter().any(String::is_empty) {
            circuits.push((String::new(), Arc::default()));
        }
        circuits.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        GuardedUpstream { inner, circuits }
    }

    /// The circuit of the upstream that holds `key`.
    fn circuit(&self, key: &str) -> &Arc<Circuit> {
        let found = self.circuits.iter().find(|(prefix, _)| key.starts_with(prefix.as_str()));
        &found.unwrap_or(&self.circuits[self.circuits.len() - 1]).1
    }
}

#[async_trait]
impl Upstream for GuardedUpstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        let circuit = self.circuit(key);
        let inner = circuit.call_repeatable(Evidence::Local, || self.inner.writer(key)).await?;
        Ok(Box::new(GuardedWriter { inner, circuit: circuit.clone() }))
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.circuit(key).call(self.inner.read(key, range)).await
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        self.circuit(key).call_repeatable(Evidence::Answer, || self.inner.read_tagged(key)).await
    }

    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>> {
        self.circuit(key).call(self.inner.put_if(key, bytes, condition)).await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.circuit(key).call_repeatable(Evidence::Answer, || self.inner.delete(key)).await
    }

    /// Not repeated: a first attempt that deleted but lost its answer would make a second
    /// report a change that was its own.
    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool> {
        self.circuit(key).call(self.inner.delete_if(key, tag)).await
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        self.circuit(prefix).call_repeatable(Evidence::Answer, || self.inner.list(prefix)).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> anyhow::Result<Vec<Listed>> {
        self.circuit(prefix).call_repeatable(Evidence::Answer, || self.inner.list_after(prefix, after)).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A writer behind the breaker.
struct GuardedWriter {
    inner: Box<dyn BlobWriter>,
    circuit: Arc<Circuit>,
}

#[async_trait]
impl BlobWriter for GuardedWriter {
    async fn write(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        self.circuit.call_as(Evidence::Local, self.inner.write(bytes)).await
    }

    async fn finish(self: Box<Self>) -> anyhow::Result<u64> {
        let GuardedWriter { inner, circuit } = *self;
        circuit.call(inner.finish()).await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_open_the_circuit_and_a_probe_closes_it() {
        let circuit = Circuit::default();
        for _ in 0..TRIP_AFTER - 1 {
            circuit.record(false, false);
        }
        circuit.record(true, false);
        circuit.record(false, false);
        assert!(circuit.admit().is_ok(), "a success in between resets the count");
        for _ in 0..TRIP_AFTER {
            circuit.record(false, false);
        }
        assert!(matches!(circuit.admit(), Err(UpstreamFailure::CircuitOpen)));
        circuit.lock().open_until = Some(Instant::now());
        assert!(matches!(circuit.admit(), Ok(true)), "past the pause one probe goes through");
        assert!(circuit.admit().is_err(), "and only one");
        circuit.record(false, false);
        assert!(circuit.lock().probe_started.is_some(), "another call ending does not free the probe's place");
        circuit.record(true, true);
        assert!(matches!(circuit.admit(), Ok(false)) && !circuit.is_open());
    }

    #[test]
    fn a_probe_that_never_reports_does_not_keep_the_circuit_open() {
        let circuit = Circuit::default();
        for _ in 0..TRIP_AFTER {
            circuit.record(false, false);
        }
        let long_ago = Instant::now() - OPEN_FOR * 3;
        circuit.lock().open_until = Some(long_ago);
        assert!(circuit.admit().is_ok(), "a probe");
        circuit.lock().probe_started = Some(long_ago);
        assert!(circuit.admit().is_ok(), "its call was dropped: after a pause, another call probes");
    }

    struct Nowhere;

    #[async_trait]
    impl Upstream for Nowhere {
        async fn writer(&self, _: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
            anyhow::bail!("nowhere")
        }
        async fn read(&self, _: &str, _: Range<u64>) -> anyhow::Result<Bytes> {
            anyhow::bail!("nowhere")
        }
        async fn read_tagged(&self, _: &str) -> anyhow::Result<Option<Tagged>> {
            Ok(None)
        }
        async fn put_if(&self, _: &str, _: Bytes, _: Condition) -> anyhow::Result<Option<String>> {
            Ok(Some(String::new()))
        }
        async fn delete(&self, _: &str) -> anyhow::Result<()> {
            Ok(())
        }
        async fn delete_if(&self, _: &str, _: &str) -> anyhow::Result<bool> {
            Ok(true)
        }
        async fn list(&self, _: &str) -> anyhow::Result<Vec<Listed>> {
            Ok(Vec::new())
        }
        fn describe(&self) -> String {
            "nowhere".to_owned()
        }
    }

    #[test]
    fn each_upstream_prefix_has_its_own_circuit() {
        let guarded = GuardedUpstream::new(Arc::new(Nowhere), &[String::new(), "tenants/t/".to_owned()]);
        assert!(Arc::ptr_eq(guarded.circuit("tenants/t/packs/p"), guarded.circuit("tenants/t/blobs/b")));
        assert!(!Arc::ptr_eq(guarded.circuit("tenants/t/packs/p"), guarded.circuit("packs/p")));
        assert!(Arc::ptr_eq(guarded.circuit("tenants/u/packs/p"), guarded.circuit("packs/p")));
    }
}
