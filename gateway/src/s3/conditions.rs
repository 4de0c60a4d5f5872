//! Conditional requests: If-Match / If-None-Match / If-(Un)Modified-Since on reads and copy
//! sources, If-Match / If-None-Match on writes, and the ACLs a write may name.

use super::*;

/// A client's condition on the object a write replaces (`If-Match`, `If-None-Match: *`).
pub(super) enum WriteCondition {
    None,
    Absent,
    ETag(Option<String>),
}

impl WriteCondition {
    /// From the parsed headers; `If-None-Match` with an ETag, or both headers, are not
    /// something S3 does on writes.
    pub(super) fn of(if_match: Option<&ETagCondition>, if_none_match: Option<&ETagCondition>) -> S3Result<WriteCondition> {
        match (if_match, if_none_match) {
            (None, None) => Ok(WriteCondition::None),
            (None, Some(ETagCondition::Any)) => Ok(WriteCondition::Absent),
            (Some(ETagCondition::Any), None) => Ok(WriteCondition::ETag(None)),
            (Some(ETagCondition::ETag(etag)), None) => Ok(WriteCondition::ETag(Some(etag.value().to_owned()))),
            _ => Err(s3_error!(NotImplemented, "A header you provided implies functionality that is not implemented")),
        }
    }

    /// From the raw headers of a request whose input does not carry them (CopyObject).
    pub(super) fn from_headers(headers: &hyper::HeaderMap) -> S3Result<WriteCondition> {
        let parse = |name: &str| -> S3Result<Option<ETagCondition>> {
            let Some(value) = headers.get(name) else { return Ok(None) };
            ETagCondition::parse_http_header(value.as_bytes()).map(Some).map_err(|_| s3_error!(InvalidArgument, "Invalid {name} header"))
        };
        WriteCondition::of(parse("if-match")?.as_ref(), parse("if-none-match")?.as_ref())
    }

    pub(super) fn as_expect(&self) -> Expect<'_> {
        match self {
            WriteCondition::None => Expect::Any,
            WriteCondition::Absent => Expect::Absent,
            WriteCondition::ETag(etag) => Expect::ETag(etag.as_deref()),
        }
    }
}

fn etag_matches(condition: &ETagCondition, record: &ObjectRecord) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(etag) => etag.value() == record.etag,
    }
}

/// The GET/HEAD preconditions, in the order and with the outcomes AWS documents.
pub(super) fn check_conditions(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = record.last_modified_ms / 1000;
    match if_match {
        Some(condition) if !etag_matches(condition, record) => return Err(s3_error!(PreconditionFailed)),
        None if if_unmodified_since.is_some_and(|t| modified > seconds(t)) => {
            return Err(s3_error!(PreconditionFailed))
        }
        _ => {}
    }
    match if_none_match {
        Some(condition) if etag_matches(condition, record) => Err(not_modified(record)),
        None if if_modified_since.is_some_and(|t| modified <= seconds(t)) => Err(not_modified(record)),
        _ => Ok(()),
    }
}

/// 304 Not Modified, with the ETag and Last-Modified a cache revalidates against, as S3 sends.
fn not_modified(record: &ObjectRecord) -> S3Error {
    let mut error = s3_error!(NotModified);
    let mut headers = hyper::HeaderMap::new();
    if let Ok(etag) = hyper::header::HeaderValue::from_str(&format!("\"{}\"", record.etag)) {
        headers.insert(hyper::header::ETAG, etag);
    }
    let modified = time::OffsetDateTime::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.last_modified_ms.max(0) as u64));
    let http_date = time::format_description::well_known::Rfc2822;
    if let Some(value) = modified.format(&http_date).ok().and_then(|date| hyper::header::HeaderValue::from_str(&date.replace("+0000", "GMT")).ok()) {
        headers.insert(hyper::header::LAST_MODIFIED, value);
    }
    error.set_headers(headers);
    error
}

/// Refuses an ACL on an object write other than the owner's full control (ACLs are disabled;
/// see `bucket_config`).
pub(super) fn check_write_acl(tenant: &str, acl: Option<&ObjectCannedACL>, grants: bool) -> S3Result<()> {
    bucket_config::check_acl(tenant, acl.map(ObjectCannedACL::as_str), None, grants)
}

/// Refuses a write asking for object lock, as S3 does in a bucket without it.
pub(super) fn check_no_object_lock(asked: bool) -> S3Result<()> {
    if asked {
        return Err(s3_error!(InvalidRequest, "Bucket is missing Object Lock Configuration"));
    }
    Ok(())
}
