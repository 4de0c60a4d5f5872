//! Starting a gateway: open the index and upstream, wire the S3 service with its keys and
//! domains, spawn the background tasks and serve HTTP on the listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use s3s::service::S3ServiceBuilder;
use tensorgate_index::Index;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, KeyRing, Keys};
use crate::background;
use crate::domains::Domains;
use crate::config::Config;
use crate::service::Gateway;
use crate::store::Store;
use crate::upstream::{LocalUpstream, S3Upstream, Upstream};

/// A gateway that is serving.
pub struct RunningGateway {
    pub address: SocketAddr,
    pub store: Arc<Store>,
    keys: Arc<Keys>,
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

    /// Stops serving and the background tasks.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The upstream that `config` describes.
pub fn open_upstream(config: &Config) -> anyhow::Result<Arc<dyn Upstream>> {
    Ok(match &config.upstream {
        Some(s3) => Arc::new(S3Upstream::new(s3)?),
        None => Arc::new(LocalUpstream::new(&config.data_dir.join("upstream"))?),
    })
}

/// Opens the store that `config` describes, over `upstream`.
pub fn open_store_with(config: &Config, upstream: Arc<dyn Upstream>) -> anyhow::Result<Arc<Store>> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let index = Index::open(&config.data_dir.join("index")).context("opening the index")?;
    Ok(Arc::new(Store::new(index, upstream, config.clone())))
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
    let store = open_store_with(&config, upstream)?;
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
    tracing::info!(%address, upstream = store.upstream.describe(), "serving S3");
    let accept = tokio::spawn(async move {
        let http = ConnectionBuilder::new(TokioExecutor::new());
        loop {
            let socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            let connection = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
    });
    let packer = tokio::spawn(background::run_packer(store.clone()));
    let gc = tokio::spawn(background::run_gc(store.clone()));
    Ok(RunningGateway { address, store, keys, tasks: vec![accept, packer, gc] })
}
