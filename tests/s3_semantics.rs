//! S3 semantics as AWS S3 answers them, checked by real clients (boto3, raw HTTP) against a
//! gateway over the local directory.

mod support;

use support::*;

/// S3 behaviour in detail (conditions, copy, multipart, presigned and virtual-host requests,
/// key limits, deletes), checked by boto3 in tests/clients/s3_semantics.py.
#[test]
fn s3_semantics_match_aws() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.python_client("s3_semantics.py", &[]);
}

/// Details of the answers (issue 13, tests/clients/s3_details.py): creating one's own bucket
/// again succeeds; reserved bucket names are refused; an object stored without a type is
/// served as binary/octet-stream; a 304 carries ETag and Last-Modified; MaxKeys=0 is not
/// truncated; an empty Delimiter is not echoed; copying an object onto itself unchanged is
/// refused; a repeated CompleteMultipartUpload answers the object it made.
#[test]
fn answers_carry_the_details_s3_gives() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let said = gateway.python_client("s3_details.py", &[]);
    assert!(said.contains("all checks passed"), "{said}");
}
