//! Admission: what a request may hold while it is served, so that no client, and no tenant,
//! can stall the others. Three limits, each with a per-tenant share: request slots (a request
//! beyond them is answered `SlowDown`, which clients retry with backoff), the in-flight byte
//! budget of request bodies and of answers' pieces not yet taken by their clients (a body
//! beyond it waits before its first byte is read, a piece before it is fetched, which slows
//! the client down through TCP), and the encoders of multipart parts (a part beyond them waits
//! before its first byte is read).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// Granularity of the in-flight byte budget.
const BUDGET_UNIT: u64 = 64 << 10;

/// A limit shared by all, of which each tenant may hold only its share. The tenant "" (callers
/// not known yet: unsigned requests, unknown keys) has a smaller one.
struct Shared {
    all: Arc<Semaphore>,
    share: u32,
    unknown_share: u32,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Shared {
    fn new(all: u32, share: u32) -> Shared {
        let all = all.max(1);
        let share = share.clamp(1, all);
        Shared { all: Arc::new(Semaphore::new(all as usize)), share, unknown_share: (all / 8).clamp(1, share), tenants: Mutex::default() }
    }

    fn tenant(&self, tenant: &str) -> Arc<Semaphore> {
        let share = if tenant.is_empty() { self.unknown_share } else { self.share };
        let mut tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tenants.entry(tenant.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(share as usize))).clone()
    }
}

/// Held while a request is served: its tenant's slot and the gateway's.
pub struct Slot {
    _tenant: OwnedSemaphorePermit,
    _gateway: OwnedSemaphorePermit,
}

/// A share of the in-flight byte budget (its tenant's and the gateway's) held by a body or by
/// a piece of an answer, given back when dropped.
pub struct BytesPermit {
    _tenant: OwnedSemaphorePermit,
    _gateway: OwnedSemaphorePermit,
}

/// One of the gateway's part encoders, held while a multipart part is encoded as it arrives.
pub struct EncoderPermit {
    _tenant: OwnedSemaphorePermit,
    _gateway: OwnedSemaphorePermit,
}

/// The gateway's request slots, byte budget and part encoders.
pub struct Admission {
    slots: Shared,
    bytes: Shared,
    encoders: Shared,
}

impl Admission {
    pub fn new(config: &Config) -> Admission {
        let units = |bytes: u64| (bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        let slots = |count: usize| u32::try_from(count).unwrap_or(u32::MAX);
        Admission {
            slots: Shared::new(slots(config.max_concurrent_requests), slots(config.tenant_concurrent_requests())),
            bytes: Shared::new(units(config.max_in_flight_bytes), units(config.tenant_in_flight_bytes())),
            // Any tenant may use them all; its parts queue at its own share first, so that one
            // tenant's backlog waits behind its own parts, not in front of another's.
            encoders: Shared::new(slots(rayon::current_num_threads()), slots(rayon::current_num_threads())),
        }
    }

    /// An encoder for a multipart part of `tenant`, one per core in all: the work is the
    /// cores', and a part being encoded holds a batch, its frames and the chunks of its bases,
    /// more than its share of the byte budget says (clients send ten parts at once).
    pub async fn encoder(&self, tenant: &str) -> anyhow::Result<EncoderPermit> {
        let (tenant, _) = take(self.encoders.tenant(tenant), 1).await?;
        let (gateway, _) = take(self.encoders.all.clone(), 1).await?;
        Ok(EncoderPermit { _tenant: tenant, _gateway: gateway })
    }

    /// A request slot for `tenant` (the tenant of the key the request names, or "" when none
    /// is known: those share an eighth of the slots), or `None`: the request is then answered
    /// `SlowDown`.
    pub fn slot(&self, tenant: &str) -> Option<Slot> {
        let tenant = self.slots.tenant(tenant).try_acquire_owned().ok()?;
        let gateway = self.slots.all.clone().try_acquire_owned().ok()?;
        Some(Slot { _tenant: tenant, _gateway: gateway })
    }

    /// Takes `bytes` of the byte budget, waiting while others hold it: first from its tenant's
    /// share, then from the gateway's; more than a tenant's share is taken as all of it.
    /// - A body takes what it can buffer (see [`crate::engine::ingest::body_buffer_bytes`]), or
    ///   its announced length when smaller, whole before any byte is read, so that bodies
    ///   never wait on each other halfway (no deadlock).
    /// - A piece of an answer takes its bytes before it is fetched and gives them back once
    ///   hyper has handed it to the connection; a client that takes nothing is cut off after
    ///   `response_idle_timeout_secs` (`server::stalled_writes`). One that takes a few bytes
    ///   now and then keeps its share as long as it does.
    ///
    /// The second value tells whether it had to wait.
    pub async fn hold_bytes(&self, tenant: &str, bytes: u64) -> anyhow::Result<(BytesPermit, bool)> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX).min(self.bytes.share);
        let (tenant, tenant_waited) = take(self.bytes.tenant(tenant), units).await?;
        let (gateway, gateway_waited) = take(self.bytes.all.clone(), units).await?;
        Ok((BytesPermit { _tenant: tenant, _gateway: gateway }, tenant_waited || gateway_waited))
    }
}

/// `units` of `semaphore`, and whether they were not there at once.
async fn take(semaphore: Arc<Semaphore>, units: u32) -> anyhow::Result<(OwnedSemaphorePermit, bool)> {
    if let Ok(permit) = semaphore.clone().try_acquire_many_owned(units) {
        return Ok((permit, false));
    }
    Ok((semaphore.acquire_many_owned(units).await?, true))
}

/// A request body that fails once it has sent nothing for `idle` while being read: no body
/// read waits forever, whoever reads it (ingest, or s3s for the XML bodies). The client is
/// answered `RequestTimeout`, as S3 does, whatever the reader made of the error.
pub struct IdleBody {
    inner: hyper::body::Incoming,
    idle: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether the last poll found nothing: the silence being timed began then. Time when
    /// nobody polls (a body waiting for the byte budget) is not the client's silence.
    waiting: bool,
    /// Set when the body is cut off, so that the answer can say so (`RequestTimeout`).
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl IdleBody {
    pub fn new(inner: hyper::body::Incoming, idle: std::time::Duration, stalled: Arc<std::sync::atomic::AtomicBool>) -> IdleBody {
        let idle = idle.min(crate::ids::LONGEST_TIMEOUT);
        IdleBody { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), waiting: false, stalled }
    }
}

/// A request body went silent for longer than the transport allows.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for too long")]
pub struct BodyStalled;

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let next = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.stalled.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The access key a request names (SigV4 or SigV2, header or presigned URL), read without checking the
/// signature (s3s checks it later): it picks the tenant whose share of the slots the request
/// takes. s3s checks a signature before reading the body, so a request naming another tenant's
/// key without its secret is refused at once and holds that share for no time; the requests
/// for which s3s reads (part of) the body first (POST forms, credentials scoped to another
/// service than s3) take the share of unknown callers instead.
pub fn signing_key<B>(request: &hyper::Request<B>) -> Option<String> {
    let is_form = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().starts_with("multipart/form-data"));
    if request.method() == hyper::Method::POST && is_form {
        return None;
    }
    let authorization = request.headers().get(hyper::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    // SigV2 (`AWS key:signature`, or `AWSAccessKeyId=key` in a URL boto3 presigns by default)
    // names the key alone, with no scope.
    if let Some(signed) = authorization.and_then(|value| value.strip_prefix("AWS ")) {
        return signed.split(':').next().map(str::to_owned);
    }
    let query_value = |name: &str| {
        request.uri().query()?.split('&').find_map(|pair| {
            let value = pair.strip_prefix(name)?.strip_prefix('=')?;
            Some(percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
        })
    };
    if authorization.is_none() {
        if let Some(key) = query_value("AWSAccessKeyId") {
            return Some(key);
        }
    }
    let from_header = authorization
        .and_then(|value| value.split("Credential=").nth(1))
        .map(|credential| credential.split([',', ' ']).next().unwrap_or_default().to_owned());
    let credential = from_header.or_else(|| query_value("X-Amz-Credential"))?;
    let mut scope = credential.split('/');
    let key = scope.next()?;
    (scope.nth(2) == Some("s3")).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_its_share_of_the_slots_and_no_more() {
        let config = Config { max_concurrent_requests: 4, max_concurrent_requests_per_tenant: Some(2), ..Config::default() };
        let admission = Admission::new(&config);
        let held: Vec<Slot> = (0..2).map(|_| admission.slot("a").expect("within a's share")).collect();
        assert!(admission.slot("a").is_none(), "a's share is taken");
        let other = admission.slot("b").expect("b has its own share");
        drop(held);
        assert!(admission.slot("a").is_some());
        drop(other);
        let unknown = admission.slot("").expect("an eighth of 4, at least one");
        assert!(admission.slot("").is_none(), "callers not known yet share one slot");
        drop(unknown);
    }

    #[test]
    fn the_named_key_is_read_only_where_s3s_checks_it_before_the_body() {
        let request = |method: &str, uri: &str, headers: &[(&str, &str)]| {
            let mut builder = hyper::Request::builder().method(method).uri(uri);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap()
        };
        let signed = "AWS4-HMAC-SHA256 Credential=AKIDA/20261130/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
        assert_eq!(signing_key(&request("GET", "/b/k", &[("authorization", signed)])).as_deref(), Some("AKIDA"));
        let presigned = "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDB%2F20261130%2Fus-east-1%2Fs3%2Faws4_request";
        assert_eq!(signing_key(&request("GET", presigned, &[])).as_deref(), Some("AKIDB"));
        let sts = signed.replace("/s3/", "/sts/");
        assert_eq!(signing_key(&request("PUT", "/b/k", &[("authorization", sts.as_str())])), None);
        let form = [("authorization", signed), ("content-type", "multipart/form-data; boundary=x")];
        assert_eq!(signing_key(&request("POST", "/b", &form)), None);
        assert_eq!(signing_key(&request("GET", "/b/k", &[])), None);
        let v2 = "AWS AKIDC:c2lnbmF0dXJl";
        assert_eq!(signing_key(&request("GET", "/b/k", &[("authorization", v2)])).as_deref(), Some("AKIDC"));
        let presigned_v2 = "/b/k?AWSAccessKeyId=AKID%2BD&Signature=c2ln&Expires=1796237429";
        assert_eq!(signing_key(&request("GET", presigned_v2, &[])).as_deref(), Some("AKID+D"));
    }
}
