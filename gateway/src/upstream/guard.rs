//! Every upstream call goes through this guard. It retries the calls that are safe to repeat
//! (starting a write, reading a small object, deleting, listing) up to [`ATTEMPTS`] times; it
//! marks every error it passes on as the upstream's ([`UpstreamFailure`], which clients get as
//! a retryable 503); and it is a circuit breaker: after [`TRIP_AFTER`] failures in a row the
//! upstream is taken to be down, and calls fail at once for [`OPEN_FOR`]; then one call goes
//! through as a probe, and its outcome closes the circuit or opens it again. A down upstream
//! so costs a client seconds, not minutes.
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

/// The breaker's state, shared by every call.
#[derive(Debug, Default)]
pub struct Circuit {
    state: Mutex<CircuitState>,
}

#[derive(Debug, Default)]
struct CircuitState {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Circuit {
    /// Whether a call may go to the upstream now.
    fn admit(&self) -> Result<(), UpstreamFailure> {
        let mut state = self.lock();
        match state.open_until {
            Some(until) if Instant::now() < until || state.probing => Err(UpstreamFailure::CircuitOpen),
            Some(_) => {
                state.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a call's outcome: `answered` when the upstream did its part (a read of a
    /// missing object included).
    fn record(&self, answered: bool) {
        let mut state = self.lock();
        state.probing = false;
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
        self.admit()?;
        let outcome = call.await;
        self.record(outcome.as_ref().map_or_else(|error| error.is::<Missing>(), |_| true));
        outcome.map_err(|error| error.context(UpstreamFailure::Failed))
    }

    /// [`Circuit::call`] for a call that is safe to repeat: up to [`ATTEMPTS`] times, after
    /// 50 then 100 ms, unless the circuit opens meanwhile.
    async fn call_repeatable<T, F, C>(&self, mut call: C) -> anyhow::Result<T>
    where
        C: FnMut() -> F,
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match self.call(call()).await {
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

/// An upstream behind the breaker.
pub struct GuardedUpstream {
    inner: Arc<dyn Upstream>,
    circuit: Arc<Circuit>,
}

impl GuardedUpstream {
    pub fn new(inner: Arc<dyn Upstream>, circuit: Arc<Circuit>) -> GuardedUpstream {
        GuardedUpstream { inner, circuit }
    }
}

#[async_trait]
impl Upstream for GuardedUpstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        let inner = self.circuit.call_repeatable(|| self.inner.writer(key)).await?;
        Ok(Box::new(GuardedWriter { inner, circuit: self.circuit.clone() }))
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.circuit.call(self.inner.read(key, range)).await
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        self.circuit.call_repeatable(|| self.inner.read_tagged(key)).await
    }

    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<bool> {
        self.circuit.call(self.inner.put_if(key, bytes, condition)).await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.circuit.call_repeatable(|| self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        self.circuit.call_repeatable(|| self.inner.list(prefix)).await
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
        self.circuit.call(self.inner.write(bytes)).await
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
            circuit.record(false);
        }
        circuit.record(true);
        circuit.record(false);
        assert!(circuit.admit().is_ok(), "a success in between resets the count");
        for _ in 0..TRIP_AFTER {
            circuit.record(false);
        }
        assert!(matches!(circuit.admit(), Err(UpstreamFailure::CircuitOpen)));
        circuit.lock().open_until = Some(Instant::now());
        assert!(circuit.admit().is_ok(), "past the pause one probe goes through");
        assert!(circuit.admit().is_err(), "and only one");
        circuit.record(true);
        assert!(circuit.admit().is_ok() && !circuit.is_open());
    }
}
