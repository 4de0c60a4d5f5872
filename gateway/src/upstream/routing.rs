//! Several upstreams as one: keys under a route's prefix (`tenants/<name>/`) go to that
//! route's upstream, everything else to the default. Tenants with their own bucket get their
//! keys under their prefix, so every reader finds the bytes wherever they were written.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobWriter, Condition, Listed, Tagged, Upstream};

pub struct RoutingUpstream {
    default: Arc<dyn Upstream>,
    routes: Vec<(String, Arc<dyn Upstream>)>,
}

impl RoutingUpstream {
    pub fn new(default: Arc<dyn Upstream>, routes: Vec<(String, Arc<dyn Upstream>)>) -> RoutingUpstream {
        RoutingUpstream { default, routes }
    }

    fn route(&self, key: &str) -> &Arc<dyn Upstream> {
        self.routes
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map_or(&self.default, |(_, upstream)| upstream)
    }
}

#[async_trait]
impl Upstream for RoutingUpstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        self.route(key).writer(key).await
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.route(key).read(key, range).await
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        self.route(key).read_tagged(key).await
    }

    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>> {
        self.route(key).put_if(key, bytes, condition).await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.route(key).delete(key).await
    }

    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool> {
        self.route(key).delete_if(key, tag).await
    }

    /// A prefix inside a route lists that route; any other lists the default upstream.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        self.route(prefix).list(prefix).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> anyhow::Result<Vec<Listed>> {
        self.route(prefix).list_after(prefix, after).await
    }

    fn describe(&self) -> String {
        let routes: Vec<String> = self.routes.iter().map(|(prefix, upstream)| format!("{prefix}* -> {}", upstream.describe())).collect();
        format!("{}; {}", self.default.describe(), routes.join("; "))
    }
}
