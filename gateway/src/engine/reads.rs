//! Upstream reads with retries: a failed or short read is tried again after a growing,
//! jittered pause, unless the upstream's circuit is open.

use bytes::Bytes;

use crate::engine::Store;
use crate::upstream::UpstreamFailure;

/// Attempts of one upstream read before its error is returned.
pub const READ_ATTEMPTS: u32 = 4;

/// Pause before retry number `attempt`: 50 ms doubling each time, with up to half again of
/// jitter so that many readers do not retry in step.
fn backoff(attempt: u32) -> std::time::Duration {
    let base = 50u64 << attempt.min(6);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_millis(base + u64::from(nanos) % (base / 2 + 1))
}

impl Store {
    /// Reads a range of an upstream object, counting the read. A failed or short read is
    /// retried after a growing, jittered pause, up to [`READ_ATTEMPTS`] attempts in all.
    pub async fn read_upstream(&self, key: &str, range: std::ops::Range<u64>) -> anyhow::Result<Bytes> {
        self.read_upstream_tries(key, range, READ_ATTEMPTS).await
    }

    /// [`Store::read_upstream`] with `attempts` attempts at most (1 for a read the caller can
    /// do without, so that a down upstream costs it little).
    pub async fn read_upstream_tries(&self, key: &str, range: std::ops::Range<u64>, attempts: u32) -> anyhow::Result<Bytes> {
        self.metrics.upstream_reads.inc();
        let wanted = range.end.saturating_sub(range.start);
        self.metrics.upstream_read_bytes.inc_by(wanted);
        let mut attempt = 1;
        loop {
            let error = match self.upstream.read(key, range.clone()).await {
                Ok(bytes) if bytes.len() as u64 == wanted => return Ok(bytes),
                Ok(bytes) => anyhow::anyhow!("upstream gave {} bytes of {key} where {wanted} were asked", bytes.len()),
                Err(error) => error,
            };
            let circuit_open = matches!(error.downcast_ref::<UpstreamFailure>(), Some(UpstreamFailure::CircuitOpen));
            if attempt >= attempts || circuit_open {
                self.metrics.upstream_errors.inc();
                return Err(error);
            }
            self.metrics.upstream_retries.inc();
            tracing::warn!(%key, attempt, error = format!("{error:#}"), "upstream read failed; retrying");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }
}
