//! Configuration: one TOML file, every field optional. With no file, `tensorgate serve` listens
//! on 127.0.0.1:9000 and keeps everything under ./tensorgate-data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::upstream::S3UpstreamConfig;

/// How far back before its newest entry a sync lists the change journal again (entries can
/// land out of time order); journal entries must be kept longer than twice this.
pub const JOURNAL_OVERLAP_MS: i64 = 60_000;

/// Access key used when the config names none; printed at startup.
pub const DEFAULT_ACCESS_KEY: &str = "tensorgate";
pub const DEFAULT_SECRET_KEY: &str = "tensorgate-secret";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the S3 endpoint listens on.
    pub listen: SocketAddr,
    /// Directory of the sled index (and of the local upstream when no S3 upstream is set).
    pub data_dir: PathBuf,
    /// Requests handled at once; more get `SlowDown` (503) and are retried by clients.
    pub max_concurrent_requests: usize,
    /// Share of `max_concurrent_requests` one tenant's requests may hold at once (when absent:
    /// all of them with one tenant, half with several).
    pub max_concurrent_requests_per_tenant: Option<usize>,
    /// Bytes of request bodies being received and of answers' pieces not yet taken by their
    /// clients, held at once; a body or a piece that would pass the budget waits (its client
    /// is slowed down by TCP) until others are done.
    pub max_in_flight_bytes: u64,
    /// Share of `max_in_flight_bytes` one tenant's bodies and answers may hold at once (when
    /// absent: all of it with one tenant, half with several), so that one tenant cannot hold
    /// it all.
    pub max_in_flight_bytes_per_tenant: Option<u64>,
    /// Seconds a connection has to send a request's headers (once connected, or between two
    /// requests on a kept-alive connection); slower ones are closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a request body may send nothing before the request fails (400 RequestTimeout,
    /// as S3 answers) and gives back its share of the byte budget.
    pub body_idle_timeout_secs: u64,
    /// Seconds a client may take no byte of an answer before its connection is closed, giving
    /// back the share of the byte budget the answer's pieces held.
    pub response_idle_timeout_secs: u64,
    /// Seconds a stopping gateway (SIGTERM or SIGINT) waits for the requests in progress.
    pub drain_secs: u64,
    /// Model headers (safetensors, GGUF) longer than this are not parsed: the file is stored as
    /// opaque bytes (content-defined chunks).
    pub max_header_bytes: u64,
    /// Address of the metrics and health endpoints (`/metrics`, `/health`, `/ready`); off
    /// when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Domains for virtual-host style requests (`bucket.localhost`).
    pub domains: Vec<String>,
    /// Access keys of the tenant named `default` (the single-tenant setup).
    pub access_keys: Vec<AccessKey>,
    /// Tenants: each with its own keys and its own buckets, invisible to the others.
    pub tenants: Vec<TenantConfig>,
    /// Whether identical chunks are shared across tenants (`"shared"`) or deduplicated within
    /// each tenant only (`"tenant"`, the default).
    pub dedup_scope: DedupScope,
    /// The S3 upstream; when absent, `data_dir/upstream` is used.
    pub upstream: Option<S3UpstreamConfig>,
    /// Other gateways serve the same upstream: reads check the manifest upstream before
    /// answering from the index, and garbage collection spares what any manifest references.
    pub shared_upstream: bool,
    /// The newest frame version this gateway writes: 5 (ordered deltas that store their runs:
    /// issue 15), 4 (deltas against a window of a base chunk: issue 15), 3 (GGUF blocks
    /// predicted from a wider tensor: issue 17), 2 (conversions across precisions, levels:
    /// issue 18), or an older one while gateways from before it still read the same upstream.
    pub write_frame_version: u8,
    /// Seconds between catching up with other gateways' writes (for listings), when shared.
    pub shared_sync_secs: u64,
    /// Seconds between two catch-ups that list every manifest rather than the change journal.
    pub shared_full_sync_secs: u64,
    /// Seconds the change journal keeps its entries.
    pub journal_retention_secs: u64,
    /// Seconds a gateway holds the garbage-collection lease once taken.
    pub gc_lease_secs: u64,
    /// With a shared upstream: seconds after which a gateway that has not caught up with the
    /// upstream is taken to be gone (the collector stops waiting for it before deleting packs),
    /// and after which a gateway refuses to start on its old index.
    pub gateway_expiry_secs: u64,
    /// Seconds before an unreferenced upstream blob (a part of an upload that never completed,
    /// here or on another gateway) is collected.
    pub orphan_blob_secs: u64,
    /// Seconds between two listings of the upstream for orphans (the first collection of a
    /// process always lists).
    pub orphan_scan_secs: u64,
    /// Objects under this many bytes are stored as they came.
    pub min_model_bytes: u64,
    /// Encode the parts of a multipart model upload as they arrive; false stores every part as
    /// it came, for the packer to encode after completion.
    pub encode_parts: bool,
    /// Seconds before freed chunks and upstream objects are deleted.
    pub gc_grace_secs: u64,
    /// Seconds between garbage-collection runs.
    pub gc_interval_secs: u64,
    /// Seconds between two readings of per-tenant usage from the index for `/metrics`.
    pub usage_refresh_secs: u64,
    /// Packs whose live bytes fall under this share of their size are compacted by garbage
    /// collection (0 turns compaction off).
    pub compact_live_ratio: f64,
    /// Raw bytes re-encoded at most by one garbage collection to re-base families of tensors
    /// (0 turns re-basing off; it does not run with a shared upstream).
    pub rebase_bytes_per_run: u64,
    /// Bytes of decoded chunks kept in memory: bases of delta reads, and the chunks GETs took
    /// part of, which neighbouring ranges share (`base_cache_bytes` before stop 18).
    #[serde(alias = "base_cache_bytes")]
    pub chunk_cache_bytes: u64,
    /// How a new tensor's base is chosen.
    pub base_selection: BaseSelection,
}

/// How a new tensor's base is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseSelection {
    /// The stored tensor of the same dtype and shape with the nearest bit-level fingerprint
    /// (any name, any bucket of the tenant), confirmed by trial encodes of a sample.
    Fingerprint,
    /// The newest stored tensor with the same name, dtype and shape.
    Name,
    /// No deltas: every new chunk is stored on its own.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key: String,
    /// The secret itself, or empty when it comes from `secret_key_env` or `secret_key_file`.
    #[serde(default)]
    pub secret_key: String,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_key_env: Option<String>,
    /// File holding the secret (a trailing newline is dropped).
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
}

impl AccessKey {
    pub fn new(access_key: &str, secret_key: &str) -> AccessKey {
        AccessKey { access_key: access_key.to_owned(), secret_key: secret_key.to_owned(), secret_key_env: None, secret_key_file: None }
    }

    /// Fills `secret_key` from the environment or a file when the config names one.
    fn resolve_secret(&mut self) -> anyhow::Result<()> {
        let sources = usize::from(!self.secret_key.is_empty()) + usize::from(self.secret_key_env.is_some()) + usize::from(self.secret_key_file.is_some());
        anyhow::ensure!(sources == 1, "access key {:?} needs exactly one of secret_key, secret_key_env, secret_key_file", self.access_key);
        if let Some(variable) = &self.secret_key_env {
            self.secret_key = std::env::var(variable).with_context(|| format!("reading the secret of {:?} from ${variable}", self.access_key))?;
        }
        if let Some(path) = &self.secret_key_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the secret of {:?} from {}", self.access_key, path.display()))?;
            self.secret_key = text.trim_end_matches(['\n', '\r']).to_owned();
        }
        Ok(())
    }
}

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// One tenant: a namespace of buckets reached with its own keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub access_keys: Vec<AccessKey>,
    /// How many buckets the tenant may own; unlimited when absent.
    pub max_buckets: Option<usize>,
    /// Where this tenant's bytes live, when not in the gateway's upstream: its own S3 bucket
    /// (and prefix), possibly at another provider.
    pub upstream: Option<S3UpstreamConfig>,
    /// Tenants naming the same group share deduplication and bases among themselves (with
    /// `dedup_scope = "tenant"`; `"shared"` shares across all tenants).
    pub dedup_group: Option<String>,
}

/// Where chunk deduplication and base selection look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupScope {
    Tenant,
    Shared,
}

/// Prefix of the environment variables that override settings.
pub const ENVIRONMENT_PREFIX: &str = "TENSORGATE_";

/// Overrides settings from `TENSORGATE_<SETTING>` variables; `__` reaches into a table
/// (`TENSORGATE_UPSTREAM__ENDPOINT`). Values are read as TOML (numbers, booleans, lists), and
/// as plain strings when they are not valid TOML.
fn apply_environment(table: &mut toml::Table, variables: impl Iterator<Item = (String, String)>) -> anyhow::Result<()> {
    for (name, value) in variables {
        let Some(path) = name.strip_prefix(ENVIRONMENT_PREFIX) else { continue };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let parsed = toml::from_str::<toml::Table>(&format!("value = {value}"))
            .ok()
            .and_then(|mut t| t.remove("value"))
            .unwrap_or(toml::Value::String(value));
        let (last, parents) = keys.split_last().context("an empty setting name")?;
        let mut target = &mut *table;
        for parent in parents {
            let entry = target.entry(parent.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            target = entry.as_table_mut().with_context(|| format!("{name}: {parent} is not a table"))?;
        }
        target.insert(last.clone(), parsed);
    }
    Ok(())
}

/// Name of the tenant that the top-level `access_keys` belong to.
pub const DEFAULT_TENANT: &str = "default";

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            data_dir: PathBuf::from("tensorgate-data"),
            max_concurrent_requests: 256,
            max_concurrent_requests_per_tenant: None,
            max_in_flight_bytes: 192 << 20,
            max_in_flight_bytes_per_tenant: None,
            header_read_timeout_secs: 20,
            body_idle_timeout_secs: 20,
            response_idle_timeout_secs: 20,
            drain_secs: 25,
            max_header_bytes: 16 << 20,
            metrics_listen: None,
            tls: None,
            domains: vec!["localhost".to_owned()],
            access_keys: Vec::new(),
            tenants: Vec::new(),
            dedup_scope: DedupScope::Tenant,
            upstream: None,
            shared_upstream: false,
            write_frame_version: 5,
            shared_sync_secs: 10,
            shared_full_sync_secs: 3600,
            journal_retention_secs: 3600,
            gc_lease_secs: 300,
            gateway_expiry_secs: 7 * 24 * 3600,
            orphan_blob_secs: 7 * 24 * 3600,
            orphan_scan_secs: 3600,
            min_model_bytes: 64 * 1024,
            encode_parts: true,
            gc_grace_secs: 600,
            gc_interval_secs: 60,
            usage_refresh_secs: 30,
            compact_live_ratio: 0.5,
            rebase_bytes_per_run: 256 << 20,
            chunk_cache_bytes: 64 << 20,
            base_selection: BaseSelection::Fingerprint,
        }
    }
}

impl Config {
    /// Reads the config file, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None => String::new(),
        };
        let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.map_or("the config".into(), |p| p.display().to_string())))?;
        apply_environment(&mut table, std::env::vars())?;
        let mut config: Config = table.try_into().context("reading the settings")?;
        if config.access_keys.is_empty() && config.tenants.is_empty() {
            config.access_keys.push(AccessKey::new(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY));
        }
        let tenant_keys = config.tenants.iter_mut().flat_map(|tenant| tenant.access_keys.iter_mut());
        for key in config.access_keys.iter_mut().chain(tenant_keys) {
            key.resolve_secret()?;
        }
        Ok(config)
    }

    /// The frames the codec may write (`write_frame_version`).
    pub fn frame_format(&self) -> tensorgate_codec::FrameFormat {
        match self.write_frame_version {
            1 => tensorgate_codec::FrameFormat::Version1,
            2 => tensorgate_codec::FrameFormat::Version2,
            3 => tensorgate_codec::FrameFormat::Version3,
            4 => tensorgate_codec::FrameFormat::Version4,
            _ => tensorgate_codec::FrameFormat::Current,
        }
    }

    /// Checks what parsing cannot: unique tenant names and access keys, no tenant named
    /// `default`, tenants with keys, timeouts and budgets that make sense, and an upstream the
    /// S3 client accepts. `serve` runs it too.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.tenants.iter().any(|tenant| tenant.name == DEFAULT_TENANT),
            "the tenant name {DEFAULT_TENANT:?} is reserved for the top-level access_keys"
        );
        let tenants = self.all_tenants();
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for tenant in &tenants {
            anyhow::ensure!(!tenant.name.is_empty(), "a tenant has an empty name");
            anyhow::ensure!(names.insert(tenant.name.as_str()), "tenant {:?} is defined twice", tenant.name);
            anyhow::ensure!(!tenant.access_keys.is_empty(), "tenant {:?} has no access key", tenant.name);
            for key in &tenant.access_keys {
                anyhow::ensure!(keys.insert(key.access_key.as_str()), "access key {:?} is given twice", key.access_key);
                anyhow::ensure!(!key.secret_key.is_empty(), "access key {:?} has an empty secret", key.access_key);
            }
        }
        anyhow::ensure!(self.header_read_timeout_secs > 0, "header_read_timeout_secs must be at least 1");
        anyhow::ensure!(matches!(self.write_frame_version, 1..=5), "write_frame_version must be 1, 2, 3, 4 or 5");
        anyhow::ensure!(
            crate::ids::ms_of_secs(self.journal_retention_secs) > 2 * JOURNAL_OVERLAP_MS,
            "journal_retention_secs must be more than {} (twice the overlap a sync reads again)",
            2 * JOURNAL_OVERLAP_MS / 1000
        );
        anyhow::ensure!(self.body_idle_timeout_secs > 0, "body_idle_timeout_secs must be at least 1");
        anyhow::ensure!(self.response_idle_timeout_secs > 0, "response_idle_timeout_secs must be at least 1");
        anyhow::ensure!(
            self.tenant_in_flight_bytes() <= self.max_in_flight_bytes,
            "max_in_flight_bytes_per_tenant is more than max_in_flight_bytes"
        );
        if let Some(upstream) = &self.upstream {
            anyhow::ensure!(
                upstream.endpoint.starts_with("http://") || upstream.endpoint.starts_with("https://"),
                "upstream endpoint {:?} is not an http(s) URL",
                upstream.endpoint
            );
            anyhow::ensure!(!upstream.bucket.is_empty(), "the upstream bucket is empty");
        }
        Ok(())
    }

    /// Bytes of request bodies one tenant may hold at once: as set, else all of the budget
    /// with one tenant and half of it with several.
    pub fn tenant_in_flight_bytes(&self) -> u64 {
        let default = if self.all_tenants().len() > 1 { self.max_in_flight_bytes / 2 } else { self.max_in_flight_bytes };
        self.max_in_flight_bytes_per_tenant.unwrap_or(default)
    }

    /// Requests one tenant may have in progress at once: as set, else all of them with one
    /// tenant and half with several.
    pub fn tenant_concurrent_requests(&self) -> usize {
        let default = if self.all_tenants().len() > 1 { self.max_concurrent_requests / 2 } else { self.max_concurrent_requests };
        self.max_concurrent_requests_per_tenant.unwrap_or(default)
    }

    /// Every tenant, the top-level keys forming the tenant `default`.
    pub fn all_tenants(&self) -> Vec<TenantConfig> {
        let mut tenants = self.tenants.clone();
        if !self.access_keys.is_empty() {
            tenants.push(TenantConfig {
                name: DEFAULT_TENANT.to_owned(),
                access_keys: self.access_keys.clone(),
                max_buckets: None,
                upstream: None,
                dedup_group: None,
            });
        }
        tenants
    }

    /// The prefix of the upstream keys a tenant's writes make: `tenants/<name>/` for a tenant
    /// with its own upstream (the router sends such keys there), else nothing.
    pub fn upstream_prefix(&self, tenant: &str) -> String {
        let own = self.tenants.iter().any(|t| t.name == tenant && t.upstream.is_some());
        if own {
            format!("tenants/{tenant}/")
        } else {
            String::new()
        }
    }

    /// Every distinct upstream prefix a tenant writes under: where manifests, buckets, packs
    /// and blobs are found when the upstream is read as a whole.
    pub fn upstream_prefixes(&self) -> Vec<String> {
        let mut prefixes = vec![String::new()];
        prefixes.extend(self.tenants.iter().filter(|t| t.upstream.is_some()).map(|t| format!("tenants/{}/", t.name)));
        prefixes
    }

    /// The dedup scope of a tenant's writes: the tenant itself, or one scope shared by all.
    pub fn dedup_scope_of(&self, tenant: &str) -> String {
        let group = self.tenants.iter().find(|t| t.name == tenant).and_then(|t| t.dedup_group.as_ref());
        match (self.dedup_scope, group) {
            (DedupScope::Shared, _) => "shared".to_owned(),
            (DedupScope::Tenant, Some(group)) => format!("group:{group}"),
            (DedupScope::Tenant, None) => format!("tenant:{tenant}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_settings_and_tables() {
        let mut table: toml::Table = toml::from_str("listen = \"127.0.0.1:1\"\n[upstream]\nendpoint = \"http://a\"\nbucket = \"b\"\n").unwrap();
        let variables = [
            ("TENSORGATE_LISTEN", "0.0.0.0:9000"),
            ("TENSORGATE_GC_GRACE_SECS", "30"),
            ("TENSORGATE_UPSTREAM__ENDPOINT", "https://r2.example"),
            ("TENSORGATE_DOMAINS", "[\"s3.example\"]"),
            ("OTHER", "ignored"),
        ];
        apply_environment(&mut table, variables.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        let config: Config = table.try_into().unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.gc_grace_secs, 30);
        assert_eq!(config.upstream.unwrap().endpoint, "https://r2.example");
        assert_eq!(config.domains, ["s3.example"]);
    }
}
