//! Starting a gateway: open the index and upstream, wire the S3 service with its keys and
//! domains, spawn the background tasks and serve HTTP on the listener.

pub mod cors;
pub mod stalled_writes;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use s3s::service::{S3Service, S3ServiceBuilder};
use tensorgate_index::Index;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::engine::admission;
use crate::server::stalled_writes::StalledWrites;
use crate::config::{Config, TlsConfig};
use crate::engine::Store;
use crate::engine::catalog;
use crate::ids::{new_id, now_ms};
use crate::maintenance::condemned;
use crate::maintenance::{gc, packer, sync, usage};
use crate::s3::Gateway;
use crate::s3::auth::{Authenticator, KeyRing, Keys};
use crate::s3::domains::Domains;
use crate::s3::{auth, errors, object_attributes};
use crate::upstream::{LocalUpstream, RoutingUpstream, S3Upstream, Upstream};

/// A gateway that is serving.
pub struct RunningGateway {
    pub address: SocketAddr,
    /// Where `/metrics`, `/health` and `/ready` are served, when enabled.
    pub metrics_address: Option<SocketAddr>,
    pub store: Arc<Store>,
    keys: Arc<Keys>,
    /// Serves connections until told to drain.
    accept: tokio::task::JoinHandle<()>,
    drain: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// Takes the access keys and tenants of a reloaded configuration: added keys work and
    /// removed keys are refused from the next request on. Other settings need a restart.
    pub fn reload_keys(&self, config: &Config) -> anyhow::Result<()> {
        config.validate()?;
        self.keys.replace(KeyRing::new(&config.all_tenants()));
        Ok(())
    }

    /// Stops serving and the background tasks at once, as a crash would.
    pub fn stop(self) {
        self.accept.abort();
        for task in self.tasks {
            task.abort();
        }
    }

    /// Stops cleanly: takes no new connection, lets the requests in progress finish (for
    /// `drain_secs` at most), stops the background tasks and flushes the index. True when
    /// every request finished in time.
    pub async fn shut_down(self) -> anyhow::Result<bool> {
        self.store.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.drain.send(true);
        let drained = matches!(tokio::time::timeout(Duration::from_secs(self.store.config.drain_secs), self.accept).await, Ok(Ok(())));
        for task in self.tasks {
            task.abort();
        }
        self.store.index.flush()?;
        Ok(drained)
    }
}

/// The upstream that `config` describes.
pub fn open_upstream(config: &Config) -> anyhow::Result<Arc<dyn Upstream>> {
    let default: Arc<dyn Upstream> = match &config.upstream {
        Some(s3) => Arc::new(S3Upstream::new(s3)?),
        None => Arc::new(LocalUpstream::new(&config.data_dir.join("upstream"))?),
    };
    let mut routes: Vec<(String, Arc<dyn Upstream>)> = Vec::new();
    for tenant in &config.tenants {
        if let Some(own) = &tenant.upstream {
            let upstream = S3Upstream::new(own).with_context(|| format!("the upstream of tenant {:?}", tenant.name))?;
            routes.push((config.upstream_prefix(&tenant.name), Arc::new(upstream)));
        }
    }
    Ok(if routes.is_empty() { default } else { Arc::new(RoutingUpstream::new(default, routes)) })
}

/// The S3 service, recording each request's method, status and latency, giving each its
/// request id, answering CORS preflights and adding CORS headers (see [`cors`]), and answering
/// `SlowDown` (503) beyond `max_concurrent_requests` requests in
/// progress, or beyond its tenant's share of them (see [`admission`]), which clients retry with
/// backoff. A request holds its slot until its response starts (a PUT's whole body).
fn measured_service(
    service: S3Service,
    store: Arc<Store>,
    keys: Arc<Keys>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = s3s::HttpResponse,
    Error = s3s::HttpError,
    Future = impl std::future::Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send,
> + Clone
       + Send
       + 'static {
    let cors = Arc::new(cors::Cors::new(store.clone(), keys.clone()));
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let service = service.clone();
        let store = store.clone();
        let keys = keys.clone();
        let cors = cors.clone();
        async move {
            let started = std::time::Instant::now();
            let method = request.method().to_string();
            let request_id = new_id()[..16].to_ascii_uppercase();
            let attributes_request = object_attributes::is_attributes_request(&request);
            let tenant = admission::signing_key(&request).and_then(|key| keys.current().tenant(&key).map(str::to_owned)).unwrap_or_default();
            let served = async {
                match store.admission.slot(&tenant) {
                    Some(_slot) if request.method() == hyper::Method::OPTIONS => match cors.preflight(&request, &tenant).await {
                        Ok(answer) => Ok(answer),
                        Err(error) => errors::with_request_id(error).to_http_response().map_err(|error| s3s::HttpError::new(Box::new(error))),
                    },
                    Some(_slot) => {
                        let origin = cors.origin_of(&request);
                        let idle = Duration::from_secs(store.config.body_idle_timeout_secs);
                        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
                        // A presigned URL valid for too long, which s3s takes, is refused here
                        // (a preflight of it, above, is not: S3 authenticates no preflight).
                        let mut answer = match auth::overlong_presigned_expiry(request.uri()) {
                            Some(refusal) => errors::with_request_id(refusal).to_http_response().map_err(|error| s3s::HttpError::new(Box::new(error))),
                            None => service.call(request.map(|body| s3s::Body::http_body(admission::IdleBody::new(body, idle, stalled.clone())))).await,
                        };
                        if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                            store.metrics.body_idle_timeouts.inc();
                            answer = errors::to_s3(crate::engine::ingest::BodyError::Idle(idle.as_secs()).into()).to_http_response().map_err(|error| s3s::HttpError::new(Box::new(error)));
                        }
                        if let (Some(origin), Ok(response)) = (origin, &mut answer) {
                            cors.decorate(origin, &tenant, response).await;
                        }
                        answer
                    }
                    None => errors::with_request_id(s3s::S3Error::with_message(s3s::S3ErrorCode::SlowDown, "Please reduce your request rate."))
                        .to_http_response()
                        .map_err(|error| s3s::HttpError::new(Box::new(error))),
                }
            };
            let mut response = errors::REQUEST_ID.scope(request_id.clone(), served).await;
            if let Ok(response) = &mut response {
                // s3s 0.14.1 answers every HEAD with 200; S3 answers one of a range or a part 206.
                if method == "HEAD" && response.status() == hyper::StatusCode::OK && response.headers().contains_key(hyper::header::CONTENT_RANGE) {
                    *response.status_mut() = hyper::StatusCode::PARTIAL_CONTENT;
                }
                store.metrics.observe_request(&method, response.status().as_u16(), started);
                if let Ok(value) = hyper::header::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert("x-amz-request-id", value);
                }
                // S3's extended request id, which clients log beside the request id.
                let host_id = new_id();
                if let Ok(value) = hyper::header::HeaderValue::from_str(&host_id) {
                    response.headers_mut().insert("x-amz-id-2", value);
                }
                errors::identify_error_body(response, &request_id, &host_id);
                if attributes_request && response.status() == hyper::StatusCode::OK {
                    object_attributes::unquote_etag(response);
                }
            }
            response
        }
    })
}

/// The TLS acceptor for the configured certificate and key.
fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certificates = CertificateDer::pem_file_iter(&tls.certificate)
        .with_context(|| format!("reading {}", tls.certificate.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", tls.certificate.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.private_key).with_context(|| format!("reading {}", tls.private_key.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .context("the TLS certificate and key do not match")?;
    // HTTP/1.1 only, as S3 speaks: hyper's header timeout covers HTTP/1 alone.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Opens the store that `config` describes, over `upstream`.
pub fn open_store_with(config: &Config, upstream: Arc<dyn Upstream>) -> anyhow::Result<Arc<Store>> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let index = Index::open(&config.data_dir.join("index")).context("opening the index")?;
    Ok(Arc::new(Store::new(index, upstream, config.clone())?))
}

/// Opens the store that `config` describes.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<Store>> {
    open_store_with(config, open_upstream(config)?)
}

/// Binds the listener and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<RunningGateway> {
    let upstream = open_upstream(&config)?;
    start_with(config, upstream).await
}

/// Starts serving over a given upstream (tests wrap the configured one to inject faults).
pub async fn start_with(config: Config, upstream: Arc<dyn Upstream>) -> anyhow::Result<RunningGateway> {
    config.validate()?;
    let store = open_store_with(&config, upstream)?;
    if config.shared_upstream {
        condemned::check_not_expired(&store, now_ms()).await?;
    }
    match catalog::recover(&store).await {
        Ok(0) => {}
        Ok(recovered) => tracing::info!(recovered, "finished manifest changes a crash interrupted"),
        Err(error) => tracing::warn!(error = format!("{error:#}"), "manifest recovery failed; garbage collection retries it"),
    }
    let keys = Arc::new(Keys::new(KeyRing::new(&config.all_tenants())));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    let service = {
        let mut builder = S3ServiceBuilder::new(Gateway::new(store.clone(), keys.clone()));
        builder.set_auth(Authenticator(keys.clone()));
        builder.set_host(Domains::new(&config.domains));
        builder.build()
    };
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let mut tasks = Vec::new();
    let mut metrics_address = None;
    if let Some(listen) = config.metrics_listen {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("listening on {listen} for metrics"))?;
        metrics_address = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(status::serve(listener, store.clone())));
        tasks.push(tokio::spawn(usage::run_usage(store.clone())));
    }
    let measured = measured_service(service, store.clone(), keys.clone());
    tracing::info!(%address, tls = tls.is_some(), upstream = store.upstream.describe(), "serving S3");
    let (drain, mut draining) = tokio::sync::watch::channel(false);
    let accept_store = store.clone();
    let accept = tokio::spawn(async move {
        let connections = GracefulShutdown::new();
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                },
                _ = draining.changed() => break,
            };
            tokio::spawn(serve_connection(socket, tls.clone(), measured.clone(), connections.watcher(), accept_store.clone()));
        }
        drop(listener);
        tracing::info!(connections = connections.count(), "draining the requests in progress");
        connections.shutdown().await;
    });
    let packer = tokio::spawn(packer::run_packer(store.clone()));
    let gc = tokio::spawn(gc::run_gc(store.clone()));
    tasks.extend([packer, gc]);
    if config.shared_upstream {
        tasks.push(tokio::spawn(sync::run_sync(store.clone())));
    }
    Ok(RunningGateway { address, metrics_address, store, keys, accept, drain, tasks })
}

/// Serves one connection over HTTP/1.1: its TLS handshake within the header timeout, then each
/// request's headers within it too (hyper's timer), its requests until it closes or the
/// gateway drains.
async fn serve_connection<S>(socket: tokio::net::TcpStream, tls: Option<TlsAcceptor>, service: S, watcher: Watcher, store: Arc<Store>)
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = s3s::HttpResponse, Error = s3s::HttpError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    // hyper adds the header timeout to the clock's now, which overflows past the longest.
    let header_timeout = Duration::from_secs(store.config.header_read_timeout_secs).min(crate::ids::LONGEST_TIMEOUT);
    // HTTP/1.1 only (S3 clients speak it; hyper times HTTP/1 headers from the first byte on).
    let mut http = ConnectionBuilder::new(TokioExecutor::new()).http1_only();
    // A client that closes its sending side after the body still gets its answer.
    http.http1().half_close(true).timer(TokioTimer::new()).header_read_timeout(header_timeout);
    // A client that takes no byte of an answer for this long is cut off (see `stalled_writes`).
    let response_timeout = Duration::from_secs(store.config.response_idle_timeout_secs);
    let closed = store.metrics.response_timeouts.clone();
    let served = match tls {
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(socket)).await {
            Ok(Ok(stream)) => watcher.watch(http.serve_connection(TokioIo::new(StalledWrites::new(stream, response_timeout, closed)), service)).await,
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(Box::new(HeaderTimeout) as Box<dyn std::error::Error + Send + Sync>),
        },
        None => watcher.watch(http.serve_connection(TokioIo::new(StalledWrites::new(socket, response_timeout, closed)), service)).await,
    };
    if let Err(error) = served {
        let timed_out = error.is::<HeaderTimeout>() || error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
        if timed_out {
            store.metrics.header_timeouts.inc();
        }
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// A connection sent no request in time.
#[derive(Debug, thiserror::Error)]
#[error("no request headers within the header timeout")]
struct HeaderTimeout;
