//! Byte keys of the sled trees. Names are joined with a NUL byte, which S3 names never hold
//! (the gateway refuses such keys), so that sled's byte order is S3's listing order.

use crate::{ChunkHash, IndexError, Result};

/// The full name of an object: tenant, bucket and key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
}

impl ObjectKey {
    pub fn new(tenant: &str, bucket: &str, key: &str) -> ObjectKey {
        ObjectKey { tenant: tenant.to_owned(), bucket: bucket.to_owned(), key: key.to_owned() }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = object_prefix(&self.tenant, &self.bucket);
        bytes.extend_from_slice(self.key.as_bytes());
        bytes
    }
}

pub(crate) fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut bytes = tenant.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

pub(crate) fn bucket(tenant: &str, bucket: &str) -> Vec<u8> {
    let mut bytes = tenant_prefix(tenant);
    bytes.extend_from_slice(bucket.as_bytes());
    bytes
}

pub(crate) fn object_prefix(tenant: &str, bucket_name: &str) -> Vec<u8> {
    let mut bytes = bucket(tenant, bucket_name);
    bytes.push(0);
    bytes
}

pub(crate) fn parts_prefix(upload_id: &str) -> Vec<u8> {
    let mut bytes = upload_id.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

pub(crate) fn part(upload_id: &str, number: u32) -> Vec<u8> {
    let mut bytes = parts_prefix(upload_id);
    bytes.extend_from_slice(&number.to_be_bytes());
    bytes
}

pub(crate) fn part_number(key: &[u8]) -> Result<u32> {
    let word = key.len().checked_sub(4).and_then(|start| key[start..].try_into().ok()).ok_or_else(|| malformed(key))?;
    Ok(u32::from_be_bytes(word))
}

pub(crate) fn tensor(tenant: &str, name: &str, signature: &str) -> Vec<u8> {
    let mut bytes = tenant_prefix(tenant);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(signature.as_bytes());
    bytes
}

pub(crate) fn candidates_prefix(scope: &str, signature: &str) -> Vec<u8> {
    let mut bytes = tenant_prefix(scope);
    bytes.extend_from_slice(signature.as_bytes());
    bytes.push(0);
    bytes
}

/// The full name an `objects` tree key encodes.
pub(crate) fn object_key(bytes: &[u8]) -> Result<ObjectKey> {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(tenant), Some(bucket), Some(key)) => Ok(ObjectKey::new(tenant, bucket, key)),
        _ => Err(malformed(bytes)),
    }
}

/// The tenant and bucket a `buckets` tree key (or the start of an `objects` key) names.
pub(crate) fn tenant_and_bucket(bytes: &[u8]) -> Result<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.splitn(3, '\0');
    match (parts.next(), parts.next()) {
        (Some(tenant), Some(bucket)) => Ok((tenant.to_owned(), bucket.to_owned())),
        _ => Err(malformed(bytes)),
    }
}

/// The chunk id a `chunks` tree key is.
pub(crate) fn chunk_hash(bytes: &[u8]) -> Result<ChunkHash> {
    bytes.try_into().map_err(|_| malformed(bytes))
}

fn malformed(bytes: &[u8]) -> IndexError {
    IndexError::MalformedKey(display(bytes))
}

/// An object key as `tenant/bucket/key`, for messages.
pub(crate) fn display(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}
