//! S3 semantics as AWS S3 answers them, checked by real clients (boto3, raw HTTP) against a
//! gateway over the local directory.

mod support;

use support::shared::shared_upstream_gateway;
use support::*;

/// S3 behaviour in detail (conditions, copy, multipart, parts and ranges on GET and HEAD, the
/// paging of upload listings, writes refused for their digests, metadata, storage class or part
/// number, presigned and virtual-host requests, key limits, deletes), checked by boto3 in
/// tests/clients/s3_semantics.py.
#[test]
fn s3_semantics_match_aws() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.python_client("s3_semantics.py", &[]);
}

/// Details of the answers (issue 13, tests/clients/s3_details.py): creating one's own bucket
/// again succeeds; reserved bucket names are refused; an object stored without a type is
/// served as binary/octet-stream; a 304 carries ETag and Last-Modified; MaxKeys=0 is not
/// truncated; an empty Delimiter is not echoed; ListObjects (v1) echoes its prefix unencoded;
/// error bodies, those s3s raises too, carry AWS's message and the request and host ids of
/// their headers; copying an object onto itself unchanged is refused; a repeated
/// CompleteMultipartUpload answers the object it made;
/// ListObjects (v1) always answers Prefix and Marker; ListObjectVersions pages with version
/// markers; GetObjectAttributes answers an unquoted ETag; `aws-chunked` is not stored as a
/// Content-Encoding; ListBuckets pages with MaxBuckets; Expires is stored (also through a
/// multipart upload); GetBucketLocation answers the LocationConstraint given at creation, and
/// HeadBucket and ListBuckets the region; an object's tag set is empty and a write setting tags
/// is refused; HEAD takes the `response-*` overrides; a presigned URL valid for over a week is
/// refused; every answer carries an x-amz-id-2.
#[test]
fn answers_carry_the_details_s3_gives() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("s3_details.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// Listings with `encoding-type=url` (tests/clients/listing_encoding.py): keys holding `+`, `%`,
/// spaces, unicode and a control character list under their own names through boto3 (every
/// listing call) and read back; `aws s3 sync` of such a tree up and back is exact, and a
/// second sync moves nothing.
#[test]
fn listings_encode_keys_as_s3_does() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("listing_encoding.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// Conditional writes (tests/clients/conditional_writes.py): PutObject, CompleteMultipartUpload
/// and CopyObject honour `If-None-Match: *` and `If-Match` (412, or 404 for `If-Match` with no
/// object), one of several racing creates wins, and a copy answers the ETag it serves.
#[test]
fn conditional_writes_are_honoured() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("conditional_writes.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// The same conditional writes through a gateway sharing a moto upstream: the conditions are
/// checked against the manifest upstream, whichever gateway wrote it.
#[test]
fn conditional_writes_are_honoured_with_a_shared_upstream() {
    let gateway = TestGateway::start_with(UpstreamKind::Moto, |config| config.shared_upstream = true);
    let said = gateway.python_client("conditional_writes.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// Bucket settings (tests/clients/bucket_settings.py) answer as S3 does for a private bucket
/// created today: unversioned (enabling refused), owner-only ACLs, public access blocked,
/// owner-enforced ownership, no CORS configuration, no policy, no object lock; the settings a
/// bucket keeps (CORS rules, public access block, ownership, versioning suspended) are answered
/// and deleted as S3 does.
#[test]
fn bucket_settings_answer_as_for_a_private_bucket() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("bucket_settings.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// CORS rules are applied as S3 applies them (tests/clients/cors.py): preflights answered from
/// the bucket's rules, signed requests with an Origin given the allowing rule's headers.
#[test]
fn cors_rules_are_applied_to_browser_requests() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("cors.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// With a shared upstream, the settings one gateway changes are what another answers at once,
/// and a bucket deleted through one and created again through the other starts afresh.
#[test]
fn bucket_settings_are_shared_by_the_gateways_of_one_upstream() {
    let moto = Moto::start();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_upstream_gateway(&moto, state_a.path(), true);
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    let said = a.python_client("bucket_settings.py", &[std::ffi::OsStr::new(&b.endpoint)]);
    assert!(said.contains("all checks passed"), "{said}");
}

/// A bucket another gateway deleted and created again between two syncs takes its new marker's
/// record at the next sync: its location (and creation time) are the new bucket's.
#[test]
fn a_bucket_created_again_elsewhere_answers_its_new_location() {
    let moto = Moto::start();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_upstream_gateway(&moto, state_a.path(), true);
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3api", "create-bucket", "--bucket", "again"]);
    b.aws(&["s3api", "head-bucket", "--bucket", "again"]);
    a.aws(&["s3api", "delete-bucket", "--bucket", "again"]);
    a.aws(&["s3api", "create-bucket", "--bucket", "again", "--create-bucket-configuration", "LocationConstraint=eu-west-1"]);
    support::shared::sync(&b);
    let location = b.aws(&["s3api", "get-bucket-location", "--bucket", "again", "--query", "LocationConstraint", "--output", "text"]);
    assert_eq!(String::from_utf8_lossy(&location.stdout).trim(), "eu-west-1");
}

/// UploadPartCopy (tests/clients/part_copy.py): boto3's managed copy and `aws s3 cp` between
/// keys copy a model over 8 MiB by parts, byte-identical; ranged part copies complete into the
/// source's bytes; bad ranges and missing sources are refused as S3 refuses them. The copies
/// are then packed like uploads and still read back exactly.
#[test]
fn parts_copied_from_objects_make_exact_copies() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.safetensors");
    std::fs::write(&model, replicated_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 4)).unwrap();
    let said = gateway.python_client("part_copy.py", &[model.as_os_str()]);
    assert!(said.contains("all checks passed"), "{said}");
    gateway.drain_packer();
    let bytes = std::fs::read(&model).unwrap();
    for key in ["managed-copy", "cli-copy", "ranged"] {
        let out = work.path().join(key);
        gateway.boto3(&["get", "copies", key, out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == bytes, "{key} differs after packing");
    }
}
