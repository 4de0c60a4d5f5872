//! The listings (ListObjects, ListObjectsV2, ListObjectVersions): one walk of the index in key
//! order, rolled up at the delimiter, paged and URL-encoded as S3 does; the paging itself
//! ([`page`]) serves ListMultipartUploads too.

use super::*;

impl Gateway {
    pub(super) async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let mut listing = self.list(&tenant, &input.bucket, input.prefix.as_deref(), input.delimiter.as_deref(), input.marker.as_deref(), input.max_keys).await?;
        let next_marker = listing.is_truncated.then(|| listing.last.clone()).flatten();
        listing.encode_if(encoded);
        // ListObjects (v1) always names each object's owner.
        listing.set_owner(&tenant);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            // ListObjects (v1) encodes every name but the prefix, which AWS echoes as given; the
            // prefix and the marker are always there, empty when none was given.
            prefix: Some(input.prefix.unwrap_or_default()),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            marker: url_encoding::encode_if(encoded, Some(input.marker.unwrap_or_default())),
            max_keys: Some(listing.max_keys),
            is_truncated: Some(listing.is_truncated),
            next_marker: url_encoding::encode_if(encoded, next_marker),
            contents: Some(listing.contents),
            common_prefixes: Some(listing.common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    pub(super) async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let start_after = match &input.continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => input.start_after.clone(),
        };
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let mut listing = self.list(&tenant, &input.bucket, input.prefix.as_deref(), input.delimiter.as_deref(), start_after.as_deref(), input.max_keys).await?;
        let next_token = if listing.is_truncated { listing.last.as_deref().map(encode_token) } else { None };
        listing.encode_if(encoded);
        if input.fetch_owner == Some(true) {
            listing.set_owner(&tenant);
        }
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            max_keys: Some(listing.max_keys),
            key_count: Some((listing.contents.len() + listing.common_prefixes.len()) as i32),
            is_truncated: Some(listing.is_truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: next_token,
            start_after: url_encoding::encode_if(encoded, input.start_after),
            contents: Some(listing.contents),
            common_prefixes: Some(listing.common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    pub(super) async fn list_object_versions(&self, req: S3Request<ListObjectVersionsInput>) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let mut listing = self.list(&tenant, &input.bucket, input.prefix.as_deref(), input.delimiter.as_deref(), input.key_marker.as_deref(), input.max_keys).await?;
        let next_key_marker = if listing.is_truncated { listing.last.clone() } else { None };
        listing.encode_if(encoded);
        let versions = listing
            .contents
            .into_iter()
            .map(|object| ObjectVersion {
                key: object.key,
                e_tag: object.e_tag,
                size: object.size,
                last_modified: object.last_modified,
                is_latest: Some(true),
                version_id: Some(versions::NULL_VERSION.to_owned()),
                owner: Some(bucket_config::owner(&tenant)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            key_marker: url_encoding::encode_if(encoded, input.key_marker),
            version_id_marker: input.version_id_marker,
            max_keys: Some(listing.max_keys),
            is_truncated: Some(listing.is_truncated),
            // Every version is `null`: a truncated page resumes after that version of the key.
            next_version_id_marker: next_key_marker.is_some().then(|| versions::NULL_VERSION.to_owned()),
            next_key_marker: url_encoding::encode_if(encoded, next_key_marker),
            versions: Some(versions),
            common_prefixes: Some(listing.common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    /// Lists a bucket in key order, rolling keys up to common prefixes at the delimiter.
    async fn list(&self, tenant: &str, bucket: &str, prefix: Option<&str>, delimiter: Option<&str>, start_after: Option<&str>, max_keys: Option<i32>) -> S3Result<Listing> {
        self.ensure_bucket(tenant, bucket).await?;
        let prefix = prefix.unwrap_or_default();
        let max_keys = page_size(max_keys, "maxKeys")?;
        let objects = self.store.index.list_objects(tenant, bucket, prefix, start_after).map(|entry| entry.map_err(internal));
        let page = page(objects, prefix, delimiter, start_after, max_keys)?;
        let mut listing = Listing {
            contents: Vec::new(),
            common_prefixes: Vec::new(),
            is_truncated: page.is_truncated,
            last: page.last().map(str::to_owned),
            max_keys: max_keys as i32,
        };
        for entry in page.entries {
            match entry {
                Entry::Prefix(prefix) => listing.common_prefixes.push(CommonPrefix { prefix: Some(prefix) }),
                Entry::Item(key, record) => listing.contents.push(Object {
                    key: Some(key),
                    size: Some(record.size as i64),
                    e_tag: Some(etag_of(&record)),
                    last_modified: Some(timestamp(record.last_modified_ms)),
                    storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
                    ..Default::default()
                }),
            }
        }
        Ok(listing)
    }
}

/// The most entries one page of any listing holds (S3's limit).
const MAX_PAGE: usize = 1000;

/// The entries a listing asks for (`max-keys`, `max-parts`, `max-uploads`, named `argument` as
/// S3 names it in its error): S3's limit when none or more is asked; a negative number is
/// refused (400 InvalidArgument).
pub(super) fn page_size(asked: Option<i32>, argument: &str) -> S3Result<usize> {
    match asked {
        None => Ok(MAX_PAGE),
        Some(asked) => usize::try_from(asked)
            .map(|asked| asked.min(MAX_PAGE))
            .map_err(|_| s3_error!(InvalidArgument, "Argument {argument} must be an integer between 0 and 2147483647")),
    }
}

/// An entry of a page: a key with what it lists, or a common prefix that rolls keys up.
pub(super) enum Entry<T> {
    Item(String, T),
    Prefix(String),
}

/// One page of entries in key order.
pub(super) struct Page<T> {
    pub entries: Vec<Entry<T>>,
    pub is_truncated: bool,
}

impl<T> Page<T> {
    /// The last key or common prefix of the page: where the next page starts after.
    pub fn last(&self) -> Option<&str> {
        self.entries.last().map(|entry| match entry {
            Entry::Item(key, _) | Entry::Prefix(key) => key.as_str(),
        })
    }
}

/// Pages `items`, keys under `prefix` in key order (those a marker `start_after` passes
/// already left out), as S3 does: keys with the delimiter after the prefix roll up to one
/// common prefix each, which counts as one entry and is left out when the marker is within it;
/// at most `max` entries, truncated when more follow (an empty page, not truncated, for none).
pub(super) fn page<T>(items: impl IntoIterator<Item = S3Result<(String, T)>>, prefix: &str, delimiter: Option<&str>, start_after: Option<&str>, max: usize) -> S3Result<Page<T>> {
    let mut page = Page { entries: Vec::new(), is_truncated: false };
    if max == 0 {
        return Ok(page);
    }
    let delimiter = delimiter.filter(|delimiter| !delimiter.is_empty());
    let mut last_prefix: Option<String> = None;
    for item in items {
        let (key, value) = item?;
        let rolled = delimiter.and_then(|d| key.get(prefix.len()..)?.find(d).map(|at| key[..prefix.len() + at + d.len()].to_owned()));
        if let Some(rolled) = &rolled {
            if last_prefix.as_ref() == Some(rolled) || start_after.is_some_and(|after| after.starts_with(rolled.as_str())) {
                continue;
            }
        }
        if page.entries.len() >= max {
            page.is_truncated = true;
            break;
        }
        match rolled {
            Some(rolled) => {
                last_prefix = Some(rolled.clone());
                page.entries.push(Entry::Prefix(rolled));
            }
            None => page.entries.push(Entry::Item(key, value)),
        }
    }
    Ok(page)
}

/// One page of a listing.
struct Listing {
    contents: Vec<Object>,
    common_prefixes: Vec<CommonPrefix>,
    is_truncated: bool,
    /// The last key or common prefix of the page: where the next page starts after.
    last: Option<String>,
    max_keys: i32,
}

impl Listing {
    /// Names the owner of every listed object (the tenant's canonical id).
    pub(super) fn set_owner(&mut self, tenant: &str) {
        for object in &mut self.contents {
            object.owner = Some(bucket_config::owner(tenant));
        }
    }

    /// Percent-encodes the listed keys and prefixes when the client asked for `encoding-type=url`.
    pub(super) fn encode_if(&mut self, wanted: bool) {
        for object in &mut self.contents {
            object.key = url_encoding::encode_if(wanted, object.key.take());
        }
        for common in &mut self.common_prefixes {
            common.prefix = url_encoding::encode_if(wanted, common.prefix.take());
        }
    }
}

pub(super) fn encode_token(key: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, key)
}

pub(super) fn decode_token(token: &str) -> S3Result<String> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))
}
