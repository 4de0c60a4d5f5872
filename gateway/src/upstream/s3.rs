//! Any S3-compatible endpoint as upstream (AWS S3, R2, MinIO, Ceph), through aws-sdk-s3.
//! Objects are written with one PutObject when small, else as a multipart upload of equal
//! 8 MiB parts (R2 wants equal parts); keys live under a configurable prefix of one bucket.

use std::ops::Range;

use anyhow::Context;
use async_trait::async_trait;
use std::time::Duration;

use aws_sdk_s3::config::{retry::RetryConfig, timeout::TimeoutConfig, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::{BlobWriter, Condition, Listed, Missing, Tagged, Upstream};

/// Size of the parts written upstream.
pub const PART_SIZE: usize = 8 << 20;

/// Where the S3 upstream is and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3UpstreamConfig {
    /// Endpoint URL, e.g. `https://<account>.r2.cloudflarestorage.com`.
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Prefix of every key tensorgate writes, e.g. `tensorgate/`.
    #[serde(default)]
    pub prefix: String,
    /// Credentials; when absent, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` are used.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    #[serde(default = "default_path_style")]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_path_style() -> bool {
    true
}

pub struct S3Upstream {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Upstream {
    /// Every object under `prefix` (after `after`, if given), in key order.
    async fn list_from(&self, prefix: &str, after: Option<&str>) -> anyhow::Result<Vec<Listed>> {
        let full_prefix = self.full_key(prefix);
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full_prefix).set_start_after(after.map(|after| self.full_key(after))).into_paginator().send();
        let mut listed = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("listing {full_prefix}"))?;
            for object in page.contents.unwrap_or_default() {
                let Some(key) = object.key.as_deref().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                listed.push(Listed {
                    key: key.to_owned(),
                    size: object.size.unwrap_or(0).max(0) as u64,
                    modified_ms: object.last_modified.map_or(0, |t| t.to_millis().unwrap_or(0)),
                    tag: object.e_tag.with_context(|| format!("the listing of {full_prefix} gives {key} no ETag"))?,
                });
            }
        }
        Ok(listed)
    }

    pub fn new(config: &S3UpstreamConfig) -> anyhow::Result<S3Upstream> {
        let access_key = config
            .access_key
            .clone()
            .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
            .context("upstream access key: set access_key or AWS_ACCESS_KEY_ID")?;
        let secret_key = config
            .secret_key
            .clone()
            .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok())
            .context("upstream secret key: set secret_key or AWS_SECRET_ACCESS_KEY")?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let sdk_config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .http_client(http_client)
            .endpoint_url(&config.endpoint)
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(access_key, secret_key, None, None, "tensorgate-config"))
            .force_path_style(config.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            // Quick retries and bounded waits: a client waiting on a down upstream should get its
            // 503 in seconds (see upstream/guard.rs). The first byte of an answer must come within
            // 20 s of the request's start, an 8 MiB part's upload included.
            .retry_config(RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(100)).with_max_backoff(Duration::from_secs(2)))
            .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).read_timeout(Duration::from_secs(20)).build())
            .build();
        Ok(S3Upstream {
            client: Client::from_conf(sdk_config),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            endpoint: config.endpoint.clone(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Upstream for S3Upstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.full_key(key),
            buffer: BytesMut::new(),
            upload_id: None,
            parts: Vec::new(),
            written: 0,
        }))
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        let wanted = range.end.saturating_sub(range.start);
        if wanted == 0 {
            return Ok(Bytes::new());
        }
        let full_key = self.full_key(key);
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|error| match error.as_service_error().is_some_and(|e| e.is_no_such_key()) {
                true => anyhow::Error::new(Missing(full_key.clone())),
                false => anyhow::Error::new(error).context(format!("GET {full_key} bytes {range:?}")),
            })?;
        let bytes = output.body.collect().await.context("reading upstream body")?.into_bytes();
        anyhow::ensure!(
            bytes.len() as u64 == wanted,
            "upstream returned {} bytes of {full_key} where {wanted} were asked",
            bytes.len()
        );
        Ok(bytes)
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        let full_key = self.full_key(key);
        let output = match self.client.get_object().bucket(&self.bucket).key(&full_key).send().await {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(error) => return Err(anyhow::Error::new(error).context(format!("GET {full_key}"))),
        };
        let tag = output.e_tag.clone().with_context(|| format!("GET {full_key} answered no ETag"))?;
        let bytes = output.body.collect().await.context("reading upstream body")?.into_bytes();
        Ok(Some(Tagged { bytes, tag }))
    }

    /// PutObject with `If-None-Match: *` or `If-Match: <ETag>`; a 412 (or a 409 from a
    /// concurrent conditional write) means the condition did not hold.
    /// A 404 answers `If-Match` on a key that is gone.
    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>> {
        let full_key = self.full_key(key);
        let request = self.client.put_object().bucket(&self.bucket).key(&full_key).body(ByteStream::from(bytes));
        let request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(tag) => request.if_match(tag),
        };
        match request.send().await {
            Ok(output) => Ok(Some(output.e_tag.with_context(|| format!("conditional PUT {full_key} answered no ETag"))?)),
            Err(error) if condition_failed(error.raw_response().map(|r| r.status().as_u16())) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error).context(format!("conditional PUT {full_key}"))),
        }
    }

    /// DeleteObject with `If-Match: <ETag>` (S3 and MinIO honour it; an upstream that ignores
    /// the header deletes unconditionally).
    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool> {
        let full_key = self.full_key(key);
        match self.client.delete_object().bucket(&self.bucket).key(&full_key).if_match(tag).send().await {
            Ok(_) => Ok(true),
            Err(error) if condition_failed(error.raw_response().map(|r| r.status().as_u16())) => Ok(false),
            Err(error) => Err(anyhow::Error::new(error).context(format!("conditional DELETE {full_key}"))),
        }
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        self.list_from(prefix, None).await
    }

    /// ListObjectsV2 with `start-after`: only the keys after `after` are listed.
    async fn list_after(&self, prefix: &str, after: &str) -> anyhow::Result<Vec<Listed>> {
        self.list_from(prefix, Some(after)).await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let full_key = self.full_key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .with_context(|| format!("DELETE {full_key}"))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("S3 {} bucket {} prefix {:?}", self.endpoint, self.bucket, self.prefix)
    }
}

struct S3Writer {
    client: Client,
    bucket: String,
    key: String,
    buffer: BytesMut,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    written: u64,
}

impl S3Writer {
    async fn upload_part(&mut self, body: Bytes) -> anyhow::Result<()> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .with_context(|| format!("CreateMultipartUpload {}", self.key))?;
                let id = created.upload_id.context("upstream gave no upload id")?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .with_context(|| format!("UploadPart {number} of {}", self.key))?;
        self.parts.push(CompletedPart::builder().part_number(number).set_e_tag(uploaded.e_tag).build());
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        self.written += bytes.len() as u64;
        self.buffer.extend_from_slice(&bytes);
        while self.buffer.len() >= PART_SIZE {
            let part = self.buffer.split_to(PART_SIZE).freeze();
            self.upload_part(part).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> anyhow::Result<u64> {
        let rest = self.buffer.split().freeze();
        let Some(upload_id) = self.upload_id.clone() else {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(rest))
                .send()
                .await
                .with_context(|| format!("PUT {}", self.key))?;
            return Ok(self.written);
        };
        if !rest.is_empty() {
            self.upload_part(rest).await?;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build())
            .send()
            .await
            .with_context(|| format!("CompleteMultipartUpload {}", self.key))?;
        Ok(self.written)
    }

    async fn abort(self: Box<Self>) {
        if let Some(upload_id) = &self.upload_id {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .send()
                .await;
        }
    }
}

/// Whether a conditional request's status says that its condition did not hold: 412, 409 (a
/// concurrent conditional write) or 404 (`If-Match` on a key that is gone).
fn condition_failed(status: Option<u16>) -> bool {
    matches!(status, Some(404 | 409 | 412))
}
