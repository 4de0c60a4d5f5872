//! Metrics and health on their own port (`metrics_listen`): `/metrics` (Prometheus text),
//! `/health` (the process answers) and `/ready` (the index answers and the gateway is not
//! draining).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use tokio::net::TcpListener;

use crate::engine::Store;

/// Serves `/metrics`, `/health` and `/ready` until the task is aborted.
pub async fn serve(listener: TcpListener, store: Arc<Store>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let store = store.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(answer(&store, request.uri().path())) }
            });
            let _ = ConnectionBuilder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

fn answer(store: &Store, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => match store.metrics.render() {
            Ok(text) => (StatusCode::OK, text),
            Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}")),
        },
        "/health" => (StatusCode::OK, "ok\n".to_owned()),
        "/ready" if store.draining.load(std::sync::atomic::Ordering::Relaxed) => (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned()),
        "/ready" if store.check_in_step().is_err() => (StatusCode::SERVICE_UNAVAILABLE, "out of step with the shared upstream\n".to_owned()),
        "/ready" => match store.index.answers() {
            Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
            Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("index unavailable: {error}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
